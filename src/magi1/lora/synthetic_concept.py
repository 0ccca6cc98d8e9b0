"""A training folder of something the demo model never saw: synthetic physics clips with a new colour.

The demo model learnt six colours (train.synthetic.COLOURS). These clips are the same generator's scenes with
one object repainted in a colour outside that set (cyan by default), captioned by the same describer, so a
LoRA has to learn just the new word's look. Written in the musubi-tuner / diffusion-pipe layout:
`clip_0000.mp4` + `clip_0000.txt`, ...

`colour_fraction` is the pixel statistic that tells whether a video shows the colour.
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
