"""Temporal smoothness: does the picture change evenly, or in steps of one latent frame?

MAGI-1's VAE packs 4 pixel frames into each latent frame. A decoder that cannot place motion inside those 4
frames paints nearly the same frame 4 times and then jumps, which shows as a large change across every
4-frame group boundary and a small one inside groups. The ratio of the two is about 1.0 for real footage;
`group_boundary_ratio` measures it over one video or many (pooled, so still videos do not divide by zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

LATENT_FRAME_GROUP = 4  # pixel frames per latent frame (the VAE's temporal patch)


@dataclass(frozen=True)
class SmoothnessReport:
    boundary_change: float   # mean absolute frame difference across group boundaries (uint8 grey levels)
    within_change: float     # the same inside groups
    boundary_pairs: int
    within_pairs: int

    @property
    def ratio(self) -> float:
        """boundary / within; inf when nothing changes inside groups but something does across them."""
        if self.within_change == 0:
            return float("inf") if self.boundary_change > 0 else 1.0
        return self.boundary_change / self.within_change

    def __str__(self) -> str:
        return (f"boundary {self.boundary_change:.3f} / within {self.within_change:.3f} = ratio {self.ratio:.2f} "
                f"({self.boundary_pairs} + {self.within_pairs} frame pairs)")


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) → float64 (T-1,): mean |frame[t+1] − frame[t]| over pixels and channels."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    return np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3), dtype=np.float64)


def group_boundary_ratio(videos: np.ndarray | Iterable[np.ndarray], group: int = LATENT_FRAME_GROUP,
                         first_group_start: int = 0) -> SmoothnessReport:
    """Change across group boundaries vs inside groups, pooled over one video (T, H, W, 3) or a list of them.

    Groups start at frame `first_group_start` (0 for a decoded video; the pair between frames 4k+3 and 4k+4
    crosses a boundary). Every frame pair counts once, so a long video weighs more than a short one.
    """
    if isinstance(videos, np.ndarray) and videos.ndim == 4:
        videos = [videos]
    sums = np.zeros(2)
    counts = np.zeros(2, dtype=np.int64)
    for video in videos:
        changes = frame_changes(video)
        crosses = (np.arange(len(changes)) + 1 - first_group_start) % group == 0
        sums += changes[crosses].sum(), changes[~crosses].sum()
        counts += int(crosses.sum()), int((~crosses).sum())
    if counts.min() == 0:
        raise ValueError(f"need videos of at least {group + 1} frames to compare boundary and in-group changes")
    return SmoothnessReport(float(sums[0] / counts[0]), float(sums[1] / counts[1]), int(counts[0]), int(counts[1]))
