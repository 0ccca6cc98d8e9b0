"""Pipeline parallelism: contiguous stages of DiT layers, activations passed from stage to stage.

Stage p of pp holds layers `pipeline_stage_layers(L, pp, p)` (official np.array_split, L divisible by pp)
and loads only those weights (`checkpoint.loader.load_dit(..., pp_rank=p)` renumbers their keys from 0;
each layer keeps its global `layer_number`, so KV-cache indices and the fp8 first/last-layer rule are
those of the whole model). Every stage embeds the input (cheap) but only the first feeds it to its
layers; the others receive the previous stage's hidden states. The last stage applies the final norm and
linear and its output is broadcast to the other stages, so that every process holds the velocity and
runs the same sampler loop.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint.loader import pipeline_stage_layers
from .context import LayoutError, ParallelContext

__all__ = ["pipeline_stage_layers", "keep_stage_layers", "send_to_next_stage", "receive_from_previous_stage",
           "broadcast_from_last_stage"]


def keep_stage_layers(model: nn.Module, ctx: ParallelContext) -> None:
    """Make `model` hold only this rank's stage: drop the other layers of a whole model, or check that a
    model loaded with pp_rank already holds exactly this stage (by the layers' global layer_number)."""
    layers = model.videodit_blocks.layers
    total = model.config.num_layers
    wanted = pipeline_stage_layers(total, ctx.pp_size, ctx.pp_rank)
    held = [int(layer.layer_number) for layer in layers]
    if held == wanted:
        return
    if held == list(range(total)):
        model.videodit_blocks.layers = nn.ModuleList(layers[i] for i in wanted)
        return
    raise LayoutError(
        f"pipeline stage {ctx.pp_rank} of {ctx.pp_size} needs layers {wanted[0]}..{wanted[-1]}, but the model holds "
        f"layers {held[:1]}..{held[-1:]}; load it with load_dit(config, pp_rank={ctx.pp_rank})"
    )


def send_to_next_stage(h: torch.Tensor, ctx: ParallelContext) -> None:
    """Send (B, S_r, D) hidden states to the same cp rank of the next stage."""
    dst = ctx.global_rank(ctx.cp_rank, ctx.pp_rank + 1)
    with ctx.collective(f"sending activations to pipeline stage {ctx.pp_rank + 1} (rank {dst})"):
        dist.send(h.contiguous().to(ctx.comm_device), dst=dst)


def receive_from_previous_stage(like: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Receive hidden states shaped and typed like this stage's own embedding from the previous stage."""
    src = ctx.global_rank(ctx.cp_rank, ctx.pp_rank - 1)
    buffer = torch.empty(like.shape, dtype=like.dtype, device=ctx.comm_device)
    with ctx.collective(f"receiving activations from pipeline stage {ctx.pp_rank - 1} (rank {src})"):
        dist.recv(buffer, src=src)
    return buffer.to(like.device)


def broadcast_from_last_stage(out: torch.Tensor | None, shape, dtype, device, ctx: ParallelContext) -> torch.Tensor:
    """The last stage's output (given there, None elsewhere) on every stage of this rank's pipeline group."""
    src = ctx.global_rank(ctx.cp_rank, ctx.pp_size - 1)
    buffer = out.contiguous().to(ctx.comm_device) if out is not None else torch.empty(
        shape, dtype=dtype, device=ctx.comm_device)
    with ctx.collective(f"broadcasting the output of the last pipeline stage (rank {src})"):
        dist.broadcast(buffer, src=src, group=ctx.pp_group)
    return buffer.to(device)
