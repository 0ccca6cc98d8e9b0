"""Attention over packed token ranges.

The DiT packs every chunk of a call into one token axis and describes attention as pairs of ranges:
query tokens [qs, qe) attend to key tokens [ks, ke) with no mask inside the pair. This module turns a list
of such pairs into as few dense attention calls as it can: pairs whose query and key lengths agree form one
batch. When their starts are evenly spaced (chunks of one call, captions of one length) the batch is a
strided view of the packed tensors, so nothing is copied; otherwise the pairs are gathered (up to a memory
cap). A call whose pairs tile all queries in order returns the attention output itself, without a scatter.

Backends: flash-attn's `flash_attn_func` when it is importable, the tensors sit on an accelerator and
are half precision; torch's scaled_dot_product_attention otherwise. Both use the softmax scale
1/sqrt(head_dim) and grouped-query attention with contiguous groups (query head j reads KV head
j // (heads / kv_heads)). Half-precision inputs run in float32 where this machine has no fast half
kernels (see `half_math`), and the output is rounded back once.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
import torch.nn.functional as F

from ..runtime import is_accelerator
from .half_math import widen

try:  # optional: only used on an accelerator, never needed for correctness
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # pragma: no cover - depends on the environment
    _flash_attn_func = None

# Gathering pairs copies their queries and keys; above this many elements per gathered batch the pairs run
# in smaller batches instead (a 720p chunk window is far above it, a tiny test far below).
MAX_STACKED_ELEMENTS = 1 << 26


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense attention. q: (G, Lq, nh, hd); k, v: (G, Lk, ng, hd) -> (G, Lq, nh, hd)."""
    if widen(q):
        return attend(q.float(), k.float(), v.float()).to(q.dtype)
    if _flash_attn_func is not None and is_accelerator(q.device) and q.dtype in (torch.float16, torch.bfloat16):
        return _flash_attn_func(q, k, v)
    heads, kv_heads = q.shape[2], k.shape[2]
    # SDPA wants (G, heads, L, hd); the transposes are views, and so is the result's transpose back
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=heads != kv_heads
    )
    return out.transpose(1, 2)


def even_step(starts: Sequence[int]) -> int | None:
    """The common difference of `starts` if they are evenly spaced and increasing (0 for one start), else None."""
    if len(starts) == 1:
        return 0
    step = starts[1] - starts[0]
    if step <= 0 or any(b - a != step for a, b in zip(starts, starts[1:])):
        return None
    return step


def strided_ranges(x: torch.Tensor, first: int, step: int, count: int, length: int) -> torch.Tensor:
    """(count, length, ...) view of rows [first + i * step, first + i * step + length) of x, no copy."""
    if first + step * (count - 1) + length > x.shape[0]:
        raise ValueError(f"range [{first + step * (count - 1)}, +{length}) beyond the {x.shape[0]} packed tokens")
    rows = x[first:]
    return rows.as_strided((count, length) + tuple(x.shape[1:]), (step * x.stride(0),) + x.stride(),
                           rows.storage_offset())


