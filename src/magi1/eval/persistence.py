"""Object persistence: do the objects a caption names stay on screen, one each, and nothing else appear?

A frame is segmented by colour: each pixel is given the nearest colour of a palette (the demo's six object
colours by default) when it is close enough to it, and every colour's pixels are split into 4-connected
components; a component counts as an object when it covers at least `min_area` of the frame. From the counts
per frame:

- presence of a named colour: the share of frames with at least one object of that colour;
- clean frames: the share of frames with no object of a colour the caption does not name, and no more objects
  of a named colour than the caption names (an object that splits or duplicates shows up here);
- the same two, restricted to the frames next to chunk boundaries, so a model that drops or duplicates
  objects when a new chunk starts is seen even when the other frames are fine.

Colours are what the demo's captions name and what a small model gets right first; shapes are not checked.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

MAX_COLOUR_DISTANCE = 70.0   # RGB distance (0..441) within which a pixel takes a palette colour
MIN_AREA_FRACTION = 0.004    # 16 pixels of a 64×64 frame: a quarter of the demo's smallest object
COUNT_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "both": 2, "pair": 2}


def demo_palette() -> dict[str, tuple[int, int, int]]:
    """The demo world's object colours (imported here, not at module load: train.synthetic imports eval)."""
    from ..train.synthetic import COLOURS

    return dict(COLOURS)


def colour_labels(frames: np.ndarray, palette: Mapping[str, tuple[int, int, int]],
                  max_distance: float = MAX_COLOUR_DISTANCE) -> np.ndarray:
    """uint8 (T, H, W, 3) → int8 (T, H, W): index into the palette's colours, −1 for no palette colour."""
    colours = np.asarray(list(palette.values()), np.float32)                       # (K, 3)
    pixels = np.asarray(frames, np.float32)
    distance = np.linalg.norm(pixels[..., None, :] - colours, axis=-1)              # (T, H, W, K)
    nearest = distance.argmin(axis=-1)
    return np.where(distance.min(axis=-1) <= max_distance, nearest, -1).astype(np.int8)


def component_areas(mask: np.ndarray) -> list[np.ndarray]:
    """bool (T, H, W) → per frame, the pixel counts of its 4-connected components (largest first).

    Labels spread by repeated 4-neighbour maximum until nothing changes (objects are small and convex,
    so this takes about as many rounds as an object is wide).
    """
    t, h, w = mask.shape
    labels = np.where(mask, np.arange(1, t * h * w + 1).reshape(t, h, w), 0)
    while True:
        spread = labels.copy()
        spread[:, 1:] = np.maximum(spread[:, 1:], labels[:, :-1])
        spread[:, :-1] = np.maximum(spread[:, :-1], labels[:, 1:])
        spread[:, :, 1:] = np.maximum(spread[:, :, 1:], labels[:, :, :-1])
        spread[:, :, :-1] = np.maximum(spread[:, :, :-1], labels[:, :, 1:])
        spread = np.where(mask, spread, 0)
        if np.array_equal(spread, labels):
            break
        labels = spread
    areas = []
    for frame in labels:
        counts = np.bincount(frame.ravel())[1:]
        areas.append(np.sort(counts[counts > 0])[::-1])
    return areas


def object_counts(frames: np.ndarray, palette: Mapping[str, tuple[int, int, int]] | None = None, *,
                  max_distance: float = MAX_COLOUR_DISTANCE,
                  min_area_fraction: float = MIN_AREA_FRACTION) -> list[Counter]:
    """Per frame, how many objects of each palette colour it shows (colours with none are left out)."""
    palette = dict(palette or demo_palette())
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    min_area = min_area_fraction * frames.shape[1] * frames.shape[2]
    labels = colour_labels(frames, palette, max_distance)
    counts = [Counter() for _ in range(len(frames))]
    for index, name in enumerate(palette):
        for frame, areas in enumerate(component_areas(labels == index)):
            found = int((areas >= min_area).sum())
            if found:
                counts[frame][name] = found
    return counts


