"""The VAE calls the pipeline makes: uint8 pixels <-> scaled latents, tiled exactly as the official code.

    encode_image  (H, W, 3) uint8             -> (1, 16, 1, H/8, W/8)  latent * 0.18215
    encode_video  (T, H, W, 3) uint8          -> (1, 16, T', H/8, W/8) latent * 0.18215
    decode_chunk  (1, 16, t, h, w) scaled     -> (T, 8h, 8w, 3) uint8

Precision follows the VAE's own dtype (choose it with `ViTVAE.from_pretrained(..., dtype=...)`): bf16 is
the official regime (pixels are mapped to [-1, 1] in float32, then cast; the scale multiply and the
uint8 conversion run in bf16); float32 is the reference for parity on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from .vae import SCALE_FACTOR, ViTVAE
from .vae_tiling import DEFAULT_FPS, TileSettings, plan_decode_tiles, tiled_decode, tiled_encode

PIXEL_HALF_RANGE = 127.5  # uint8 0..255 <-> [-1, 1]


def pixels_to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]: x / 127.5 - 1."""
    return pixels.float() / PIXEL_HALF_RANGE - 1.0


def unit_range_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8, op by op in x's own dtype (bf16 rounds at each step), truncating toward zero."""
    return (x * PIXEL_HALF_RANGE + PIXEL_HALF_RANGE).clamp(0, 255).to(torch.uint8)


def _as_uint8_tensor(frames, what: str) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        if not frames.flags.writeable:  # e.g. a view of a PIL image; torch warns on read-only memory
            frames = frames.copy()
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"{what} must be a torch tensor or numpy array, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"{what} must hold uint8 pixels (0..255), got dtype {frames.dtype}")
    return frames


def _video_ncthw(frames, what: str, *, expected_rank: int) -> torch.Tensor:
    """(T, H, W, 3) [or (H, W, 3) for an image] channels-last, or (1, 3, T, H, W) -> (1, 3, T, H, W)."""
    frames = _as_uint8_tensor(frames, what)
    if frames.ndim == expected_rank and frames.shape[-1] == 3:
        if expected_rank == 3:
            frames = frames.unsqueeze(0)  # (H, W, 3) -> (1, H, W, 3)
        if frames.shape[0] == 0:
            raise ValueError(f"{what} is empty: no frames")
        return frames.permute(3, 0, 1, 2).unsqueeze(0)  # (T, H, W, 3) -> (1, 3, T, H, W)
    if frames.ndim == 5 and frames.shape[:2] == (1, 3):
        return frames
    layout = "(H, W, 3)" if expected_rank == 3 else "(T, H, W, 3)"
    raise ValueError(f"{what} must be {layout} RGB channels-last or (1, 3, T, H, W), got shape {tuple(frames.shape)}")


def _settings(fps: int, tiling: TileSettings | None) -> TileSettings:
    return tiling if tiling is not None else TileSettings.for_fps(fps)


@torch.no_grad()
def encode_video(vae: ViTVAE, frames, *, fps: int = DEFAULT_FPS, tiling: TileSettings | None = None) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) or (1, 3, T, H, W) -> scaled latent (1, z, T', H/8, W/8) in the VAE's dtype.

    Frame counts follow the official tiled encoder (tiles of fps // 2 frames; 24 fps: 32 -> 8, 13 -> 4);
    counts the official code crashes on (e.g. 14) raise. Pixels move to the VAE's device tile by tile.
    """
    video = _video_ncthw(frames, "video", expected_rank=4)
    to_model_input = lambda tile: pixels_to_unit_range(tile.to(vae.device))  # noqa: E731
    mean = tiled_encode(vae, video, _settings(fps, tiling), preprocess=to_model_input)
    return mean * SCALE_FACTOR


@torch.no_grad()
def encode_image(vae: ViTVAE, image, *, fps: int = DEFAULT_FPS, tiling: TileSettings | None = None) -> torch.Tensor:
    """uint8 image (H, W, 3) or (1, 3, 1, H, W) -> scaled latent (1, z, 1, H/8, W/8).

    The frame is repeated to 4 frames, encoded, and latent frame 0 kept (the official single-frame rule).
    """
    video = _video_ncthw(image, "image", expected_rank=3)
    if video.shape[2] != 1:
        raise ValueError(f"an image has one frame, got {video.shape[2]}; use encode_video")
    return encode_video(vae, video, fps=fps, tiling=tiling)


@torch.no_grad()
def decode_chunk(
    vae: ViTVAE,
    latent: torch.Tensor,
    *,
    fps: int = DEFAULT_FPS,
    tiling: TileSettings | None = None,
    out_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Scaled latent (B, z, t, h, w) -> uint8 frames (B * T, 8h, 8w, 3).

    T follows the official tiled decoder (24 fps: 6 -> 24, 4 -> 13, 1 -> 1). The latent is divided by
    the scale factor in float32, decoded tile by tile, and each finished tile is converted to uint8 at
    once, so the float video never exists whole. out_device: where the frames go (default: the VAE's).
    """
    if not isinstance(latent, torch.Tensor) or latent.ndim != 5:
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise ValueError(f"expected a latent chunk (B, C, t, h, w), got {shape}")
    settings = _settings(fps, tiling)
    unscaled = latent.to(vae.device).float() / SCALE_FACTOR
    grid = plan_decode_tiles(
        unscaled.shape, settings, spatial_factor=vae.spatial_factor, temporal_factor=vae.temporal_factor
    )
    batch = latent.shape[0]
    frames, height, width = grid.output_grid
    device = torch.device(out_device) if out_device is not None else vae.device
    out = torch.empty(batch, frames, height, width, 3, dtype=torch.uint8, device=device)
    # The decoder writes (B, 3, T, H, W); fill the channels-last frames through a permuted view.
    tiled_decode(vae, unscaled, settings, postprocess=unit_range_to_pixels, out=out.permute(0, 4, 1, 2, 3))
    return out.reshape(batch * frames, height, width, 3)