class RangeAttention:
    """A reusable plan for one set of (query range, key range) pairs; build once per forward, run per layer.

    q_ranges and k_ranges are sequences of (start, end) pairs of python ints indexing the packed token axis
    of the queries and of the keys. Query rows that no pair covers, and pairs with an empty key range,
    give zeros (the flash-attn convention for an empty key set).
    """

    def __init__(
        self,
        q_ranges: Sequence[Sequence[int]],
        k_ranges: Sequence[Sequence[int]],
        *,
        device: torch.device | None = None,
        max_stacked_elements: int = MAX_STACKED_ELEMENTS,
    ) -> None:
        if len(q_ranges) != len(k_ranges):
            raise ValueError(f"{len(q_ranges)} query ranges but {len(k_ranges)} key ranges")
        self.device = device
        self.max_stacked_elements = max_stacked_elements
        groups: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for (qs, qe), (ks, ke) in zip(q_ranges, k_ranges):
            qs, qe, ks, ke = int(qs), int(qe), int(ks), int(ke)
            if qe < qs or ke < ks or min(qs, ks) < 0:
                raise ValueError(f"bad range pair q=[{qs},{qe}) k=[{ks},{ke})")
            if qe == qs or ke == ks:
                continue
            groups[(qe - qs, ke - ks)].append((qs, ks))
        self.groups = dict(groups)
        covered = sorted((qs, qs + lq) for (lq, _), members in self.groups.items() for qs, _ in members)
        self.covers_all_queries = bool(covered) and covered[0][0] == 0 and all(
            a[1] == b[0] for a, b in zip(covered, covered[1:])
        )
        self.query_tokens_covered = covered[-1][1] if covered else 0
        self._index_cache: dict[tuple, torch.Tensor] = {}

    def _token_index(self, key: tuple, starts: list[int], length: int, device: torch.device) -> torch.Tensor:
        """(G, length) absolute token indices for G ranges of one length, cached across layers."""
        cached = self._index_cache.get(key)
        if cached is None or cached.device != device:
            base = torch.tensor(starts, dtype=torch.long, device=device)
            cached = base[:, None] + torch.arange(length, dtype=torch.long, device=device)[None, :]
            self._index_cache[key] = cached
        return cached

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (Nq, nh, hd); k, v: (Nk, ng, hd) packed tokens -> (Nq, nh, hd)."""
        heads, head_dim, kv_heads = q.shape[1], q.shape[2], k.shape[1]
        if heads % kv_heads:
            raise ValueError(f"{heads} query heads cannot share {kv_heads} KV heads")
        dtype = q.dtype
        if widen(q):  # widen once here, not once per (overlapping) key span
            q, k, v = q.float(), k.float(), v.float()
        exact_cover = self.covers_all_queries and self.query_tokens_covered == q.shape[0]
        out = None
        for (lq, lk), members in self.groups.items():
            q_starts, k_starts = [m[0] for m in members], [m[1] for m in members]
            q_step, k_step = even_step(q_starts), even_step(k_starts)
            if q_step is None or k_step is None:
                out = self._gathered(q, k, v, out, exact_cover, lq, lk, members)
                continue
            count = len(members)
            o = attend(strided_ranges(q, q_starts[0], q_step, count, lq),
                       strided_ranges(k, k_starts[0], k_step, count, lk),
                       strided_ranges(v, k_starts[0], k_step, count, lk))  # (G, lq, nh, hd)
            tiles = q_step in (0, lq)  # the G query ranges are one contiguous block of rows
            if exact_cover and len(self.groups) == 1 and tiles and q_starts[0] == 0:
                return o.reshape(q.shape[0], heads, head_dim).to(dtype)  # a view of o when possible
            if out is None:
                out = torch.empty_like(q) if exact_cover else torch.zeros_like(q)
            if tiles:
                out[q_starts[0] : q_starts[0] + count * lq].view(count, lq, heads, head_dim).copy_(o)
            else:
                for i, qs in enumerate(q_starts):
                    out[qs : qs + lq] = o[i]
        if out is None:  # no pair with keys at all
            out = torch.zeros_like(q)
        return out.to(dtype)

    def _gathered(self, q, k, v, out, exact_cover, lq, lk, members) -> torch.Tensor:
        """Pairs of one shape at irregular starts: gather them in batches under the memory cap."""
        heads, head_dim, kv_heads = q.shape[1], q.shape[2], k.shape[1]
        if out is None:
            out = torch.empty_like(q) if exact_cover else torch.zeros_like(q)
        per_pair = (lq * heads + 2 * lk * kv_heads) * head_dim
        batch = max(1, self.max_stacked_elements // max(per_pair, 1))
        for first in range(0, len(members), batch):
            part = members[first : first + batch]
            q_idx = self._token_index(("q", lq, lk, first), [m[0] for m in part], lq, q.device)
            k_idx = self._token_index(("k", lq, lk, first), [m[1] for m in part], lk, k.device)
            o = attend(q[q_idx], k[k_idx], v[k_idx])  # (G, lq, nh, hd)
            # Under autocast SDPA answers in bf16 while `out` follows q (float32 in training): index_put_ does
            # not cast as slice assignment does.
            out[q_idx.reshape(-1)] = o.reshape(-1, heads, head_dim).to(out.dtype)
        return out