def named_colours(caption: str, palette: Iterable[str] | None = None) -> Counter:
    """Colour → number of objects of that colour a caption names.

    "a red ball and two blue squares" → {red: 1, blue: 2}; a colour named again later ("the red ball hits the
    blue square") does not add objects. Colours written without a count ("red and blue balls") count one each.
    """
    names = list(palette or demo_palette())
    words = re.findall(r"[a-z]+", caption.lower())
    found: Counter = Counter()
    for i, word in enumerate(words):
        if word not in names or (i and words[i - 1] == "the"):
            continue
        count = COUNT_WORDS.get(words[i - 1], 1) if i else 1
        found[word] = max(found[word], count)
    return found


@dataclass
class PersistenceReport:
    named: dict[str, int]                      # colour → objects named
    presence: dict[str, float]                 # colour → share of frames with at least one such object
    clean: float                               # share of frames with nothing unnamed and no duplicates
    boundary_presence: dict[str, float] = field(default_factory=dict)  # the same near chunk boundaries
    boundary_clean: float = float("nan")
    frames: int = 0
    extras: Counter = field(default_factory=Counter)   # colour → frames where it appeared unnamed / too often

    def passes(self, threshold: float = 0.95) -> bool:
        return all(v >= threshold for v in self.presence.values()) and self.clean >= threshold

    def __str__(self) -> str:
        present = ", ".join(f"{c} {v:.0%}" for c, v in self.presence.items()) or "nothing named"
        near = ", ".join(f"{c} {v:.0%}" for c, v in self.boundary_presence.items())
        extra = ", ".join(f"{c} in {n}" for c, n in self.extras.most_common()) or "none"
        boundaries = ("none in this video" if np.isnan(self.boundary_clean)
                      else f"{near or '-'}, clean {self.boundary_clean:.0%}")
        return (f"present: {present}; clean frames {self.clean:.0%}; near chunk boundaries: {boundaries}; "
                f"extra objects: {extra} (of {self.frames} frames)")


def persistence(frames: np.ndarray, caption: str | Mapping[str, int], *, chunk_frames: int | None = 24,
                first_chunk_start: int = 0, boundary_margin: int = 2, palette: Mapping[str, tuple[int, int, int]] | None = None,
                **count_options) -> PersistenceReport:
    """The persistence report of one video against the objects its caption names.

    caption: the prompt (its colours are read with `named_colours`) or a colour → count mapping.
    chunk_frames: pixel frames per chunk (24 for the demo); frames within `boundary_margin` of a multiple of it
    are the "near a chunk boundary" frames. None: no boundary figures. first_chunk_start: the frame where a
    chunk starts (0 for t2v; a v2v continuation starts inside the chunk that holds the prefix's end).
    """
    palette = dict(palette or demo_palette())
    named = dict(named_colours(caption, palette) if isinstance(caption, str) else caption)
    counts = object_counts(frames, palette, **count_options)
    present = np.array([[c.get(colour, 0) >= 1 for colour in named] for c in counts], bool).reshape(len(counts), -1)
    extras: Counter = Counter()
    clean = np.ones(len(counts), bool)
    for frame, c in enumerate(counts):
        for colour, n in c.items():
            if n > named.get(colour, 0):
                extras[colour] += 1
                clean[frame] = False
    report = PersistenceReport(named=named, presence={col: float(present[:, k].mean()) for k, col in enumerate(named)},
                               clean=float(clean.mean()), frames=len(counts), extras=extras)
    if chunk_frames:
        index = np.arange(len(counts))
        offset = (index - first_chunk_start) % chunk_frames
        inside = (index >= boundary_margin) & (index < len(counts) - boundary_margin)  # the ends are no boundary
        near = inside & (
            (offset < boundary_margin) | (offset >= chunk_frames - boundary_margin))
        if near.any():
            report.boundary_presence = {col: float(present[near, k].mean()) for k, col in enumerate(named)}
            report.boundary_clean = float(clean[near].mean())
    return report
