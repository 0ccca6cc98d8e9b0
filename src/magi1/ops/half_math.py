"""bf16 / fp16 GEMMs and attention on CPUs without half-precision units: float32 arithmetic on half values;
and float32 GEMMs of bf16 values (the official float32 islands) on the fastest kernel that keeps them exact.

A bf16 GEMM multiplies its bf16 operands (exactly, the products fit in float32), accumulates in float32
(cuBLAS, oneDNN and MKL alike) and rounds the result to bf16. Widening the operands to float32, running a
float32 GEMM and rounding its output to bf16 is the same computation up to the order of the float32 sums,
which no backend fixes either: the dtype regime (bf16 in, bf16 out) is unchanged. Attention likewise: the
scores, the softmax and the weighted sum accumulate in float32 either way; kernels that round the
probabilities to bf16 before the second product (flash-attention) differ from the widened one by that
rounding only.

On CPUs without AVX512-BF16 / AMX, torch has no fast bf16 GEMM (it takes a generic loop, 5-15x slower than
its float32 GEMM, see docs/benchmarks.md), so there the widened path is the fast one. With half-precision
units (oneDNN handles the dtype) and on accelerators the native kernels are faster and are used. Which one
a CPU gets is decided once per process by `cpu_paths` (reported units + a measured probe) and logged.

Choice: env `MAGI1_HALF_MATH` = auto (default) | native | fp32, or the `half_math(mode)` context manager.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

from ..runtime import is_accelerator
from . import cpu_paths

MODES = ("auto", "native", "fp32")
HALF_DTYPES = (torch.bfloat16, torch.float16)

_mode = os.environ.get("MAGI1_HALF_MATH", "auto").strip().lower()
if _mode not in MODES:
    raise ValueError(f"MAGI1_HALF_MATH must be one of {MODES}, got {_mode!r}")
_out_dtype_mm_broken = False  # set once if the accelerator's mm(out_dtype=) is missing; float32 GEMMs then


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


def current_mode() -> str:
    return _mode


def widen(x: torch.Tensor) -> bool:
    """True when half-precision math on x should run in float32 (and be rounded back) on this machine."""
    if x.dtype not in HALF_DTYPES or _mode == "native":
        return False
    if _mode == "fp32":
        return True
    return not is_accelerator(x.device) and cpu_paths.half_path(x.dtype).choice == "fp32"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear in x's dtype; half inputs run as a float32 GEMM where that is faster, rounded once to x's dtype."""
    if widen(x):
        bias = bias.float() if bias is not None else None
        return F.linear(x.float(), weight.float(), bias).to(x.dtype)
    return F.linear(x, weight, bias)


def island_operand_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype to hand `float32_linear_of` operands in: float32 on CPUs (every CPU path takes float32
    operands, so writing them widened saves a pass), the compute dtype on accelerators (mm with out_dtype)."""
    return dtype if is_accelerator(device) and dtype in HALF_DTYPES else torch.float32


def float32_linear_of(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T computed as a float32 GEMM, float32 output: the official float32 autocast island.

    When x holds bf16 values (bf16 dtype, or float32 widened from bf16) and weight is bf16, this equals a
    bf16-input GEMM with float32 accumulation and float32 output, which is how it runs where that is faster:
    `mm(out_dtype=float32)` on accelerators, oneDNN's bf16-input float32 GEMM on CPUs with bf16 units (see
    `cpu_paths`). Otherwise a plain float32 GEMM. The caller guarantees x's values are bf16 whenever weight is.
    """
    global _out_dtype_mm_broken
    bf16_values = weight.dtype == torch.bfloat16 and x.dtype in (torch.bfloat16, torch.float32)
    if bf16_values and is_accelerator(x.device) and x.dtype == torch.bfloat16 and not _out_dtype_mm_broken:
        try:
            out = torch.mm(x.reshape(-1, x.shape[-1]), weight.t(), out_dtype=torch.float32)
            return out.reshape(*x.shape[:-1], weight.shape[0])
        except (RuntimeError, TypeError):  # a torch without mm(out_dtype=) for this device
            _out_dtype_mm_broken = True
    if bf16_values and not is_accelerator(x.device) and _mode != "fp32" \
            and cpu_paths.fp32_islands_path().choice == "bf16-inputs":
        with cpu_paths.bf16_input_gemms():
            return F.linear(x.float(), weight.float())
    return F.linear(x.float(), weight.float())
