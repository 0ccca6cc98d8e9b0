"""Tiled VAE encode and decode, exact to the official tile processor.

The official pipeline never runs the VAE on a whole video: it cuts it into overlapping tiles (256 x 256 px
with 25% overlap; fps // 2 frames with no temporal overlap), runs each tile on its own (the learned position
embedding is resized to the tile's grid), blends each tile's leading rows/columns into its upper and left
neighbours' trailing ones with a linear ramp, keeps each tile's leading part, and concatenates.

    encode: pixel tiles 256 px, stride 192 px; latent ramp 8, keep 24 latents; fps//2 frames per tile
    decode: latent tiles 32, stride 24; pixel ramp 64 px, keep 192 px; (fps//2)//4 latent frames per tile

The two directions blend differently, and both are reproduced:
    encode  tiles are blended IN PLACE in raster order (time, rows, columns), so a tile reads neighbours
            that were already blended themselves; arithmetic rounds after every op (eager bf16).
    decode  each tile is blended on a copy against its neighbours' RAW decodes; the official code compiles
            the blend, so it is computed in float32 and rounded once.

Memory is bounded by the tile: `tiled_encode` / `tiled_decode` run tiles in raster order, write each kept
part into the output as soon as it is final, and drop a tile's result once its last reader has blended.
For torch.distributed the same steps are exposed over lists (`plan_*_tiles`, `assign_tiles`,
`run_*_tiles`, `blend_encoded_tiles`, `blend_decoded_tiles`, `assemble_tiles`): a rank runs its share of
tiles, the results are gathered, then blended and assembled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import accumulate, product
from typing import Callable, Iterable, Mapping

import torch

# Axis positions of T, H, W in (B, C, T, H, W)
TIME_AXIS, HEIGHT_AXIS, WIDTH_AXIS = 2, 3, 4
GRID_AXES = (TIME_AXIS, HEIGHT_AXIS, WIDTH_AXIS)
DEFAULT_FPS = 24
OFFICIAL_TILE_PIXELS = 256
OFFICIAL_SPATIAL_OVERLAP = 0.25
OFFICIAL_TEMPORAL_OVERLAP = 0.0

TensorFn = Callable[[torch.Tensor], torch.Tensor]


class TilingError(ValueError):
    """An input or a tile setting that the tiled VAE cannot process."""


@dataclass(frozen=True)
class TileSettings:
    """Tile sizes in PIXELS and FRAMES (for both directions), and overlap fractions."""

    height: int = OFFICIAL_TILE_PIXELS
    width: int = OFFICIAL_TILE_PIXELS
    length: int = DEFAULT_FPS // 2  # frames per temporal tile; the official pipeline uses fps // 2
    spatial_overlap: float = OFFICIAL_SPATIAL_OVERLAP
    temporal_overlap: float = OFFICIAL_TEMPORAL_OVERLAP

    @classmethod
    def for_fps(cls, fps: int = DEFAULT_FPS, *, size: int = OFFICIAL_TILE_PIXELS) -> TileSettings:
        """The official settings at a frame rate: square `size` px tiles, fps // 2 frames per tile."""
        return cls(height=size, width=size, length=int(fps) // 2)


# ---------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class AxisCut:
    """How one axis (T, H or W) is cut into tiles, and where each tile's kept part lands."""

    starts: tuple[int, ...]  # input range of each tile
    stops: tuple[int, ...]
    result_sizes: tuple[int, ...]  # size of each tile's result along this axis
    blend: int  # ramp length into the previous tile's result (before clipping to the two sizes)
    keep: int  # leading part of each result that is kept

    @property
    def count(self) -> int:
        return len(self.starts)

    def kept_size(self, k: int) -> int:
        return min(self.result_sizes[k], self.keep)

    @property
    def offsets(self) -> tuple[int, ...]:
        return (0, *accumulate(self.kept_size(k) for k in range(self.count)))[:-1]

    @property
    def output_size(self) -> int:
        return sum(self.kept_size(k) for k in range(self.count))


@dataclass(frozen=True)
class Tile:
    index: int  # raster index: time slowest, then rows, then columns
    position: tuple[int, int, int]  # (f, i, j) in the tile grid
    source: tuple[slice, slice, slice]  # (T, H, W) ranges of the input
    target: tuple[slice, slice, slice]  # (T, H, W) ranges of the output that its kept part fills
    numel: int  # elements of the input tile (batch and channels included); the official balancing key


@dataclass(frozen=True)
class TileGrid:
    """All tiles of one tiled encode or decode. `direction` is 'encode' or 'decode'."""

    direction: str
    axes: tuple[AxisCut, AxisCut, AxisCut]  # T, H, W
    batch_channels: int  # B * C of the input, for tile sizes

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(axis.count for axis in self.axes)

    @property
    def output_grid(self) -> tuple[int, int, int]:
        """(T, H, W) of the assembled output."""
        return tuple(axis.output_size for axis in self.axes)

    def index_of(self, position: tuple[int, int, int]) -> int:
        f, i, j = position
        _, rows, cols = self.shape
        return (f * rows + i) * cols + j

    def position_of(self, index: int) -> tuple[int, int, int]:
        _, rows, cols = self.shape
        return (index // (rows * cols), (index // cols) % rows, index % cols)

    @cached_property
    def tiles(self) -> list[Tile]:
        """Every tile, in raster order (list position == tile index)."""
        offsets = [axis.offsets for axis in self.axes]
        tiles = []
        for position in product(*(range(n) for n in self.shape)):
            source = tuple(slice(ax.starts[k], ax.stops[k]) for ax, k in zip(self.axes, position))
            target = tuple(
                slice(off[k], off[k] + ax.kept_size(k)) for ax, off, k in zip(self.axes, offsets, position)
            )
            numel = self.batch_channels * math.prod(s.stop - s.start for s in source)
            tiles.append(Tile(self.index_of(position), position, source, target, numel))
        return tiles

    def neighbours(self, index: int) -> list[tuple[int, int, int]]:
        """(axis, neighbour index, ramp length) for the previous tile in time, above, and to the left,
        in that order (the official blending order); neighbours with a zero ramp are left out."""
        position = self.position_of(index)
        found = []
        for dim, axis in enumerate(self.axes):
            k = position[dim]
            if k == 0:
                continue
            prev = list(position)
            prev[dim] = k - 1
            extent = min(axis.blend, axis.result_sizes[k - 1], axis.result_sizes[k])
            if extent > 0:  # a zero ramp (the official temporal setting) reads nothing
                found.append((GRID_AXES[dim], self.index_of(tuple(prev)), extent))
        return found

    def last_reader(self, index: int) -> int:
        """The last tile (raster order) that reads this tile's result for a blend; itself if none does."""
        position = self.position_of(index)
        last = index
        for dim, axis in enumerate(self.axes):
            k = position[dim]
            if k + 1 < axis.count and min(axis.blend, axis.result_sizes[k], axis.result_sizes[k + 1]) > 0:
                nxt = list(position)
                nxt[dim] = k + 1
                last = max(last, self.index_of(tuple(nxt)))
        return last


def _cut_axis(size: int, tile: int, stride: int, result_size: Callable[[int, int, int], int], blend: int, keep: int):
    if stride < 1:
        raise TilingError(f"tile stride {stride} must be positive (tile {tile}, size {size})")
    count = -(-size // stride)  # ceil: the last tile may be short
    starts = tuple(k * stride for k in range(count))
    stops = tuple(min(start + tile, size) for start in starts)
    sizes = tuple(result_size(start, stop, size) for start, stop in zip(starts, stops))
    return AxisCut(starts, stops, sizes, blend, keep)


def _check_grid_input(shape: tuple[int, ...], what: str) -> None:
    if len(shape) != 5:
        raise TilingError(f"expected a {what} (B, C, T, H, W), got shape {tuple(shape)}")
    if min(shape) < 1:
        raise TilingError(f"empty {what} of shape {tuple(shape)}")


def _check_settings(settings: TileSettings) -> None:
    for name in ("spatial_overlap", "temporal_overlap"):
        value = getattr(settings, name)
        if not 0.0 <= value < 1.0:
            raise TilingError(f"{name} must be in [0, 1), got {value}")


def plan_encode_tiles(
    video_shape: Iterable[int], settings: TileSettings, *, spatial_factor: int = 8, temporal_factor: int = 4
) -> TileGrid:
    """Tiles of a video (B, C, T, H, W): pixel tiles in, latent results out."""
    shape = tuple(video_shape)
    _check_grid_input(shape, "video")
    _check_settings(settings)
    sf, tf = spatial_factor, temporal_factor
    batch, channels, frames, height, width = shape
    for name, value in (("height", height), ("width", width)):
        if value % sf:
            raise TilingError(f"video {name} {value} is not a multiple of {sf}; resize or crop it first")
    for name in ("height", "width"):
        tile = getattr(settings, name)
        stride = int(tile * (1 - settings.spatial_overlap))
        if tile < sf or tile % sf or stride < 1 or stride % sf:
            raise TilingError(
                f"tile {name} {tile} px and its stride {stride} px (tile * (1 - overlap)) must be positive "
                f"multiples of the {sf} px patch"
            )
    if settings.length < 1:
        raise TilingError(f"tile length {settings.length} frames must be positive (the official one is fps // 2)")

    def spatial_result(start: int, stop: int, size: int) -> int:
        return (stop - start) // sf  # sizes and strides are multiples of sf: nothing is dropped

    def temporal_result(start: int, stop: int, size: int) -> int:
        n = stop - start
        if n == 1:
            return 1  # a lone frame is repeated to 4 and gives one latent frame
        if n < tf:
            raise TilingError(
                f"cannot encode {size} frames: the temporal tile of frames [{start}, {stop}) has {n} frames, "
                f"and the VAE encodes 1 frame or at least {tf} (tiles are {settings.length} frames; the official "
                f"code crashes here). Drop {n - 1} frame(s) or add {tf - n}."
            )
        return n // tf  # leftover frames past a multiple of 4 are dropped, as officially

    def axis(size: int, tile: int, overlap: float, factor: int, result) -> AxisCut:
        latent_tile = tile // factor
        blend = int(latent_tile * overlap)
        return _cut_axis(size, tile, int(tile * (1 - overlap)), result, blend, latent_tile - blend)

    axes = (
        axis(frames, settings.length, settings.temporal_overlap, tf, temporal_result),
        axis(height, settings.height, settings.spatial_overlap, sf, spatial_result),
        axis(width, settings.width, settings.spatial_overlap, sf, spatial_result),
    )
    if axes[0].keep < 1:
        raise TilingError(f"tile length {settings.length} frames is shorter than one latent frame ({tf} frames)")
    return TileGrid("encode", axes, batch * channels)


def plan_decode_tiles(
    latent_shape: Iterable[int], settings: TileSettings, *, spatial_factor: int = 8, temporal_factor: int = 4
) -> TileGrid:
    """Tiles of a latent (B, C, t, h, w): latent tiles in, pixel results out."""
    shape = tuple(latent_shape)
    _check_grid_input(shape, "latent")
    _check_settings(settings)
    sf, tf = spatial_factor, temporal_factor
    batch, channels, frames, height, width = shape
    latent_tiles = (settings.length // tf, settings.height // sf, settings.width // sf)
    if latent_tiles[0] < 1:
        raise TilingError(
            f"tile length {settings.length} frames holds no latent frame ({tf} frames each); "
            f"the official tile is fps // 2 frames, so fps must be at least {2 * tf}"
        )
    if min(latent_tiles[1:]) < 1:
        raise TilingError(f"tile size {settings.height}x{settings.width} px is smaller than one {sf} px latent")

    def spatial_result(start: int, stop: int, size: int) -> int:
        return (stop - start) * sf

    def temporal_result(start: int, stop: int, size: int) -> int:
        return 1 if stop - start == 1 else (stop - start) * tf  # one latent frame decodes to one frame

    def axis(size: int, latent_tile: int, overlap: float, factor: int, result) -> AxisCut:
        pixel_tile = latent_tile * factor
        blend = int(pixel_tile * overlap)
        return _cut_axis(size, latent_tile, int(latent_tile * (1 - overlap)), result, blend, pixel_tile - blend)

    axes = (
        axis(frames, latent_tiles[0], settings.temporal_overlap, tf, temporal_result),
        axis(height, latent_tiles[1], settings.spatial_overlap, sf, spatial_result),
        axis(width, latent_tiles[2], settings.spatial_overlap, sf, spatial_result),
    )
    return TileGrid("decode", axes, batch * channels)


def assign_tiles(grid: TileGrid, world_size: int) -> list[list[int]]:
    """The official split of tiles over ranks: tiles sorted by size (largest first, ties in raster order)
    are dealt round-robin; the remainder goes to the lowest ranks. Returns each rank's tile indices."""
    order = sorted(grid.tiles, key=lambda tile: -tile.numel)  # sorted() is stable
    indices = [tile.index for tile in order]
    full_rounds = len(indices) // world_size
    shares = []
    for rank in range(world_size):
        share = [indices[rank + world_size * r] for r in range(full_rounds)]
        if rank < len(indices) % world_size:
            share.append(indices[full_rounds * world_size + rank])
        shares.append(share)
    return shares


# ---------------------------------------------------------------------------------------------- blending
def _blend_weights(extent: int, axis: int, ndim: int, dtype: torch.dtype, device: torch.device):
    """(previous, current) ramp weights along `axis`: 1 - k/E and k/E, k = 0..E-1.

    The official weights are Python floats, which torch applies in the op's compute precision (float32
    for bf16 and float32 tensors): computed here in float64 and cast, like the scalar is.
    """
    ramp = torch.arange(extent, dtype=torch.float64) / extent
    shape = [1] * ndim
    shape[axis] = extent
    return (1 - ramp).to(device=device, dtype=dtype).view(shape), ramp.to(device=device, dtype=dtype).view(shape)


def blend_edge_(previous: torch.Tensor, current: torch.Tensor, axis: int, extent: int, *, round_once: bool) -> None:
    """Ramp `current`'s first `extent` slices along `axis` from `previous`'s last ones, in place.

    round_once=False: round after each op (official eager blend of encoded tiles).
    round_once=True: compute in float32 and round once (official compiled blend of decoded tiles).
    """
    extent = min(extent, previous.shape[axis], current.shape[axis])
    if extent == 0:
        return
    compute = torch.float64 if current.dtype == torch.float64 else torch.float32
    w_prev, w_cur = _blend_weights(extent, axis, current.ndim, compute, current.device)
    tail = previous.narrow(axis, previous.shape[axis] - extent, extent).to(compute)
    head = current.narrow(axis, 0, extent)
    if round_once:
        head.copy_(tail * w_prev + head.to(compute) * w_cur)
    else:
        from_prev = (tail * w_prev).to(current.dtype).to(compute)
        from_cur = (head.to(compute) * w_cur).to(current.dtype).to(compute)
        head.copy_(from_prev + from_cur)  # the copy rounds the sum, as the eager add does


def blend_encoded_tile_(grid: TileGrid, index: int, results: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """Blend encoded tile `index` in place against its (already blended) neighbours; returns it."""
    tile = results[index]
    for axis, neighbour, extent in grid.neighbours(index):
        blend_edge_(results[neighbour], tile, axis, extent, round_once=False)
    return tile


def blend_decoded_tile(grid: TileGrid, index: int, results: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """A blended copy of decoded tile `index`, against its neighbours' raw decodes, cropped to its kept part."""
    tile = results[index].clone()
    for axis, neighbour, extent in grid.neighbours(index):
        blend_edge_(results[neighbour], tile, axis, extent, round_once=True)
    return crop_tile(grid, index, tile)


def crop_tile(grid: TileGrid, index: int, tile: torch.Tensor) -> torch.Tensor:
    """The leading kept part of a tile result: (B, C, t, h, w) -> (B, C, kept t, kept h, kept w)."""
    kept = tuple(slice(0, s.stop - s.start) for s in grid.tiles[index].target)
    return tile[(slice(None), slice(None), *kept)]


def _check_result(grid: TileGrid, index: int, result: torch.Tensor) -> None:
    position = grid.position_of(index)
    expected = tuple(ax.result_sizes[k] for ax, k in zip(grid.axes, position))
    if tuple(result.shape[2:]) != expected:
        raise RuntimeError(f"tile {index} gave a result of grid {tuple(result.shape[2:])}, planned {expected}")


# ---------------------------------------------------------------------------------------------- list form
def run_encode_tiles(
    encode: TensorFn, video: torch.Tensor, grid: TileGrid, indices: Iterable[int], preprocess: TensorFn | None = None
) -> dict[int, torch.Tensor]:
    """Encode the listed tiles (e.g. one rank's share). `encode` maps a pixel tile to its latent."""
    tiles = grid.tiles
    results = {}
    for index in indices:
        results[index] = _encode_one(encode, video, tiles[index], grid, preprocess)
    return results


def run_decode_tiles(
    decode: TensorFn, latent: torch.Tensor, grid: TileGrid, indices: Iterable[int]
) -> dict[int, torch.Tensor]:
    """Decode the listed tiles (e.g. one rank's share). `decode` maps a latent tile to its pixels."""
    tiles = grid.tiles
    return {index: _decode_one(decode, latent, tiles[index], grid) for index in indices}


def blend_encoded_tiles(grid: TileGrid, results: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """Blend every encoded tile (all of them are needed; they are modified in place) and assemble."""
    for index in range(len(results)):
        blend_encoded_tile_(grid, index, results)
    return assemble_tiles(grid, {index: crop_tile(grid, index, results[index]) for index in results})


def blend_decoded_tiles(
    grid: TileGrid, results: Mapping[int, torch.Tensor], indices: Iterable[int] | None = None
) -> dict[int, torch.Tensor]:
    """Blended, cropped copies of the listed decoded tiles (default all); each needs its neighbours' results."""
    indices = range(len(results)) if indices is None else indices
    return {index: blend_decoded_tile(grid, index, results) for index in indices}


def assemble_tiles(grid: TileGrid, kept: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """Place every tile's kept part into one (B, C, T, H, W) tensor."""
    out = None
    for tile in grid.tiles:
        out = _place(out, tile, kept[tile.index], grid)
    return out


def _place(out: torch.Tensor | None, tile: Tile, kept: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    if out is None:
        out = kept.new_empty((*kept.shape[:2], *grid.output_grid))
    out[(slice(None), slice(None), *tile.target)] = kept
    return out


def _encode_one(encode: TensorFn, video: torch.Tensor, tile: Tile, grid: TileGrid, preprocess: TensorFn | None):
    pixels = video[(slice(None), slice(None), *tile.source)]
    result = encode(preprocess(pixels) if preprocess is not None else pixels)
    _check_result(grid, tile.index, result)
    return result


def _decode_one(decode: TensorFn, latent: torch.Tensor, tile: Tile, grid: TileGrid):
    result = decode(latent[(slice(None), slice(None), *tile.source)])
    _check_result(grid, tile.index, result)
    return result


# ---------------------------------------------------------------------------------------------- streaming form
def _releases(grid: TileGrid) -> dict[int, list[int]]:
    """For each tile index n: the tiles whose results nobody reads after tile n."""
    released: dict[int, list[int]] = {}
    for index in range(math.prod(grid.shape)):
        released.setdefault(grid.last_reader(index), []).append(index)
    return released


@torch.no_grad()
def tiled_encode(
    vae, video: torch.Tensor, settings: TileSettings | None = None, *, preprocess: TensorFn | None = None
) -> torch.Tensor:
    """Posterior mean of a video (B, C, T, H, W), tile by tile, as the official pipeline encodes.

    video: in [-1, 1], or anything `preprocess` maps there tile by tile (so a uint8 video is never
    converted whole). Returns (B, z, T', H/8, W/8) in the VAE's dtype. Memory: the output, one tile's
    forward, and the encoded tiles a later tile still blends against (about one row of tiles).
    """
    settings = settings or TileSettings()
    _check_channels(video, vae.config.in_chans, "video")
    grid = plan_encode_tiles(
        video.shape, settings, spatial_factor=vae.spatial_factor, temporal_factor=vae.temporal_factor
    )
    releases = _releases(grid)
    results: dict[int, torch.Tensor] = {}
    out = None
    for tile in grid.tiles:
        results[tile.index] = _encode_one(vae.encode, video, tile, grid, preprocess)
        blend_encoded_tile_(grid, tile.index, results)
        out = _place(out, tile, crop_tile(grid, tile.index, results[tile.index]), grid)
        for done in releases.get(tile.index, []):
            del results[done]
    return out


@torch.no_grad()
def tiled_decode(
    vae,
    latent: torch.Tensor,
    settings: TileSettings | None = None,
    *,
    postprocess: TensorFn | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode an unscaled latent (B, z, t, h, w) tile by tile, as the official pipeline decodes.

    postprocess: applied to each tile's final (blended, cropped) pixels, e.g. the uint8 conversion, so
    the float video never exists whole. out: an optional (B, 3, T, H, W) tensor (a view is fine) to fill.
    Memory: the output, one tile's forward, and the raw decodes a later tile still blends against.
    """
    settings = settings or TileSettings()
    _check_channels(latent, vae.config.z_chans, "latent")
    grid = plan_decode_tiles(
        latent.shape, settings, spatial_factor=vae.spatial_factor, temporal_factor=vae.temporal_factor
    )
    if out is not None and tuple(out.shape[2:]) != grid.output_grid:
        raise TilingError(f"out has grid {tuple(out.shape[2:])}, the decode gives {grid.output_grid}")
    releases = _releases(grid)
    results: dict[int, torch.Tensor] = {}
    for tile in grid.tiles:
        results[tile.index] = _decode_one(vae.decode, latent, tile, grid)
        kept = blend_decoded_tile(grid, tile.index, results)
        out = _place(out, tile, postprocess(kept) if postprocess is not None else kept, grid)
        for done in releases.get(tile.index, []):
            del results[done]
    return out


def _check_channels(x: torch.Tensor, channels: int, what: str) -> None:
    if x.ndim != 5:
        raise TilingError(f"expected a {what} (B, C, T, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise TilingError(f"expected {channels} channels in dim 1 of the {what}, got shape {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------- frame counts
def encoded_frame_count(num_frames: int, settings: TileSettings | None = None, temporal_factor: int = 4) -> int:
    """Latent frames a tiled encode gives (24 fps: 1->1, 4->1, 12->3, 13->4, 32->8); raises where the
    official code crashes (a temporal tile of 2-3 frames, e.g. 14 or 15 frames)."""
    settings = settings or TileSettings()
    if num_frames < 1:
        raise TilingError("cannot encode an empty video")
    # Only the time axis matters: probe with one 8 px spatial tile.
    probe = replace(settings, height=8, width=8, spatial_overlap=0.0)
    grid = plan_encode_tiles((1, 1, num_frames, 8, 8), probe, spatial_factor=8, temporal_factor=temporal_factor)
    return grid.output_grid[0]


def decoded_frame_count(num_latents: int, settings: TileSettings | None = None, temporal_factor: int = 4) -> int:
    """Frames a tiled decode gives (24 fps: 1->1, 2->8, 3->12, 4->13, 6->24)."""
    settings = settings or TileSettings()
    if num_latents < 1:
        raise TilingError("cannot decode an empty latent")
    grid = plan_decode_tiles((1, 1, num_latents, 1, 1), settings, spatial_factor=8, temporal_factor=temporal_factor)
    return grid.output_grid[0]
