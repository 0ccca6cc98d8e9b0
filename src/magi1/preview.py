"""Cheap previews of latents: a linear map from the 16 latent channels to RGB, fitted once to a VAE.

Decoding a chunk through the VAE costs about as much as a denoising step; a preview of every step must
cost nothing. As peers do for their VAEs, each latent cell (4 frames x 8 x 8 pixels) is mapped to one RGB
colour by `rgb = W @ latent + b` (a 3 x 16 matrix and a bias), fitted by least squares to what the VAE's
encoder makes of known pixels. The preview has the latent's resolution (H/8 x W/8 per 4 frames): blurry,
but it shows the layout and colours of a chunk while it is still being denoised.

The map belongs to one VAE's weights: it is stored as `latent_rgb.json` in the VAE folder (the demo VAE
ships one) or in magi1's cache (`$MAGI1_CACHE`, default ~/.cache/magi1), keyed by a fingerprint of the
weights file, and fitted on first use when neither holds one for these weights (seconds for the demo VAE,
longer for the official one on a CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

PREVIEW_FILE = "latent_rgb.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
_FINGERPRINT_BYTES = 4 << 20  # head and tail of the weights file, plus its size


@dataclass(frozen=True)
class LatentPreview:
    """rgb in [0, 1] = weight @ latent + bias, per latent cell; latents are the scaled VAE latents."""

    weight: torch.Tensor  # (3, C) float32
    bias: torch.Tensor  # (3,) float32
    fingerprint: str = ""  # of the VAE weights it was fitted to
    clip_set: str = "mixed"  # what it was fitted on (see training_clips)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, scale: int = 1) -> np.ndarray:
        """(B, C, T, h, w) or (C, T, h, w) latents -> uint8 RGB (B, T, h*scale, w*scale, 3) (no batch axis in)."""
        single = latents.dim() == 4
        x = latents[None] if single else latents
        rgb = torch.einsum("oc,bcthw->bthwo", self.weight.to(x.device), x.float()) + self.bias.to(x.device)
        frames = (rgb.clamp(0, 1) * 255).round().to(torch.uint8)
        if scale > 1:  # nearest neighbour: each cell becomes a scale x scale block
            frames = frames.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        out = frames.cpu().numpy()
        return out[0] if single else out

    def to_json(self) -> dict:
        return {"weight": self.weight.tolist(), "bias": self.bias.tolist(), "fingerprint": self.fingerprint,
                "clip_set": self.clip_set}

    @classmethod
    def from_json(cls, data: dict) -> "LatentPreview":
        return cls(torch.tensor(data["weight"], dtype=torch.float32), torch.tensor(data["bias"], dtype=torch.float32),
                   str(data.get("fingerprint", "")), str(data.get("clip_set", "mixed")))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        partial.replace(path)
        return path


def weights_fingerprint(vae_folder: str | Path) -> str:
    """Size and SHA-256 of the head and tail of the VAE weights: changes when the VAE is retrained."""
    path = Path(vae_folder) / WEIGHTS_FILE
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            fh.seek(max(size - _FINGERPRINT_BYTES, _FINGERPRINT_BYTES))
            digest.update(fh.read())
    return digest.hexdigest()[:32]


def cache_folder() -> Path:
    return Path(os.environ.get("MAGI1_CACHE", Path.home() / ".cache" / "magi1")).expanduser()


def window_clean_estimate(latent: torch.Tensor, before: torch.Tensor, step, grid: torch.Tensor,
                          chunk_width: int) -> torch.Tensor:
    """The clean video the window's chunks head for after `step`: (B, C, window frames, h, w).

    The step's velocity is recovered from the Euler update, v = (x_after - x_before) / dt, per chunk; the
    estimate is x + (1 - t) v (sampling/schedule.py). A preview of it shows the coming video long before
    the noisy latent itself does.
    """
    from .sampling.schedule import clean_estimate

    window = slice(step.chunk_start * chunk_width, step.chunk_end * chunk_width)
    after, prior = latent[:, :, window].float().cpu(), before[:, :, window].float().cpu()
    k = torch.tensor(step.chunk_steps)
    t_after = grid[k + 1].repeat_interleave(chunk_width).view(1, 1, -1, 1, 1)
    dt = (grid[k + 1] - grid[k]).repeat_interleave(chunk_width).view(1, 1, -1, 1, 1)
    return clean_estimate(after, (after - prior) / dt, t_after)


# ---------------------------------------------------------------------------------------------- fitting
CLIP_SETS = ("physics", "fields", "mixed")
RIDGE = 1e-3  # per-sample ridge weight: keeps weak, noisy latent channels from getting large weights


def colour_field_clips(count: int, frames: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 (count, frames, size, size, 3): smooth random colour fields drifting over time, and flat colours.

    They cover the colour cube with cells that are nearly uniform, so each cell's colour is well defined.
    """
    gen = torch.Generator().manual_seed(seed)
    clips = []
    for i in range(count):
        if i % 4 == 3:  # a flat colour
            colour = torch.rand(3, generator=gen)
            clip = colour.view(1, 1, 1, 3).expand(frames, size, size, 3)
        else:
            grid = torch.rand(3, 2, 5, 5, generator=gen)  # colours at two key times on a coarse grid
            t = torch.linspace(0, 1, frames).view(frames, 1, 1, 1)
            coarse = grid[:, 0][None] * (1 - t) + grid[:, 1][None] * t  # (frames, 3, 5, 5)
            clip = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic",
                                                   align_corners=True).clamp(0, 1).permute(0, 2, 3, 1)
        clips.append((clip * 255).round().to(torch.uint8))
    return torch.stack(clips).numpy()


