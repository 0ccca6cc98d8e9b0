"""Applying context and pipeline parallelism to a built MagiDiT: `parallelize_dit(model, ctx)`.

The model file holds no communication. It asks its `parallel` attribute (a DiTParallelPlan, or None on
one process) for three things, and this module answers them:
  token_slice(S)   the [lo, hi) token shard of this cp rank (rope, gates, cross-attention follow it);
  attention_core   the Ulysses all-to-all wrapper around cache exchange + self attention (cp > 1);
  run_stage(...)   this rank's stage of layers between the previous and next stages, then the output
                   of every token on every rank (pipeline broadcast, then cp all-gather).
The results equal the single-process model up to float rounding (shards change GEMM shapes only).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .context import LayoutError, ParallelContext, check_layout
from .pipeline_stages import (
    broadcast_from_last_stage,
    keep_stage_layers,
    receive_from_previous_stage,
    send_to_next_stage,
)
from .ulysses import UlyssesAttention, shard_bounds, split_sizes

logger = logging.getLogger(__name__)


def gather_token_shards(local: torch.Tensor, sizes: list[int], ctx: ParallelContext) -> torch.Tensor:
    """(B, S_r, F) shards of the cp ranks (S_r = sizes[r]) -> (B, S, F) on every cp rank."""
    b, _, f = local.shape
    longest = max(sizes)
    padded = torch.zeros(b, longest, f, dtype=local.dtype, device=ctx.comm_device)
    padded[:, : local.shape[1]] = local.to(ctx.comm_device)
    parts = [torch.empty_like(padded) for _ in sizes]
    with ctx.collective("all-gather of the output tokens over the context-parallel group"):
        dist.all_gather(parts, padded, group=ctx.cp_group)
    return torch.cat([p[:, :n] for p, n in zip(parts, sizes)], dim=1).to(local.device)


class DiTParallelPlan:
    """What `MagiDiT.forward` delegates to when its `parallel` attribute is set (see the module docstring)."""

    output_dtype = torch.float32  # the final linear runs in float32

    def __init__(self, ctx: ParallelContext, heads: int, kv_heads: int) -> None:
        self.ctx = ctx
        self.attention_core = UlyssesAttention(ctx, heads, kv_heads) if ctx.cp_size > 1 else None

    def token_slice(self, seq: int) -> tuple[int, int]:
        if self.ctx.cp_size == 1:
            return 0, seq
        if seq < self.ctx.cp_size:
            raise ValueError(f"{seq} tokens cannot be shared by {self.ctx.cp_size} context-parallel ranks")
        return shard_bounds(seq, self.ctx.cp_size, self.ctx.cp_rank)

    def run_stage(
        self,
        run_layers: Callable[[torch.Tensor, object], torch.Tensor],
        head: Callable[[torch.Tensor], torch.Tensor],
        tokens: torch.Tensor,
        layer_ctx: object,
        out_features: int,
    ) -> torch.Tensor:
        """tokens (B, S_r, D): this rank's embedded tokens -> (B, S, out_features) output of every token."""
        ctx = self.ctx
        h = tokens if ctx.is_first_stage else receive_from_previous_stage(tokens, ctx)
        h = run_layers(h, layer_ctx)
        out = None
        if ctx.is_last_stage:
            out = head(h)  # (B, S_r, F)
        else:
            send_to_next_stage(h, ctx)
        if ctx.pp_size > 1:
            shape = (tokens.shape[0], tokens.shape[1], out_features)
            out = broadcast_from_last_stage(out, shape, self.output_dtype, tokens.device, ctx)
        if ctx.cp_size > 1:
            seq = layer_ctx.chunks * layer_ctx.chunk_tokens
            out = gather_token_shards(out, split_sizes(seq, ctx.cp_size), ctx)
        return out


def parallelize_dit(model: nn.Module, ctx: ParallelContext | None) -> nn.Module:
    """Apply ctx's layout to a built MagiDiT in place and return it (unchanged when ctx is None).

    A model holding every layer is cut down to this rank's pipeline stage; one loaded with
    load_dit(config, pp_rank=ctx.pp_rank) must already hold exactly that stage.
    """
    if ctx is None:
        return model
    c = model.config
    layout = SimpleNamespace(cp_size=ctx.cp_size, pp_size=ctx.pp_size, cp_strategy=ctx.cp_strategy,
                             ulysses_overlap_degree=ctx.ulysses_overlap_degree)
    check_layout(c, layout, ctx.world_size)
    if getattr(model, "parallel", None) is not None:
        raise LayoutError("this model is already parallelized")
    keep_stage_layers(model, ctx)
    if ctx.cp_size > 1 and ctx.cp_strategy == "cp_shuffle_overlap":
        logger.info("cp_shuffle_overlap runs as cp_ulysses here (same math; the shuffle only reorders transfers)")
    model.parallel = DiTParallelPlan(ctx, c.num_attention_heads, c.num_query_groups)
    return model
