"""FP8 (e4m3fn) linears of the quantized MAGI-1 checkpoints, with the official numerics.

Both kinds store the weight as (1, out, in) float8_e4m3fn with a scalar `weight_scale`, and compute

    xq = e4m3( bf16( clamp(x.float() / s, -448, 448) ) )      # note the bf16 double rounding
    y  = bf16( (xq @ Wq^T) * input_scale[0] * weight_scale[0] )

Per-tensor (q, qx, k, v, fc1): `s` is `input_scale`, a per-input-channel vector, yet only its first entry
dequantizes (the official GEMM takes scalar scale pointers). Per-channel (linear_proj, fc2): `s` is the
SmoothQuant-style `smooth_scale` (1, in), and `input_scale` is a scalar.

Where the GEMM runs (`fp8_gemm_path`): the weight stays in e4m3 storage everywhere; only the compute differs.

    "scaled_mm"  CUDA with FP8 tensor cores (SM 8.9+: Ada, Hopper, Blackwell): `torch._scaled_mm`, native
    "bf16"       any other CUDA GPU: the e4m3 operands widened to bf16 one layer at a time (exactly: e4m3
                 values are bf16 values), a bf16 GEMM with float32 accumulation, then the scales
    "float32"    the CPU (and a forced emulation): widened to float32 block by block, a float32 GEMM; the
                 same products as the native path, so only the accumulation order differs (the reference)
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..runtime import is_accelerator

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
_FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper and later have FP8 GEMMs
_SCALED_MM_ALIGN = 16  # _scaled_mm wants every GEMM dimension a multiple of 16
_EMULATION_BLOCK_ROWS = 4096  # weight rows widened to float32 at a time, to bound memory

_scaled_mm_broken = False  # set once if the native GEMM fails at run time; the bf16 path takes over


def quantize_activation(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale, clamped to the e4m3 range, rounded to bf16 and then to e4m3 (the official order)."""
    scaled = (x.float() / scale.float()).clamp(-FP8_MAX, FP8_MAX)
    return scaled.to(torch.bfloat16).to(FP8_DTYPE)


def quantize_linear_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> ((1, out, in) float8_e4m3fn, (1,) float32 scale) with W ~= Wq * scale.

    A per-tensor absmax scale, for writing fp8 checkpoints in the official layout (tests, conversions).
    """
    if weight.dim() != 2:
        raise ValueError(f"expected an (out, in) weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    amax = w.abs().max()
    scale = (amax / FP8_MAX) if amax > 0 else torch.ones((), device=w.device)
    wq = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return wq.unsqueeze(0), scale.reshape(1).float()


FP8_GEMM_PATHS = ("scaled_mm", "bf16", "float32")


def has_native_fp8(device) -> bool:
    """True where the device's tensor cores multiply fp8 (CUDA compute capability 8.9 and later)."""
    device = torch.device(device)
    return is_accelerator(device) and tuple(torch.cuda.get_device_capability(device)) >= _FP8_MIN_CAPABILITY


def fp8_gemm_path(device, out_features: int, in_features: int) -> str:
    """Which of FP8_GEMM_PATHS an (out, in) e4m3 linear runs on `device` (see the module docstring).

    The native GEMM also needs both dimensions a multiple of 16 (cuBLASLt); it is left for good, with a
    warning, the first time it fails at run time.
    """
    device = torch.device(device)
    if not is_accelerator(device):
        return "float32"
    aligned = out_features % _SCALED_MM_ALIGN == 0 and in_features % _SCALED_MM_ALIGN == 0
    if has_native_fp8(device) and aligned and not _scaled_mm_broken:
        return "scaled_mm"
    return "bf16"


