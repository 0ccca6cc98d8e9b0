"""How many chunks a run generates, known before any weights load (story mode plans one caption per chunk)."""

from __future__ import annotations

from pathlib import Path


def generated_chunk_count(config, mode: str, video: str | Path | None = None) -> int:
    """Generated chunks of a run with this config: t2v from num_frames; i2v adds the image frame; v2v the prefix."""
    from ..models.vae_tiling import TileSettings, encoded_frame_count
    from ..sampling.sampler import chunk_counts

    r = config.runtime_config
    prefix_latents = 0
    if mode == "i2v":
        prefix_latents = 1
    elif mode == "v2v":
        from .media import prefix_frames

        if video is None:
            raise ValueError("a v2v run's chunk count depends on its video")
        frames = len(prefix_frames(video, fps=r.fps))
        prefix_latents = encoded_frame_count(frames, TileSettings.for_fps(r.fps), r.temporal_downsample_factor)
    total, clean = chunk_counts(r.num_frames, prefix_latents, r.chunk_width, r.temporal_downsample_factor)
    return total - clean


def seconds_per_chunk(config) -> float:
    r = config.runtime_config
    return r.chunk_width * r.temporal_downsample_factor / r.fps
