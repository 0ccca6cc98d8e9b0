"""A training folder of something the demo model never saw: synthetic physics clips with a new colour.

The demo model learnt six colours (train.synthetic.COLOURS). These clips are the same generator's scenes with
one object repainted in a colour outside that set (cyan by default), captioned by the same describer, so a
LoRA has to learn just the new word's look. Written in the musubi-tuner / diffusion-pipe layout:
`clip_0000.mp4` + `clip_0000.txt`, ...

`hue_fraction` is the pixel statistic that tells whether a video shows the colour: the share of saturated
pixels of its hue. `colour_fraction` (RGB distance to the exact colour) is stricter: a small model's blurry,
lighter rendering of a colour has the hue but not the RGB values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..train.synthetic import COLOURS, SceneConfig, SceneObject, describe, render_frames, sample_scene, simulate

NEW_COLOURS: dict[str, tuple[int, int, int]] = {"cyan": (20, 215, 225), "pink": (250, 120, 190)}


@dataclass(frozen=True)
class RepaintedObject(SceneObject):
    """A scene object in a colour the generator's palette lacks (SceneObject reads its RGB from COLOURS)."""

    paint: tuple[int, int, int] = (0, 0, 0)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return self.paint


def concept_clip(seed: int, colour: str = "cyan", config: SceneConfig = SceneConfig()):
    """(frames uint8 (T, H, W, 3), caption) of scene `seed` with its first object repainted in `colour`."""
    scene = sample_scene(seed, config)
    first = scene.objects[0]
    repainted = RepaintedObject(first.shape, colour, first.size, paint=NEW_COLOURS[colour])
    scene = replace(scene, objects=(repainted,) + scene.objects[1:])
    positions, velocities, events = simulate(scene, config, seed=seed)
    frames = render_frames(scene.objects, positions, config.height, config.width, scene.background)
    return frames, describe(scene.objects, positions, velocities, events, config)


def write_concept_folder(folder: str | Path, count: int, *, colour: str = "cyan", first_seed: int = 500_000,
                         config: SceneConfig = SceneConfig(), fps: int = 24) -> list[str]:
    """Write `count` clips + captions into `folder`; returns the captions."""
    from ..io.video import write_video

    if colour in COLOURS:
        raise ValueError(f"{colour} is one of the demo's own colours; pick a new one ({', '.join(NEW_COLOURS)})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    for index in range(count):
        frames, caption = concept_clip(first_seed + index, colour, config)
        write_video(folder / f"clip_{index:04d}.mp4", frames, fps, crf=10)
        (folder / f"clip_{index:04d}.txt").write_text(caption + "\n")
        captions.append(caption)
    return captions


def colour_fraction(frames: np.ndarray, colour: str = "cyan", tolerance: float = 60.0) -> float:
    """Share of pixels within `tolerance` (RGB distance) of `colour`: frames uint8 (..., 3)."""
    target = np.asarray(NEW_COLOURS.get(colour, COLOURS.get(colour)), np.float32)
    distance = np.linalg.norm(frames.astype(np.float32) - target, axis=-1)
    return float((distance < tolerance).mean())


def _hue_degrees(rgb: tuple[int, int, int]) -> float:
    import colorsys

    return 360.0 * colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0]


def hue_fraction(frames: np.ndarray, colour: str = "cyan", *, window: float = 15.0, min_saturation: float = 0.3,
                 min_value: float = 0.3) -> float:
    """Share of pixels whose hue is within `window` degrees of `colour`'s, saturated and bright enough to
    have a hue at all (the grey backgrounds have none): frames uint8 (..., 3).

    The window is narrower than the gaps between the demo palette's hues (cyan 183 deg, blue 224, green 127),
    so the demo's own colours do not count for the new one.
    """
    rgb = frames.astype(np.float32) / 255.0
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    span = high - low
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(span > 0, span, 1.0)
    # the HSV hue sextant formula, vectorised: which channel is largest decides the offset
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = 60.0 * hue
    saturation = np.where(high > 0, span / np.where(high > 0, high, 1.0), 0.0)
    target = _hue_degrees(NEW_COLOURS.get(colour, COLOURS.get(colour)))
    distance = np.abs((hue - target + 180.0) % 360.0 - 180.0)
    hit = (distance <= window) & (saturation >= min_saturation) & (high >= min_value)
    return float(hit.mean())