def _emulated_fp8_matmul(xq: torch.Tensor, wq: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    x = xq.float()
    out = torch.empty(x.shape[0], wq.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, wq.shape[0], _EMULATION_BLOCK_ROWS):
        block = wq[start : start + _EMULATION_BLOCK_ROWS]
        out[:, start : start + block.shape[0]] = x @ block.float().t()
    return (out * alpha).to(torch.bfloat16)


def _dequantized_bf16_matmul(xq: torch.Tensor, wq: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    # (M, in) and (out, in) e4m3 -> bf16 exactly; the GEMM accumulates in float32 and rounds to bf16, and
    # the scales round once more (at most one bf16 unit from the native result).
    out = xq.to(torch.bfloat16) @ wq.to(torch.bfloat16).t()
    return (out.float() * alpha).to(torch.bfloat16)


def fp8_matmul(
    xq: torch.Tensor, wq: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, *, emulate: bool | None = None,
    path: str | None = None,
) -> torch.Tensor:
    """bf16((xq @ wq^T) * scale_a * scale_b) for xq (M, in), wq (out, in) e4m3 and one-element fp32 scales.

    path: one of FP8_GEMM_PATHS; None picks `fp8_gemm_path` for xq's device. emulate=True is path="float32".
    """
    global _scaled_mm_broken
    scale_a = scale_a.float().reshape(-1)[:1]
    scale_b = scale_b.float().reshape(-1)[:1]
    if emulate:
        path = "float32"
    path = path or fp8_gemm_path(xq.device, wq.shape[0], wq.shape[1])
    if path not in FP8_GEMM_PATHS:
        raise ValueError(f"path must be one of {', '.join(FP8_GEMM_PATHS)}, got {path!r}")
    if path == "bf16":
        return _dequantized_bf16_matmul(xq, wq, scale_a * scale_b)
    if path == "scaled_mm":
        rows = xq.shape[0]
        pad = -rows % _SCALED_MM_ALIGN
        a = torch.cat([xq, xq.new_zeros(pad, xq.shape[1])]) if pad else xq
        try:
            # wq.t() is the column-major (in, out) operand cuBLASLt wants; fast accumulation as upstream.
            out = torch._scaled_mm(a, wq.t(), scale_a, scale_b, out_dtype=torch.bfloat16, use_fast_accum=True)
            return out[:rows]
        except RuntimeError as err:
            _scaled_mm_broken = True
            warnings.warn(f"torch._scaled_mm failed ({err}); fp8 linears run as bf16 GEMMs of the widened "
                          f"values from now on")
            return _dequantized_bf16_matmul(xq, wq, scale_a * scale_b)
    # cuBLAS forms alpha = scale_a * scale_b in float32 and scales the float32 accumulator by it.
    return _emulated_fp8_matmul(xq, wq, scale_a * scale_b)


class _Fp8Linear(nn.Module):
    """Shared storage: (1, out, in) e4m3 weight and a (1,) float32 weight scale; no bias."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # Frozen: these are calibrated inference weights, and fp8 tensors cannot carry gradients anyway.
        self.weight = nn.Parameter(torch.zeros(1, out_features, in_features, dtype=FP8_DTYPE), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(1, dtype=torch.float32), requires_grad=False)

    def _quantization_scale(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *, emulate: bool | None = None) -> torch.Tensor:
        """(..., in) any float dtype -> (..., out) bfloat16."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected last dim {self.in_features}, got input of shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        xq = quantize_activation(x.reshape(-1, self.in_features), self._quantization_scale())
        y = fp8_matmul(xq, self.weight[0], self.input_scale, self.weight_scale, emulate=emulate)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Fp8PerTensorLinear(_Fp8Linear):
    """Official `PerTensorQuantizedFp8Linear`: divide by the vector input_scale, dequantize by its entry 0."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.input_scale = nn.Parameter(torch.ones(in_features, dtype=torch.float32), requires_grad=False)

    def _quantization_scale(self) -> torch.Tensor:
        return self.input_scale


class Fp8PerChannelLinear(_Fp8Linear):
    """Official `PerChannelQuantizedFp8Linear`: divide by smooth_scale (1, in), dequantize by the scalars."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.input_scale = nn.Parameter(torch.ones(1, dtype=torch.float32), requires_grad=False)
        self.smooth_scale = nn.Parameter(torch.ones(1, in_features, dtype=torch.float32), requires_grad=False)

    def _quantization_scale(self) -> torch.Tensor:
        return self.smooth_scale
