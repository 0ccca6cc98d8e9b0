"""VAE latents and T5 embeddings of a training folder, computed once and kept on disk.

    CACHE/latents/<key>.safetensors   one whole-chunk segment of one video (or one image): its scaled latents
                                      (16, T, h, w), the latent of its first frame as an image (16, 1, h, w),
                                      and in the metadata its caption, source file, bucket and frames
    CACHE/text/t5-<key>.safetensors   T5 embeddings of one caption (T5TextEncoder's own disk cache)

A key hashes everything the result depends on (the file's path, size and modification time, the bucket, the
segment, the fps, the VAE's or T5's files), so an edited clip or another model is encoded again and everything
else is read back. The VAE and T5 are loaded only when something is missing, one after the other, and freed
before the DiT loads: they never sit beside the DiT while it trains.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..train.data import LatentClips
from .buckets import Bucket, Segment, bucket_sizes, nearest_bucket, whole_chunk_segments
from .dataset import DatasetScan, MediaItem

logger = logging.getLogger(__name__)

VAE_SPATIAL_FACTOR = 8  # the official VAE (and the demo's) downsample 8x in space


@dataclass(frozen=True)
class CacheLayout:
    """How the folder's items become training latents (fixed per run; part of every key)."""

    height: int                  # training resolution: buckets have about this area
    width: int
    fps: int
    chunk_frames: int            # frames of one chunk at fps (chunk_width x temporal downsample)
    clip_chunks: int             # chunks per segment at most
    max_segments: int | None     # segments per video at most (None: the whole video)
    multiple: int = 16           # bucket sides are multiples of this (VAE factor x patch size)
    max_aspect: float = 2.0

    def buckets(self) -> list[Bucket]:
        return bucket_sizes(self.height, self.width, multiple=self.multiple, max_aspect=self.max_aspect)


