"""Numerical kernels behind the model: attention over packed chunk ranges (and, separately, FP8 linears)."""

from .attention import RangeAttention, attend

__all__ = ["RangeAttention", "attend"]
