"""Physics-IQ on disk: the benchmark's folder layout and file names, and scoring a folder of generations.

Layout of a benchmark root (the real dataset's, and what `magi1.train.synthetic` writes):

    split-videos/testing/{fps}FPS/{ID}_testing-videos_{fps}FPS_{perspective}_take-{k}_{scenario}.mp4
    split-videos/conditioning/{fps}FPS/{ID}_conditioning-videos_{fps}FPS_{perspective}_take-{k}_{scenario}.mp4
    switch-frames/{ID}_switch-frames_anyFPS_{perspective}_take-{k}_{scenario}.jpg
    descriptions/descriptions.csv          columns: scenario ({ID}_{perspective}_take-{k}_{scenario}.mp4), description

IDs are 4 digits and differ between takes; scenario names contain no underscores. A model submits
one video per take-1 ID, named `{ID}_{anything}.mp4`, holding only the predicted seconds.

Scoring reads the testing videos by name wherever they sit under the root, computes the motion masks
itself (exactly, without the official lossy mp4v mask files) and aggregates with `physics_iq_score`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np

from magi1.eval.physics import (
    SECONDS_EVALUATED,
    PhysicsIQScore,
    ViewMetrics,
    evaluate_view,
    physics_iq_score,
    scenario_summary,
)

PERSPECTIVES = ("perspective-left", "perspective-center", "perspective-right")
SOURCE_FPS = 30  # the recordings; other frame rates are derived from these

_NAME = re.compile(
    r"^(?P<id>\d{4})_(?P<kind>[a-z-]+)_(?P<fps>\w+?)FPS_(?P<perspective>[a-z-]+)"
    r"_take-(?P<take>\d+)_(?P<scenario>[^_]+)\.\w+$"
)


# ------------------------------------------------------------------------------------------ file names


@dataclass(frozen=True)
class BenchmarkFile:
    """The fields encoded in a benchmark file name."""

    video_id: str      # "0001"
    kind: str          # "testing-videos", "conditioning-videos", "video-masks", "switch-frames"
    fps: str           # "24", or "any" for switch frames
    perspective: str
    take: int
    scenario: str      # includes no extension


def benchmark_file_name(video_id: int | str, kind: str, fps: int | str, perspective: str, take: int,
                        scenario: str, extension: str = "mp4") -> str:
    """(1, "testing-videos", 24, "perspective-left", 1, "ball-drop")
    → "0001_testing-videos_24FPS_perspective-left_take-1_ball-drop.mp4"."""
    if "_" in scenario:
        raise ValueError(f"scenario names may not contain underscores: {scenario!r}")
    return f"{int(video_id):04d}_{kind}_{fps}FPS_{perspective}_take-{take}_{scenario}.{extension}"


def description_key(video_id: int | str, perspective: str, take: int, scenario: str) -> str:
    """The `scenario` column of descriptions.csv for one real video."""
    return f"{int(video_id):04d}_{perspective}_take-{take}_{scenario}.mp4"


def parse_benchmark_file_name(name: str) -> BenchmarkFile | None:
    """Fields of a benchmark file name, or None when the name does not follow the layout."""
    match = _NAME.match(Path(name).name)
    if match is None:
        return None
    return BenchmarkFile(match["id"], match["kind"], match["fps"], match["perspective"], int(match["take"]),
                         match["scenario"])


def testing_videos_dir(root: str | Path, fps: int) -> Path:
    return Path(root) / "split-videos" / "testing" / f"{fps}FPS"


def conditioning_videos_dir(root: str | Path, fps: int) -> Path:
    return Path(root) / "split-videos" / "conditioning" / f"{fps}FPS"


def switch_frames_dir(root: str | Path) -> Path:
    return Path(root) / "switch-frames"


def descriptions_path(root: str | Path) -> Path:
    return Path(root) / "descriptions" / "descriptions.csv"


# ------------------------------------------------------------------------------------------ video files


def read_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB: every decoded frame, in order, at the file's own size and rate."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    return np.stack(frames)


def video_fps(path: str | Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return float(rate)


def write_lossless_video(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """uint8 (T, H, W, 3) RGB → lossless H.264 in RGB (libx264rgb, qp 0): decodes back bit-exact.

    Benchmark files written by us must not blur the motion the metric measures; a normal yuv420p
    encode shifts grey levels by more than the mask threshold near edges.
    """
    frames = np.asarray(frames, np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def change_fps(frames: np.ndarray, fps: float, source_fps: float = SOURCE_FPS,
               seconds: float = SECONDS_EVALUATED) -> np.ndarray:
    """Real testing frames at another rate, derived as the official `fps_changer` derives them.

    From the first `seconds` of the source (N0 frames), output N1 = int(seconds·fps) frames; frame
    j blends source frames ⌊α⌋ and ⌊α⌋+1 with weight α − ⌊α⌋, α = j·(N0−1)/(N1−1), in float32,
    cast (truncated) to uint8. (The official tool then writes H.264; that lossy step is not repeated here.)
    """
    source = np.asarray(frames)[: int(seconds * source_fps)]
    count_in, count_out = len(source), int(seconds * fps)
    if count_out == 1 or count_in == 1:
        return source[:1].copy()
    out = np.empty((count_out,) + source.shape[1:], np.uint8)
    for j in range(count_out):
        alpha = j * (count_in - 1) / (count_out - 1)
        lower = int(math.floor(alpha))
        weight = np.float32(alpha - lower)
        upper = min(lower + 1, count_in - 1)
        blend = (np.float32(1.0) - weight) * source[lower].astype(np.float32) \
            + weight * source[upper].astype(np.float32)
        out[j] = blend.astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------- folder scoring


@dataclass
class RealView:
    scenario: str
    perspective: str
    takes: dict[int, Path]   # take number → testing video


def find_real_views(root: str | Path, fps: int) -> list[RealView]:
    """Every (scenario, perspective) with its real testing videos at `fps`, found by name under `root`."""
    views: dict[tuple[str, str], RealView] = {}
    for path in sorted(Path(root).rglob(f"*_testing-videos_{fps}FPS_*.mp4")):
        info = parse_benchmark_file_name(path.name)
        if info is None:
            continue
        key = (info.scenario, info.perspective)
        views.setdefault(key, RealView(info.scenario, info.perspective, {})).takes[info.take] = path
    return list(views.values())


def find_generated_videos(folder: str | Path) -> dict[str, Path]:
    """take-1 ID → the generated video `{ID}_*.mp4` in `folder` (exactly one per ID)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(folder).glob("*.mp4")):
        video_id = path.name[:4]
        if not (video_id.isdigit() and path.name[4:5] == "_"):
            raise ValueError(f"generated video {path.name} does not start with a 4-digit ID and '_'")
        if video_id in found:
            raise ValueError(f"two generated videos for ID {video_id}: {found[video_id].name}, {path.name}")
        found[video_id] = path
    return found


