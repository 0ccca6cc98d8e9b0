"""fp8 storage for a bf16 checkpoint (`--weights fp8`): half the weight bytes, bf16 compute, any device.

`quantize_dit_weights(dit)` replaces the plain linears of transformer layers 1..L-2 (the layers the
official *_quant checkpoints quantise; the first and last stay high precision) by `Fp8StoredLinear`:
the weight is kept as float8_e4m3fn with one float32 scale per tensor (absmax / 448), and each call
dequantises it to the input's dtype right before its GEMM. No activation is quantised, so no calibration
is needed; the error is the weight's fp8 rounding (about 2^-4 relative). The official calibrated fp8
checkpoints load as they are into `ops.fp8` instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import FP8_DTYPE, quantize_linear_weight

# The linears the official quantised layers hold in fp8 (dit_layers attribute paths).
QUANTISED_LINEARS = ("self_attention.linear_qkv.q", "self_attention.linear_qkv.qx", "self_attention.linear_qkv.k",
                     "self_attention.linear_qkv.v", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


class Fp8StoredLinear(nn.Module):
    """A bias-free linear whose weight is stored in e4m3 with a float32 scale, computed in x's dtype."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        wq, scale = quantize_linear_weight(weight)
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(wq[0], requires_grad=False)          # (out, in) float8_e4m3fn
        self.weight_scale = nn.Parameter(scale, requires_grad=False)    # (1,) float32

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out) in x's dtype (a float32 GEMM for float32 x, bf16 for bf16 x)."""
        return F.linear(x, self.dequantized(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, storage={FP8_DTYPE}"


def quantize_dit_weights(dit: nn.Module) -> nn.Module:
    """Store layers 1..L-2's linears in fp8 (in place); returns the model. Already-fp8 layers are left."""
    layers = dit.videodit_blocks.layers
    for layer in list(layers)[1:-1]:
        for path in QUANTISED_LINEARS:
            parent_path, _, name = path.rpartition(".")
            parent = layer.get_submodule(parent_path)
            linear = getattr(parent, name)
            if type(linear) is nn.Linear:
                setattr(parent, name, Fp8StoredLinear(linear.weight.detach()))
    return dit
