"""bf16 / fp16 GEMMs and attention on CPUs without half-precision units: float32 arithmetic on half values.

A bf16 GEMM multiplies its bf16 operands (exactly, the products fit in float32), accumulates in float32
(cuBLAS, oneDNN and MKL alike) and rounds the result to bf16. Widening the operands to float32, running a
float32 GEMM and rounding its output to bf16 is the same computation up to the order of the float32 sums,
which no backend fixes either: the dtype regime (bf16 in, bf16 out) is unchanged. Attention likewise: the
scores, the softmax and the weighted sum accumulate in float32 either way; kernels that round the
probabilities to bf16 before the second product (flash-attention) differ from the widened one by that
rounding only.

On CPUs without AVX512-BF16 / AMX, torch has no fast bf16 GEMM (it takes a generic loop, 5-15x slower than
its float32 GEMM, see docs/benchmarks.md), so there the widened path is the fast one. With half-precision
units (oneDNN handles the dtype) and on accelerators the native kernels are faster and are used.

Choice: env `MAGI1_HALF_MATH` = auto (default) | native | fp32, or the `half_math(mode)` context manager.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

import torch
import torch.nn.functional as F

from ..runtime import is_accelerator

MODES = ("auto", "native", "fp32")
HALF_DTYPES = (torch.bfloat16, torch.float16)

_mode = os.environ.get("MAGI1_HALF_MATH", "auto").strip().lower()
if _mode not in MODES:
    raise ValueError(f"MAGI1_HALF_MATH must be one of {MODES}, got {_mode!r}")


@contextmanager
def half_math(mode: str) -> Iterator[None]:
    """Temporarily choose how half-precision GEMMs and attention run (auto | native | fp32)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"half math mode must be one of {MODES}, got {mode!r}")
    previous, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = previous


@lru_cache(maxsize=None)
def cpu_has_fast_kernels(dtype: torch.dtype) -> bool:
    """Whether torch sends CPU GEMMs of this half dtype to oneDNN (which needs AVX512 / AMX class units)."""
    checks = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    check = getattr(torch.ops.mkldnn, checks[dtype], None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:  # an op missing from this build: no oneDNN half kernels
        return False


def widen(x: torch.Tensor) -> bool:
    """True when half-precision math on x should run in float32 (and be rounded back) on this machine."""
    if x.dtype not in HALF_DTYPES or _mode == "native":
        return False
    if _mode == "fp32":
        return True
    return not is_accelerator(x.device) and not cpu_has_fast_kernels(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear in x's dtype; half inputs run as a float32 GEMM where that is faster, rounded once to x's dtype."""
    if widen(x):
        bias = bias.float() if bias is not None else None
        return F.linear(x.float(), weight.float(), bias).to(x.dtype)
    return F.linear(x, weight, bias)
