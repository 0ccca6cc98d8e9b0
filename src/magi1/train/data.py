"""Training data: pixel clips for the VAE, and a cache of VAE latents for the DiT.

A clip source is anything indexable that returns (frames uint8 (T, H, W, 3), caption str); the demo uses
`magi1.train.synthetic.SyntheticPhysicsDataset`. The DiT never sees pixels: clips are encoded once with the
trained VAE, through the same helpers inference uses (posterior mean × scale factor, the official tiling),
and cached in one safetensors file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm


def clip_at(source, index: int) -> tuple[np.ndarray, str]:
    """(frames (T, H, W, 3) uint8, caption) of one item, whichever of the usual shapes the source returns."""
    item = source[index]
    if isinstance(item, tuple):
        return np.asarray(item[0]), str(item[1])
    if isinstance(item, dict):
        return np.asarray(item["frames"]), str(item["caption"])
    return np.asarray(item.frames), str(item.caption)


def to_unit_range(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) → float32 (3, T, H, W) in [-1, 1], the VAE's input convention."""
    x = torch.as_tensor(np.asarray(frames))
    return x.permute(3, 0, 1, 2).float() / 127.5 - 1.0


class PixelClips:
    """Random crops of pixel clips for VAE training, held in memory as uint8."""

    def __init__(self, frames: Sequence[np.ndarray]) -> None:
        self.frames = [np.ascontiguousarray(f) for f in frames]

    @classmethod
    def from_source(cls, source, count: int | None = None, progress: bool = True) -> "PixelClips":
        count = len(source) if count is None else min(count, len(source))
        items = [clip_at(source, i)[0] for i in tqdm(range(count), desc="clips", disable=not progress)]
        return cls(items)

    def sample(self, size: int, num_frames: int, generator: torch.Generator) -> torch.Tensor:
        """(size, 3, num_frames, H, W) float32 in [-1, 1]; a 1-frame request repeats the frame 4×, as the
        official encoder does for images (so the VAE learns the image path too)."""
        out = []
        for _ in range(size):
            clip = self.frames[int(torch.randint(len(self.frames), (1,), generator=generator))]
            if num_frames == 1:
                start = int(torch.randint(clip.shape[0], (1,), generator=generator))
                piece = np.repeat(clip[start : start + 1], 4, axis=0)
            else:
                start = int(torch.randint(clip.shape[0] - num_frames + 1, (1,), generator=generator))
                piece = clip[start : start + num_frames]
            out.append(to_unit_range(piece))
        return torch.stack(out)


@dataclass
class LatentCrop:
    latents: torch.Tensor                 # (B, C, T, h, w) scaled latents
    image_latents: torch.Tensor | None    # (B, C, 1, h, w): latent of the clip's first frame as an image
    captions: list[str]
    starts: list[int]                     # latent frame where each crop begins


class LatentClips:
    """Scaled VAE latents of whole clips, with each clip's caption and first-frame image latent.

    `caption_choices` (optional): several wordings per clip; a sample then takes one of them at random
    (`captions` stays the canonical one, e.g. for a tokenizer or a log).
    """

    def __init__(self, latents: torch.Tensor, captions: list[str], image_latents: torch.Tensor | None = None,
                 meta: dict | None = None, caption_choices: list[list[str]] | None = None) -> None:
        if latents.ndim != 5 or latents.shape[0] != len(captions):
            raise ValueError(f"latents must be (N, C, T, h, w) with one caption each, got {tuple(latents.shape)}")
        if caption_choices is not None and (len(caption_choices) != len(captions) or not all(caption_choices)):
            raise ValueError("caption_choices needs a non-empty list of captions for every clip")
        self.latents = latents.float()
        self.captions = list(captions)
        self.caption_choices = None if caption_choices is None else [list(c) for c in caption_choices]
        self.image_latents = None if image_latents is None else image_latents.float()
        self.meta = dict(meta or {})

    def all_captions(self) -> list[str]:
        """Every caption a sample can get (the canonical ones and all choices)."""
        return self.captions + [c for choices in self.caption_choices or [] for c in choices]

    def caption_for(self, index: int, generator: torch.Generator) -> str:
        if self.caption_choices is None:
            return self.captions[index]
        choices = self.caption_choices[index]
        return choices[int(torch.randint(len(choices), (1,), generator=generator))]

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def num_frames(self) -> int:
        return self.latents.shape[2]

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.latents.shape[3], self.latents.shape[4]

    def sample(self, size: int, num_frames: int, generator: torch.Generator, *, start_prob: float = 0.5,
               force_start: Sequence[bool] | None = None) -> LatentCrop:
        """`size` random crops of `num_frames` latent frames.

        A crop starts at the clip's first frame with probability `start_prob` (or always where `force_start`
        says so), else anywhere: openings matter for t2v, the middle of clips for continuation.
        """
        if num_frames > self.num_frames:
            raise ValueError(f"asked for {num_frames} latent frames, clips have {self.num_frames}")
        crops, images, captions, starts = [], [], [], []
        for i in range(size):
            index = int(torch.randint(len(self), (1,), generator=generator))
            from_start = float(torch.rand((), generator=generator)) < start_prob
            if force_start is not None and force_start[i]:
                from_start = True
            start = 0 if from_start else int(torch.randint(self.num_frames - num_frames + 1, (1,), generator=generator))
            crops.append(self.latents[index, :, start : start + num_frames])
            if self.image_latents is not None and start == 0:
                images.append(self.image_latents[index])
            else:  # only i2v samples read it, and those always start at frame 0
                images.append(self.latents[index, :, start : start + 1])
            captions.append(self.caption_for(index, generator))
            starts.append(start)
        return LatentCrop(torch.stack(crops), torch.stack(images), captions, starts)

    # ------------------------------------------------------------------ cache file
    def save(self, path: str | Path) -> None:
        tensors = {"latents": self.latents.contiguous()}
        if self.image_latents is not None:
            tensors["image_latents"] = self.image_latents.contiguous()
        metadata = {"captions": json.dumps(self.captions), "meta": json.dumps(self.meta)}
        if self.caption_choices is not None:
            metadata["caption_choices"] = json.dumps(self.caption_choices)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "LatentClips":
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            latents = handle.get_tensor("latents")
            image = handle.get_tensor("image_latents") if "image_latents" in handle.keys() else None
        choices = json.loads(metadata["caption_choices"]) if "caption_choices" in metadata else None
        return cls(latents, json.loads(metadata["captions"]), image, json.loads(metadata.get("meta", "{}")), choices)