@dataclass(frozen=True)
class PlannedSegment:
    item: MediaItem
    bucket: Bucket
    segment: Segment | None      # None for an image
    chunk_frames: int            # frames per chunk at the training fps
    key: str

    @property
    def num_frames(self) -> int:
        """Frames this segment encodes (an image: 1)."""
        return 1 if self.segment is None else self.segment.num_frames(self.chunk_frames)


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def model_files_identity(folder: str | Path) -> str:
    """The weights and config files of a model folder (names, sizes, times): changes when the model does."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin", ".zst")
                                                                     or p.name == "config.json"))
    return f"{folder.resolve()}|" + "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def plan_segments(scan: DatasetScan, layout: CacheLayout, vae_identity: str) -> list[PlannedSegment]:
    """Every training segment of the scanned items, with the key of its cache file."""
    buckets = layout.buckets()
    planned = []
    for item in scan.items:
        bucket = nearest_bucket(item.height, item.width, buckets)
        pieces = [None] if item.kind == "image" else whole_chunk_segments(
            item.num_frames, layout.chunk_frames, layout.clip_chunks, layout.max_segments)
        for piece in pieces:
            identity = {"file": _file_identity(item.path), "bucket": [bucket.height, bucket.width], "fps": layout.fps,
                        "segment": None if piece is None else [piece.start_frame, piece.chunks, layout.chunk_frames],
                        "vae": vae_identity, "caption": item.caption}
            key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
            planned.append(PlannedSegment(item, bucket, piece, layout.chunk_frames, key))
    return planned


@dataclass
class CacheReport:
    latents_reused: int = 0
    latents_encoded: int = 0
    texts_reused: int = 0
    texts_encoded: int = 0
    vae_loaded: bool = False
    t5_loaded: bool = False

    def summary(self) -> str:
        loaded = [name for name, flag in (("the VAE", self.vae_loaded), ("T5", self.t5_loaded)) if flag]
        return (f"cache: {self.latents_reused} segment latents reused, {self.latents_encoded} encoded; "
                f"{self.texts_reused} caption embeddings reused, {self.texts_encoded} encoded; "
                + (f"loaded {' and '.join(loaded)} for it, now freed" if loaded else "the VAE and T5 were not loaded"))


class TrainingCache:
    """The cache folder of one training run (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.latent_dir = self.folder / "latents"
        self.text_dir = self.folder / "text"

    def latent_path(self, planned: PlannedSegment) -> Path:
        return self.latent_dir / f"{planned.key}.safetensors"

    # ------------------------------------------------------------------ building
    def build(self, planned: list[PlannedSegment], captions: list[str], *, load_vae: Callable, make_text_encoder:
              Callable, fps: int, progress: bool = True) -> CacheReport:
        """Encode what is missing: latents of `planned` segments, T5 embeddings of `captions`.

        load_vae() -> ViTVAE and make_text_encoder(cache_dir) -> T5TextEncoder are called only when needed;
        each model is freed before the next one loads.
        """
        report = CacheReport()
        missing = [p for p in planned if not self.latent_path(p).is_file()]
        report.latents_reused = len(planned) - len(missing)
        if missing:
            vae = load_vae()
            report.vae_loaded = True
            try:
                self._encode_latents(vae, missing, fps=fps, progress=progress)
            finally:
                del vae
                free_memory()
            report.latents_encoded = len(missing)
        text = make_text_encoder(self.text_dir)
        unique = list(dict.fromkeys(captions))
        todo = [c for c in unique if not text.disk_cache_path(c).is_file()]
        report.texts_reused = len(unique) - len(todo)
        if todo:
            report.t5_loaded = True
            try:
                for caption in tqdm(todo, desc="encode captions", disable=not progress):
                    text.encode(caption)
            finally:
                text.unload()
                free_memory()
            report.texts_encoded = len(todo)
        return report

    def _encode_latents(self, vae, missing: list[PlannedSegment], *, fps: int, progress: bool) -> None:
        from ..io.image import load_image
        from ..io.video import load_video
        from ..models.vae_helpers import encode_image, encode_video

        self.latent_dir.mkdir(parents=True, exist_ok=True)
        by_file: dict[tuple, list[PlannedSegment]] = {}
        for p in missing:
            by_file.setdefault((p.item.path, p.bucket), []).append(p)
        bar = tqdm(total=len(missing), desc="encode clips", disable=not progress)
        for (path, bucket), pieces in by_file.items():
            if pieces[0].segment is None:  # an image: one latent frame, which is also its "first frame"
                image = load_image(path, bucket.height, bucket.width, keep_aspect=True)
                latent = encode_image(vae, image, fps=fps).float().cpu()[0]
                self._write(pieces[0], latent, latent.clone())  # safetensors refuses two names for one tensor
                bar.update(1)
                continue
            end = max(p.segment.start_frame + p.num_frames for p in pieces)
            frames = load_video(path, bucket.height, bucket.width, fps, max_frames=end, keep_aspect=True)
            for p in pieces:
                clip = frames[p.segment.start_frame : p.segment.start_frame + p.num_frames]
                if clip.shape[0] < p.num_frames:  # the container's duration was rounded up: repeat the last frame
                    clip = np.concatenate([clip, np.repeat(clip[-1:], p.num_frames - clip.shape[0], axis=0)])
                latent = encode_video(vae, clip, fps=fps).float().cpu()[0]     # (16, T, h, w)
                image = encode_image(vae, clip[0], fps=fps).float().cpu()[0]   # (16, 1, h, w)
                self._write(p, latent, image)
                bar.update(1)
        bar.close()

    def _write(self, planned: PlannedSegment, latent: torch.Tensor, image: torch.Tensor) -> None:
        meta = {"caption": planned.item.caption, "source": str(planned.item.path), "kind": planned.item.kind,
                "bucket": f"{planned.bucket.height}x{planned.bucket.width}"}
        if planned.segment is not None:
            meta["start_frame"] = str(planned.segment.start_frame)
            meta["chunks"] = str(planned.segment.chunks)
        path = self.latent_path(planned)
        tmp = path.with_name(path.name + ".partial")
        save_file({"latents": latent.contiguous(), "image_latent": image.contiguous()}, str(tmp), metadata=meta)
        tmp.replace(path)  # atomic: a killed run never leaves half a file under the final name

    # ------------------------------------------------------------------ reading
    def load_groups(self, planned: list[PlannedSegment]) -> list[LatentClips]:
        """The cached segments, stacked by shape (bucket and latent frames): one LatentClips per group."""
        groups: dict[tuple, tuple[list, list, list]] = {}
        for p in planned:
            with safe_open(str(self.latent_path(p)), framework="pt") as handle:
                latent, image = handle.get_tensor("latents"), handle.get_tensor("image_latent")
            key = tuple(latent.shape)
            lat, img, cap = groups.setdefault(key, ([], [], []))
            lat.append(latent)
            img.append(image)
            cap.append(p.item.caption)
        return [LatentClips(torch.stack(lat), cap, torch.stack(img), meta={"shape": list(key)})
                for key, (lat, img, cap) in sorted(groups.items())]


def free_memory() -> None:
    """Give freed model memory back (host and accelerator caches) before the next model loads."""
    from ..runtime import release_accelerator_cache

    gc.collect()
    release_accelerator_cache()
