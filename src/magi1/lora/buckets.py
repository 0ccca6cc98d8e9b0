"""Size buckets and whole-chunk segments: how each video or image becomes fixed-shape training latents.

Buckets: sizes of about the same area as the training resolution, sides multiples of `multiple` (16 for MAGI-1:
the VAE's 8x spatial downsampling times the 2x2 patches), aspect ratios up to `max_aspect`. Each item goes to
the bucket nearest its aspect ratio (in log ratio), is scaled to cover it and centre-cropped (no stretching).
Items of one bucket stack into one batch.

Segments: a video is cut into consecutive pieces of at most `clip_chunks` whole chunks (chunk = chunk_width
latent frames = chunk_width x temporal_downsample frames, 24 for MAGI-1); a tail shorter than one chunk is
left out. Each piece trains as its own clip (crops of R <= its chunks are drawn from it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Bucket:
    height: int
    width: int

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def bucket_sizes(height: int, width: int, *, multiple: int = 16, max_aspect: float = 2.0) -> list[Bucket]:
    """Sizes with about the area height x width, sides multiples of `multiple`, aspect within 1/max_aspect..max."""
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise ValueError(f"the training size {width}x{height} must have sides that are positive multiples of "
                         f"{multiple}")
    area = height * width
    sizes = {Bucket(height, width)}
    w = multiple
    while w <= int(math.sqrt(area * max_aspect)) + multiple:
        h = (area // w) // multiple * multiple
        if h >= multiple and 1 / max_aspect - 1e-9 <= w / h <= max_aspect + 1e-9:
            sizes.add(Bucket(h, w))
        w += multiple
    return sorted(sizes, key=lambda b: b.aspect)


def nearest_bucket(height: int, width: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest (log scale) to height x width; ties: the larger area."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b.aspect) - ratio), -b.height * b.width))


@dataclass(frozen=True)
class Segment:
    start_frame: int          # first frame at the training fps
    chunks: int               # whole chunks in this piece

    def num_frames(self, chunk_frames: int) -> int:
        return self.chunks * chunk_frames


def whole_chunk_segments(num_frames: int, chunk_frames: int, clip_chunks: int,
                         max_segments: int | None = None) -> list[Segment]:
    """Consecutive pieces of at most `clip_chunks` chunks covering the whole chunks of a `num_frames` clip."""
    if chunk_frames < 1 or clip_chunks < 1:
        raise ValueError("chunk_frames and clip_chunks must be >= 1")
    total = num_frames // chunk_frames
    pieces, start = [], 0
    while total > 0 and (max_segments is None or len(pieces) < max_segments):
        chunks = min(clip_chunks, total)
        pieces.append(Segment(start * chunk_frames, chunks))
        start += chunks
        total -= chunks
    return pieces