@dataclass
class FolderScore:
    score: PhysicsIQScore
    views: dict[str, dict[str, ViewMetrics]]     # scenario → perspective → metrics
    scenarios: dict[str, dict[str, float]]       # scenario → unrounded means over its views
    fps: int


def score_generated_folder(
    benchmark_root: str | Path,
    generated_folder: str | Path,
    fps: int | None = None,
    seconds: float = SECONDS_EVALUATED,
    scenarios: Iterable[str] | None = None,
) -> FolderScore:
    """Physics-IQ of the videos in `generated_folder` against the benchmark at `benchmark_root`.

    fps: the generated videos' rate (read from them when None; all must share it). When the real
    testing videos do not exist at that rate, they are derived from the 30 FPS ones (`change_fps`).
    Every take-1 view found must have a generated video; `scenarios` restricts the set scored.
    """
    root = Path(benchmark_root)
    generated = find_generated_videos(generated_folder)
    if not generated:
        raise FileNotFoundError(f"no generated .mp4 files in {generated_folder}")
    if fps is None:
        rates = {round(video_fps(p), 3) for p in generated.values()}
        if len(rates) != 1:
            raise ValueError(f"generated videos have different frame rates: {sorted(rates)}")
        fps = int(round(rates.pop()))
    wanted = None if scenarios is None else set(scenarios)

    views = find_real_views(root, fps)
    derived = not views
    if derived:  # no real videos at this rate: derive them from the recordings' 30 FPS
        views = find_real_views(root, SOURCE_FPS)
    if not views:
        raise FileNotFoundError(f"no real testing videos at {fps} or {SOURCE_FPS} FPS under {root}")

    results: dict[str, dict[str, ViewMetrics]] = {}
    for view in views:
        if wanted is not None and view.scenario not in wanted:
            continue
        missing = {1, 2} - set(view.takes)
        if missing:
            raise FileNotFoundError(f"{view.scenario} / {view.perspective}: no take-{min(missing)} testing video")
        take1_id = parse_benchmark_file_name(view.takes[1].name).video_id
        if take1_id not in generated:
            raise FileNotFoundError(f"no generated video for ID {take1_id} ({view.scenario}, {view.perspective})")
        take1, take2 = (read_video(view.takes[k]) for k in (1, 2))
        if derived:
            take1, take2 = change_fps(take1, fps, seconds=seconds), change_fps(take2, fps, seconds=seconds)
        metrics = evaluate_view(take1, take2, read_video(generated[take1_id]), fps, seconds=seconds)
        results.setdefault(view.scenario, {})[view.perspective] = metrics

    results = {name: dict(sorted(per_view.items())) for name, per_view in sorted(results.items())}
    return FolderScore(
        score=physics_iq_score(results),
        views=results,
        scenarios={name: scenario_summary(per_view) for name, per_view in results.items()},
        fps=fps,
    )
