"""Ulysses context parallelism: tokens sharded across the cp ranks, heads exchanged around attention.

Each rank holds a contiguous slice of every batch element's tokens (official split: S // cp each, the
first S % cp ranks one more). Everything per token runs on the slice. Around self attention one
all-to-all turns (B, S_r, nh, hd) queries and (B, S_r, ng, 2hd) [K | V] into (B, S, nh/cp, hd) and
(B, S, ng/cp, 2hd): all tokens, this rank's heads (contiguous head groups; when cp exceeds the KV groups
each KV group is repeated cp/ng times first, so rank c gets group c // (cp/ng)). The KV cache is merged
in that layout, so each rank caches only its own KV heads. The output goes back with the inverse
all-to-all. With ulysses_overlap_degree > 1 the local heads are attended in groups and each group's
output all-to-all runs (asynchronously) while the next group is attended.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .context import ParallelContext, overlap_groups


def split_sizes(total: int, parts: int) -> list[int]:
    """Official uneven split: total // parts each, the first total % parts parts one more."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def shard_bounds(total: int, parts: int, index: int) -> tuple[int, int]:
    """[lo, hi) of part `index` of split_sizes(total, parts)."""
    sizes = split_sizes(total, parts)
    lo = sum(sizes[:index])
    return lo, lo + sizes[index]


def heads_for_rank(kv: torch.Tensor, cp: int) -> torch.Tensor:
    """(B, S, ng, 2hd) -> (B, S, max(ng, cp), 2hd): repeat each KV group cp/ng times when cp > ng."""
    groups = kv.shape[2]
    return kv.repeat_interleave(cp // groups, dim=2) if cp > groups else kv


class UlyssesAttention:
    """The DiT's `attention_core` under context parallelism (see the module docstring).

    Called per layer as core(q (B, S_r, nh, hd), kv (B, S_r, ng, 2hd), ctx, layer_index) -> (B, S_r, nh, hd),
    where ctx is the model's LayerContext: its exchange_kv merges the cache, its self_attention attends.
    """

    def __init__(self, pctx: ParallelContext, heads: int, kv_heads: int) -> None:
        self.pctx = pctx
        self.cp = pctx.cp_size
        self.heads = heads
        self.kv_heads = kv_heads
        self.groups = overlap_groups(heads // self.cp, max(kv_heads // self.cp, 1), pctx.ulysses_overlap_degree)

    # ---------------------------------------------------------------- exchanges
    def _all_to_all(self, send: list[torch.Tensor], recv_numels: list[int], what: str, async_op: bool = False):
        """One all_to_all_single over the cp group: send[c] (any shape) goes to rank c; returns the flat
        receive buffer and its per-source pieces (and the work handle when async)."""
        pctx = self.pctx
        flat = torch.cat([t.reshape(-1) for t in send]).to(pctx.comm_device)
        out = torch.empty(sum(recv_numels), dtype=flat.dtype, device=pctx.comm_device)
        with pctx.collective(what):
            work = dist.all_to_all_single(out, flat, recv_numels, [t.numel() for t in send], group=pctx.cp_group,
                                          async_op=async_op)
        return out, work

    def scatter_heads(self, q: torch.Tensor, kv: torch.Tensor, sizes: list[int]):
        """(B, S_r, nh, hd), (B, S_r, ng, 2hd) -> (B, S, nh/cp, hd), (B, S, ng'/cp, 2hd): all tokens, our heads."""
        b, _, nh, hd = q.shape
        kv = heads_for_rank(kv, self.cp)
        hq, gk, width = nh // self.cp, kv.shape[2] // self.cp, kv.shape[3]
        send = []
        for c in range(self.cp):  # per destination: its query heads, then its KV heads, of our tokens
            send.append(q[:, :, c * hq : (c + 1) * hq].reshape(-1))
            send.append(kv[:, :, c * gk : (c + 1) * gk].reshape(-1))
        per_token = hq * hd + gk * width
        recv = [b * s * per_token for s in sizes]
        packed = [torch.cat(send[2 * c : 2 * c + 2]) for c in range(self.cp)]
        out, _ = self._all_to_all(packed, recv, "Ulysses all-to-all of q/k/v (tokens -> heads)")
        out = out.to(q.device)
        qs, kvs, start = [], [], 0
        for s in sizes:  # per source rank: its tokens, our heads
            piece = out[start : start + b * s * per_token]
            start += b * s * per_token
            qs.append(piece[: b * s * hq * hd].view(b, s, hq, hd))
            kvs.append(piece[b * s * hq * hd :].view(b, s, gk, width))
        return torch.cat(qs, dim=1), torch.cat(kvs, dim=1)

    def gather_heads_start(self, out: torch.Tensor, sizes: list[int], local: int, async_op: bool):
        """Start sending (B, S, h, hd) attention output back to the token owners; returns (buffer, work)."""
        send = list(out.split(sizes, dim=1))
        b, _, h, hd = out.shape
        recv = [b * local * h * hd] * self.cp
        return self._all_to_all(send, recv, "Ulysses all-to-all of the attention output (heads -> tokens)",
                                async_op=async_op)

    # ---------------------------------------------------------------- the core
    def __call__(self, q: torch.Tensor, kv: torch.Tensor, ctx: Any, layer_index: int) -> torch.Tensor:
        b, local, nh, hd = q.shape
        seq = ctx.chunks * ctx.chunk_tokens
        sizes = split_sizes(seq, self.cp)
        q_full, kv_full = self.scatter_heads(q, kv, sizes)  # (B, S, hq, hd), (B, S, gk, 2hd)
        if ctx.exchange_kv is not None:
            kv_full = ctx.exchange_kv(layer_index, kv_full)  # (B, P + S, gk, 2hd): our KV heads only
        hq, gk = q_full.shape[2], kv_full.shape[2]
        keys = kv_full[..., :hd].reshape(-1, gk, hd)
        values = kv_full[..., hd:].reshape(-1, gk, hd)
        per_group, per_kv = hq // self.groups, hq // gk
        pending = []
        for g in range(self.groups):
            heads = slice(g * per_group, (g + 1) * per_group)
            first_kv, last_kv = g * per_group // per_kv, ((g + 1) * per_group - 1) // per_kv + 1
            out = ctx.self_attention(q_full[:, :, heads].reshape(b * seq, per_group, hd),
                                     keys[:, first_kv:last_kv], values[:, first_kv:last_kv])
            out = out.view(b, seq, per_group, hd)
            pending.append(self.gather_heads_start(out, sizes, local, async_op=self.groups > 1))
        result = torch.empty(b, local, self.cp, self.groups, per_group, hd, dtype=q.dtype, device=q.device)
        for g, (buffer, work) in enumerate(pending):
            if work is not None:
                with self.pctx.collective("Ulysses all-to-all of the attention output (heads -> tokens)"):
                    work.wait()
            # buffer: per source rank c, (B, S_r, per_group, hd) of heads c*hq + g*per_group ...
            result[:, :, :, g] = buffer.view(self.cp, b, local, per_group, hd).permute(1, 2, 0, 3, 4).to(q.device)
        return result.reshape(b, local, nh, hd)