def training_clips(clip_set: str, size: int, count: int = 8, frames: int = 24) -> np.ndarray:
    """The clips a preview map is fitted on: magi1's synthetic physics scenes, colour fields, or both."""
    from .train.synthetic import SceneConfig, make_clip

    if clip_set not in CLIP_SETS:
        raise ValueError(f"clip_set must be one of {', '.join(CLIP_SETS)}, got {clip_set!r}")
    parts = []
    if clip_set in ("physics", "mixed"):
        scene = SceneConfig(height=size, width=size, num_frames=frames)
        parts.append(np.stack([make_clip(seed, scene).frames[:frames] for seed in range(count)]))
    if clip_set in ("fields", "mixed"):
        parts.append(colour_field_clips(count, frames, size))
    return np.concatenate(parts)


def _cell_colours(frames: np.ndarray, t: int, h: int, w: int) -> torch.Tensor:
    """Mean colour in [0, 1] of each latent cell: (4t, 8h, 8w, 3) -> (t, 4, h, 8, w, 8, 3) -> (t*h*w, 3)."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames[: 4 * t])).float() / 255
    cells = pixels.reshape(t, 4, h, pixels.shape[1] // h, w, pixels.shape[2] // w, 3).mean(dim=(1, 3, 5))
    return cells.reshape(-1, 3)


@torch.no_grad()
def fit_latent_preview(vae, *, clip_set: str = "mixed", clips: np.ndarray | None = None, fps: int = 24,
                       size: int | None = None, fingerprint: str = "") -> LatentPreview:
    """Ridge least-squares fit of rgb = W @ latent + b.

    Inputs are the VAE encoder's latents of the training clips; targets are the mean colours of the cells
    the VAE *decodes* from those latents, so the preview imitates the decoder (what the video will show).
    """
    from .models.vae_helpers import decode_chunk, encode_video

    if clips is None:
        size = size or min(int(vae.config.video_size), 128)
        clips = training_clips(clip_set, size - size % 16)
    pairs = []
    for clip in clips:
        z = encode_video(vae, clip, fps=fps).float()  # (1, C, T', h, w)
        pairs.append((z.cpu(), decode_chunk(vae, z.to(vae.dtype), fps=fps, out_device="cpu").numpy()))
    return fit_preview_map(pairs, fingerprint=fingerprint, clip_set=clip_set)


def fit_preview_map(pairs, *, fingerprint: str = "", clip_set: str = "mixed") -> LatentPreview:
    """Ridge fit over (latents (1, C, t, h, w), frames (4t, 8h, 8w, 3) uint8) pairs."""
    latents, targets = [], []
    for z, frames in pairs:
        c, t, h, w = z.shape[1:]
        latents.append(z[0].float().permute(1, 2, 3, 0).reshape(-1, c))  # (t*h*w, C)
        targets.append(_cell_colours(frames, t, h, w))
    x, y = torch.cat(latents).double(), torch.cat(targets).double()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    gram = design.T @ design + RIDGE * len(x) * torch.eye(design.shape[1], dtype=x.dtype)
    solution = torch.linalg.solve(gram, design.T @ y).float()  # (C + 1, 3)
    return LatentPreview(solution[:-1].T.contiguous(), solution[-1].contiguous(), fingerprint, clip_set)


def preview_for(vae, vae_folder: str | Path | None, *, fps: int = 24) -> LatentPreview:
    """The preview map of this VAE: shipped beside its weights, cached, or fitted now (and cached).

    A shipped map that no longer matches the weights (the VAE was retrained) is refitted on the clip set
    it names.
    """
    if vae_folder is None or not (Path(vae_folder) / WEIGHTS_FILE).is_file():
        return fit_latent_preview(vae, fps=fps)  # weights not on disk (built in memory): nothing to key by
    fingerprint = weights_fingerprint(vae_folder)
    clip_set = "mixed"
    for candidate in (Path(vae_folder) / PREVIEW_FILE, cache_folder() / "previews" / f"{fingerprint}.json"):
        if candidate.is_file():
            try:
                preview = LatentPreview.from_json(json.loads(candidate.read_text()))
            except (ValueError, KeyError, TypeError):
                continue
            if preview.fingerprint == fingerprint:
                return preview
            clip_set = preview.clip_set
    logger.info("fitting the latent preview map of %s on %s clips (once; cached)", vae_folder, clip_set)
    preview = fit_latent_preview(vae, clip_set=clip_set, fps=fps, fingerprint=fingerprint)
    try:
        preview.save(cache_folder() / "previews" / f"{fingerprint}.json")
    except OSError as err:  # a read-only home: previews still work, they are fitted again next time
        logger.warning("could not cache the preview map: %s", err)
    return preview
