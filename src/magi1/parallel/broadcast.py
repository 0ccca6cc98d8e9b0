"""Sending what one rank computed (text embeddings, a seed, a prompt) to every rank: one helper.

`share_from_source` broadcasts any nest of dicts / lists / tuples whose leaves are tensors or small
picklable values: the structure and the tensors' shapes and dtypes go as one pickled object, then each
tensor goes through the backend as a tensor (on the communication device), never pickled.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .context import ParallelContext

TEXT_RANK = 0  # the rank that runs the text encoder (the output rank)


class _TensorSlot:
    """Placeholder for tensor number `index` in the pickled structure."""

    def __init__(self, index: int, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.index, self.shape, self.dtype = index, shape, dtype


def _strip(value: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return _TensorSlot(len(tensors) - 1, tuple(value.shape), value.dtype)
    if isinstance(value, dict):
        return {k: _strip(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip(v, tensors) for v in value)
    return value


def _fill(value: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(value, _TensorSlot):
        return tensors[value.index]
    if isinstance(value, dict):
        return {k: _fill(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, tensors) for v in value)
    return value


def share_from_source(ctx: ParallelContext | None, payload: Any = None, *, src: int = 0,
                      device: torch.device | str = "cpu") -> Any:
    """`payload` of rank `src` on every rank (ignored elsewhere: pass None); tensors arrive on `device`.

    With ctx None (one process) the payload is returned as is.
    """
    if ctx is None:
        return payload
    tensors: list[torch.Tensor] = []
    skeleton = [_strip(payload, tensors) if ctx.rank == src else None]
    with ctx.collective(f"broadcast of inputs from rank {src}"):
        dist.broadcast_object_list(skeleton, src=src, device=ctx.comm_device)
    slots: list[_TensorSlot] = []
    _strip_slots(skeleton[0], slots)
    received = []
    for slot in sorted(slots, key=lambda s: s.index):
        if ctx.rank == src:
            buffer = tensors[slot.index].detach().contiguous().to(ctx.comm_device)
        else:
            buffer = torch.empty(slot.shape, dtype=slot.dtype, device=ctx.comm_device)
        with ctx.collective(f"broadcast of an input tensor {tuple(slot.shape)} from rank {src}"):
            dist.broadcast(buffer, src=src)
        received.append(buffer.to(device))
    return _fill(skeleton[0], received)


def _strip_slots(value: Any, out: list[_TensorSlot]) -> None:
    if isinstance(value, _TensorSlot):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strip_slots(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _strip_slots(v, out)


def is_text_rank(ctx: ParallelContext | None) -> bool:
    """True where the text encoder runs (every process when alone)."""
    return ctx is None or ctx.rank == TEXT_RANK


def broadcast_text(embeddings: Any, masks: Any, ctx: ParallelContext | None) -> tuple[Any, Any]:
    """T5 output of the text rank (tensors or lists of them; None elsewhere) on every rank, on the CPU."""
    return share_from_source(ctx, (embeddings, masks) if is_text_rank(ctx) else None, src=TEXT_RANK)
