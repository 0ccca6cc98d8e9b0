"""Neural networks of magi1: the MAGI-1 diffusion transformer and its KV cache."""

from .dit import MagiDiT, distill_step_size, high_precision_param, official_forward
from .kv_cache import KVCache

__all__ = ["MagiDiT", "KVCache", "official_forward", "high_precision_param", "distill_step_size"]
