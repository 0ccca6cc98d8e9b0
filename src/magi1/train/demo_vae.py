"""The demo VAE's export helpers: fold the latent scale into the weights, save an official VAE folder, and
the batched encoders the latent cache is built with (checked against the inference helpers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def fold_latent_scale(vae, pixels: torch.Tensor, scale_factor: float) -> float:
    """Rescale the VAE's latent space so that posterior means × scale_factor have unit standard deviation.

    The encoder's mean rows are multiplied by k and its log-variance biases shifted by 2·ln k; the decoder's
    input projection is divided by k. The VAE computes the same function of pixels, and the official fixed
    scale (0.18215) then hands the DiT unit-variance latents. Returns k.
    """
    z = vae.encoder(pixels)[:, : vae.config.z_chans]
    k = 1.0 / (float(z.std()) * scale_factor)
    channels = vae.config.z_chans
    last = vae.encoder.last_layer
    last.weight[:channels] *= k
    last.bias[:channels] *= k
    last.bias[channels:] += 2.0 * math.log(k)
    vae.decoder.proj_in.weight /= k
    return k


def save_vae(vae, folder: str | Path, *, dtype: torch.dtype = torch.float32) -> Path:
    """An official VAE folder: config.json (`_class_name` ViTVAE, ddconfig) + diffusion_pytorch_model.safetensors."""
    from safetensors.torch import save_file

    from ..models.vae import CONFIG_NAME, OFFICIAL_CLASS_NAME, WEIGHTS_NAME

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": OFFICIAL_CLASS_NAME, "model_type": "vit", "ddconfig": vae.config.to_ddconfig()}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {name: t.detach().to(dtype).contiguous() for name, t in vae.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def inference_encoders(vae, *, fps: int):
    """(encode_videos, encode_images) over lists of clips, equal to the inference helpers clip by clip.

    The helpers encode one clip at a time in temporal tiles of fps/2 frames; when a frame fits in one
    spatial tile and the clip is a whole number of temporal tiles (no blending happens), the tiles are
    independent, so all tiles of many clips go through the encoder as one batch. The first batch is checked
    against `vae_helpers.encode_video` / `encode_image`; other cases fall back to the helpers.
    """
    from ..models.vae import SCALE_FACTOR
    from ..models.vae_helpers import encode_image, encode_video, pixels_to_unit_range
    from ..models.vae_tiling import TileSettings

    tiling = TileSettings.for_fps(fps)
    tile = tiling.length
    checked = {"videos": False, "images": False}

    def batchable(frames) -> bool:
        height, width = frames[0].shape[1:3]
        return (frames[0].shape[0] % tile == 0 and height <= tiling.height and width <= tiling.width
                and tiling.temporal_overlap == 0)

    def encode_videos(frames: list) -> torch.Tensor:
        if not batchable(frames):
            return torch.cat([encode_video(vae, f, fps=fps) for f in frames])
        video = torch.from_numpy(np.stack(frames))                       # (B, T, H, W, 3) uint8
        b, t, h, w, _ = video.shape
        tiles = video.reshape(b * (t // tile), tile, h, w, 3).permute(0, 4, 1, 2, 3)
        mean = vae.encode(pixels_to_unit_range(tiles.to(vae.device)))  # (B*n, C, tile/4, h/8, w/8)
        latent = mean.reshape(b, t // tile, *mean.shape[1:]).permute(0, 2, 1, 3, 4, 5).flatten(2, 3)
        latent = latent * SCALE_FACTOR
        if not checked["videos"]:
            _check_close(latent[:1], encode_video(vae, frames[0], fps=fps), "video")
            checked["videos"] = True
        return latent

    def encode_images(images: list) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(images))[:, None].permute(0, 4, 1, 2, 3)  # (B, 3, 1, H, W)
        latent = vae.encode(pixels_to_unit_range(batch.to(vae.device))) * SCALE_FACTOR
        if not checked["images"]:
            _check_close(latent[:1], encode_image(vae, images[0], fps=fps), "image")
            checked["images"] = True
        return latent

    return encode_videos, encode_images


def _check_close(batched: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    if batched.shape != reference.shape or not torch.allclose(batched.float(), reference.float(), atol=1e-4):
        raise RuntimeError(f"batched {what} encoding differs from the inference helper; refusing to build the cache")