def build_latent_cache(source, encode_videos: Callable[[list[np.ndarray]], torch.Tensor],
                       encode_images: Callable[[list[np.ndarray]], torch.Tensor], *, count: int | None = None,
                       batch_size: int = 16, progress: bool = True, meta: dict | None = None) -> LatentClips:
    """Encode every clip (and its first frame as an image) with inference-equivalent encoders.

    encode_videos: [uint8 (T, H, W, 3)] → (B, C, T/4, h, w) scaled latents; encode_images: [uint8 (H, W, 3)]
    → (B, C, 1, h, w). Clips must all have the same length.
    """
    count = len(source) if count is None else min(count, len(source))
    latents, images, captions = [], [], []
    for first in tqdm(range(0, count, batch_size), desc="encode clips", disable=not progress):
        items = [clip_at(source, i) for i in range(first, min(first + batch_size, count))]
        frames = [f for f, _ in items]
        with torch.no_grad():
            latents.append(encode_videos(frames).float().cpu())
            images.append(encode_images([f[0] for f in frames]).float().cpu())
        captions += [c for _, c in items]
    return LatentClips(torch.cat(latents), captions, torch.cat(images), meta)


class VideoFolder:
    """Your own clips: every `*.mp4` under a folder with a caption in the `.txt` file of the same name.

    Clips are read at `fps`, resized to height × width (official stretch) and cut to their first
    `num_frames` frames; clips shorter than that are skipped (listed in `skipped`).
    """

    def __init__(self, root: str | Path, *, height: int, width: int, fps: int, num_frames: int) -> None:
        from ..io.video import probe_video

        self.root = Path(root)
        self.height, self.width, self.fps, self.num_frames = height, width, fps, num_frames
        self.paths: list[Path] = []
        self.skipped: list[str] = []
        for path in sorted(self.root.rglob("*.mp4")):
            caption = path.with_suffix(".txt")
            if not caption.is_file():
                self.skipped.append(f"{path} (no {caption.name})")
                continue
            info = probe_video(path)
            duration_s = info.num_frames / info.fps if info.fps else 0.0
            if duration_s * fps + 1e-6 < num_frames:
                self.skipped.append(f"{path} (shorter than {num_frames} frames at {fps} fps)")
                continue
            self.paths.append(path)
        if not self.paths:
            raise ValueError(f"no usable clips under {self.root}: need *.mp4 with a same-name .txt caption, "
                             f"at least {num_frames} frames at {fps} fps")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        from ..io.video import load_video

        path = self.paths[index]
        frames = load_video(path, self.height, self.width, self.fps, max_frames=self.num_frames)
        if frames.shape[0] < self.num_frames:  # rounding in the container's duration
            frames = np.concatenate([frames, np.repeat(frames[-1:], self.num_frames - frames.shape[0], 0)])
        return frames, path.with_suffix(".txt").read_text().strip()
