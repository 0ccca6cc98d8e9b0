"""How the DiT's linears take low-rank adapters (LoRA wrappers such as peft's) without changing their math.

The DiT computes most of its projections from the weights themselves (a float32 island for `linear_proj`, eight
row-block GEMMs for `linear_kv_xattn`, float32 GEMMs of half values on CPUs without half units), not by calling
the module. A wrapper therefore must not replace that computation: the call sites take the wrapped base linear,
compute exactly what they compute without an adapter, and add the adapter's own output on top. An adapter whose
scale is 0, that is switched off, or that is merged into the weights adds nothing at all, so such a model is the
base model bit for bit.

A wrapper is recognised by its attributes (peft's `LoraLayer` layout: `base_layer`, `lora_A`, `lora_B`,
`scaling`, `active_adapters`, `merged_adapters`, `disable_adapters`); nothing here imports peft.
"""

from __future__ import annotations

import torch
from torch import nn


def split_adapter(module: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(the base linear, the adapter wrapper or None) of a module found where the DiT expects a linear."""
    base = getattr(module, "base_layer", None)
    if base is None or not hasattr(module, "lora_A"):
        return module, None
    while getattr(base, "base_layer", None) is not None:  # nested wrappers: the innermost is the linear
        base = base.base_layer
    return base, module


def adapter_output(wrapper: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Sum over the wrapper's active, unmerged, non-zero adapters of scale · B(A(dropout(x))); None when none.

    x: (..., in_features) in any dtype; computed in the adapter weights' dtype (float32 masters), returned so.
    """
    if getattr(wrapper, "disable_adapters", False):
        return None
    merged = set(getattr(wrapper, "merged_adapters", ()))
    total = None
    for name in wrapper.active_adapters:
        if name not in wrapper.lora_A or name in merged:
            continue
        scale = wrapper.scaling[name]
        if scale == 0:
            continue
        down, up = wrapper.lora_A[name], wrapper.lora_B[name]
        dropout = wrapper.lora_dropout[name] if name in getattr(wrapper, "lora_dropout", {}) else None
        h = x.to(down.weight.dtype)
        if dropout is not None:
            h = dropout(h)
        out = up(down(h)) * scale
        total = out if total is None else total + out
    return total


def with_adapter(out: torch.Tensor, wrapper: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """`out` (the base projection of x) plus the adapter's output, in out's dtype; `out` itself without one."""
    if wrapper is None:
        return out
    extra = adapter_output(wrapper, x)
    if extra is None:
        return out
    return (out.float() + extra.float()).to(out.dtype) if out.dtype != extra.dtype else out + extra
