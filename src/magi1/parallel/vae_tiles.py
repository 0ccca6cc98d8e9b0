"""Tile-parallel VAE decode: each rank decodes its share of the tiles, the raw decodes are gathered, and
every rank blends and assembles the whole chunk (official ParallelHelper split and results).

The split is the official one (`vae_tiling.assign_tiles`: tiles sorted by size, dealt round-robin) over
all ranks of the run: the official code uses the cp group, so with pp > 1 each stage decoded the same
video redundantly; here every process takes a share. Every rank knows each tile's result shape from
the tile plan, so one all-gather of flat buffers moves every decode, with no shape exchange. The blend
and crop are the single-process functions, so the result equals `tiled_decode` / `decode_chunk`
bit for bit (each tile runs the same computation on the same input).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist

from ..models.vae import PIXEL_CHANNELS_OUT
from ..models.vae_tiling import (
    TileGrid,
    TileSettings,
    assemble_tiles,
    assign_tiles,
    blend_decoded_tiles,
    plan_decode_tiles,
    run_decode_tiles,
    tiled_decode,
)
from .context import ParallelContext

TensorFn = Callable[[torch.Tensor], torch.Tensor]


def _result_shape(grid: TileGrid, index: int, batch: int, channels: int) -> tuple[int, ...]:
    position = grid.position_of(index)
    return (batch, channels, *(axis.result_sizes[k] for axis, k in zip(grid.axes, position)))


def gather_tile_results(
    grid: TileGrid, shares: list[list[int]], mine: dict[int, torch.Tensor], batch: int, channels: int,
    dtype: torch.dtype, device: torch.device, ctx: ParallelContext,
) -> dict[int, torch.Tensor]:
    """Every rank's decoded tiles (this rank's are `mine`), on every rank, keyed by tile index."""
    shapes = [[_result_shape(grid, i, batch, channels) for i in share] for share in shares]
    lengths = [sum(math.prod(s) for s in rank_shapes) for rank_shapes in shapes]
    longest = max(lengths)
    local = torch.zeros(longest, dtype=dtype, device=ctx.comm_device)
    if mine:
        flat = torch.cat([mine[i].to(dtype).reshape(-1) for i in shares[ctx.rank]])
        local[: flat.numel()] = flat.to(ctx.comm_device)
    buffers = [torch.empty_like(local) for _ in shares]
    with ctx.collective(f"all-gather of {len(grid.tiles)} decoded VAE tiles"):
        dist.all_gather(buffers, local)
    results = {}
    for buffer, share, rank_shapes in zip(buffers, shares, shapes):
        start = 0
        for index, shape in zip(share, rank_shapes):
            n = math.prod(shape)
            results[index] = buffer[start : start + n].view(shape).to(device)
            start += n
    return results


@torch.no_grad()
def parallel_decode(
    vae, latent: torch.Tensor, ctx: ParallelContext | None, settings: TileSettings | None = None,
    *, postprocess: TensorFn | None = None,
) -> torch.Tensor:
    """Tiled decode of an unscaled latent (B, z, t, h, w) -> (B, 3, T, H, W), tiles shared by all ranks.

    postprocess: applied to each blended, cropped tile (e.g. the uint8 conversion). Every rank returns the
    whole video. With ctx None this is `tiled_decode`.
    """
    settings = settings or TileSettings()
    if ctx is None:
        return tiled_decode(vae, latent, settings, postprocess=postprocess)
    grid = plan_decode_tiles(latent.shape, settings, spatial_factor=vae.spatial_factor,
                             temporal_factor=vae.temporal_factor)
    shares = assign_tiles(grid, ctx.world_size)
    mine = run_decode_tiles(vae.decode, latent, grid, shares[ctx.rank])
    channels = PIXEL_CHANNELS_OUT
    results = gather_tile_results(grid, shares, mine, latent.shape[0], channels, vae.dtype, latent.device, ctx)
    kept = blend_decoded_tiles(grid, results)
    if postprocess is not None:
        kept = {index: postprocess(tile) for index, tile in kept.items()}
    return assemble_tiles(grid, kept)


@torch.no_grad()
def parallel_decode_chunk(
    vae, latent: torch.Tensor, ctx: ParallelContext | None, *, fps: int = 24, tiling: TileSettings | None = None,
    out_device: torch.device | str | None = None,
) -> torch.Tensor:
    """`vae_helpers.decode_chunk` with the tiles shared by all ranks: scaled latent (B, z, t, h, w) ->
    uint8 frames (B * T, 8h, 8w, 3) on every rank (the same bytes as decode_chunk)."""
    from ..models.vae import SCALE_FACTOR
    from ..models.vae_helpers import decode_chunk, unit_range_to_pixels

    if ctx is None:
        return decode_chunk(vae, latent, fps=fps, tiling=tiling, out_device=out_device)
    settings = tiling if tiling is not None else TileSettings.for_fps(fps)
    unscaled = latent.to(vae.device).float() / SCALE_FACTOR
    video = parallel_decode(vae, unscaled, ctx, settings, postprocess=unit_range_to_pixels)  # (B, 3, T, H, W)
    batch, _, frames, height, width = video.shape
    device = torch.device(out_device) if out_device is not None else vae.device
    return video.permute(0, 2, 3, 4, 1).reshape(batch * frames, height, width, 3).to(device)
