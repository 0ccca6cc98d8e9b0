"""Physics-IQ metrics: the four per-view measures, one view's full evaluation, and the aggregate score.

Terms (docs: physics-iq.md §5, §6). For one scenario seen from one perspective there are two real
takes of the same event and one generated continuation; take 1 is the ground truth, take 2 only
measures how much two real performances of the event agree ("physical variance"). The score divides
the model's agreement with take 1 by the takes' agreement with each other, so a model as good as a
second real take scores about 100.

Masks are (T, h, w) arrays where non-zero means "moving"; frames are uint8, or floats in [0, 1].
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from magi1.eval.motion import (
    frames_at_metric_resolution,
    masks_at_metric_resolution,
    metric_size,
    motion_masks,
)

SECONDS_EVALUATED = 5.0  # the official window: the first 5 s of every video

# ------------------------------------------------------------------------------------ per-view metrics


def _as_binary_stack(masks) -> np.ndarray:
    if len(masks) == 0:
        return np.zeros((0, 1, 1), dtype=bool)
    return np.stack([np.asarray(m) != 0 for m in masks])


def spatiotemporal_iou(masks_a, masks_b) -> list[float]:
    """One IoU per frame, |A_t ∧ B_t| / |A_t ∨ B_t|, and 1.0 for a frame where neither moves.

    Frames are paired in order and the longer stack is cut to the shorter (the official `zip`).
    """
    values = []
    for a, b in zip(masks_a, masks_b):
        a, b = np.asarray(a) != 0, np.asarray(b) != 0
        union = int(np.logical_or(a, b).sum())
        values.append(1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union)
    return values


def spatial_iou(masks_a, masks_b) -> float:
    """IoU of the "ever moved" maps (logical OR over time); 1.0 when neither ever moves.

    An empty stack counts as a 1x1 still map, as in the official code.
    """
    ever_a = _as_binary_stack(masks_a).any(axis=0)
    ever_b = _as_binary_stack(masks_b).any(axis=0)
    union = int(np.logical_or(ever_a, ever_b).sum())
    return 1.0 if union == 0 else int(np.logical_and(ever_a, ever_b).sum()) / union


def motion_frequency(masks) -> np.ndarray:
    """float64 (h, w): fraction of the stack's frames in which each pixel moves.

    The count is kept in uint16 as the official code keeps it (it would wrap past 65535 frames).
    """
    stack = _as_binary_stack(masks)
    if len(stack) == 0:
        raise ValueError("motion_frequency needs at least one mask")
    counts = stack.sum(axis=0, dtype=np.uint16)
    return counts / len(stack)


def weighted_spatial_iou(masks_a, masks_b) -> float:
    """Σ min(f_a, f_b) / Σ max(f_a, f_b) over pixels, with f the motion frequency of each stack.

    Each stack is normalised by its own frame count. 1.0 when nothing moves in either. Sums run
    over the pixels where max > 0 only, as in the official code (same value, same float rounding).
    """
    freq_a, freq_b = motion_frequency(masks_a), motion_frequency(masks_b)
    high = np.maximum(freq_a, freq_b)
    active = high > 0
    if not active.any():
        return 1.0
    return float(np.sum(np.minimum(freq_a, freq_b)[active]) / np.sum(high[active]))


def _unit_float32(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        frames = frames.astype(np.float64) / 255.0  # the official scale: pixel / 255 in float64 first
    return frames.astype(np.float32)


def mse_per_frame(frames_a, frames_b) -> list[float]:
    """One MSE per frame, mean over h·w·3 of (a - b)², in float32, on the [0, 1] pixel scale.

    Raises ValueError when frame counts or frame shapes differ (a generated video that is too
    short fails here, as in the official pipeline).
    """
    a, b = _unit_float32(frames_a), _unit_float32(frames_b)
    if len(a) != len(b):
        raise ValueError("Videos must have the same number of frames.")
    if a.shape != b.shape:
        raise ValueError(f"Videos must have the same frame shape, got {a.shape[1:]} and {b.shape[1:]}")
    return [float(np.mean((a[t] - b[t]) ** 2)) for t in range(len(a))]


# ------------------------------------------------------------------------------------ one whole view


@dataclass
class ViewMetrics:
    """Everything computed for one (scenario, perspective). Field names are the official CSV column
    stems (the column is `{field}_{perspective}`); v1 = take 1 vs generated, v2 = take 2 vs
    generated, variance = take 1 vs take 2. Only v1 and variance enter the score."""

    spatiotemporal_iou_v1: list[float]
    spatiotemporal_iou_v2: list[float]
    spatial_iou_v1: float
    spatial_iou_v2: float
    weighted_spatial_iou_v1: float
    weighted_spatial_iou_v2: float
    v1_mse: list[float]
    v2_mse: list[float]
    variance_spatiotemporal_iou: list[float]
    variance_spatial: float
    variance_weighted_spatial: float
    variance_mse: list[float]


def view_metrics_from_masks(
    take1_masks, take2_masks, generated_masks, take1_frames, take2_frames, generated_frames
) -> ViewMetrics:
    """ViewMetrics from masks and frames already at metric resolution and cut to the window."""
    p, q, g = take1_masks, take2_masks, generated_masks
    return ViewMetrics(
        spatiotemporal_iou_v1=spatiotemporal_iou(p, g),
        spatiotemporal_iou_v2=spatiotemporal_iou(q, g),
        spatial_iou_v1=spatial_iou(p, g),
        spatial_iou_v2=spatial_iou(q, g),
        weighted_spatial_iou_v1=weighted_spatial_iou(p, g),
        weighted_spatial_iou_v2=weighted_spatial_iou(q, g),
        v1_mse=mse_per_frame(take1_frames, generated_frames),
        v2_mse=mse_per_frame(take2_frames, generated_frames),
        variance_spatiotemporal_iou=spatiotemporal_iou(p, q),
        variance_spatial=spatial_iou(p, q),
        variance_weighted_spatial=weighted_spatial_iou(p, q),
        variance_mse=mse_per_frame(take1_frames, take2_frames),
    )


def frames_evaluated(fps: float, seconds: float = SECONDS_EVALUATED) -> int:
    """Length of the evaluation window: frame indices i with 0 <= i < seconds·fps."""
    return math.ceil(seconds * fps)


def evaluate_view(
    take1: np.ndarray,
    take2: np.ndarray,
    generated: np.ndarray,
    fps: float,
    seconds: float = SECONDS_EVALUATED,
    channel_order: str = "rgb",
) -> ViewMetrics:
    """Full metrics of one view from uint8 (T, H, W, 3) videos at their native sizes.

    take1 / take2: the real testing parts (the 5 s after the switch frame); generated: the model's
    continuation, any size (it is resized, possibly distorted, to the real video's metric size).
    Each video is cut to its first ceil(seconds·fps) frames; masks are computed at native size,
    then everything is resized to (W // 4, H // 4) of take 1. Masks skip the official pipeline's
    lossy mp4v round trip, which the reference values also leave out (physics-iq.md §7).
    """
    count = frames_evaluated(fps, seconds)
    videos = [np.asarray(v)[:count] for v in (take1, take2, generated)]
    width, height = metric_size(*videos[0].shape[1:3])
    masks = [masks_at_metric_resolution(motion_masks(v, channel_order), width, height) for v in videos]
    frames = [frames_at_metric_resolution(v, width, height) for v in videos]
    return view_metrics_from_masks(*masks, *frames)


# ------------------------------------------------------------------------------------- aggregate score


@dataclass(frozen=True)
class PhysicsIQScore:
    score: float                          # Physics-IQ, percent: round(clip(raw, 0, 100), 2)
    raw: float                            # before clipping and rounding
    spatiotemporal_iou: float             # model terms: take 1 vs generated, averaged
    spatial_iou: float
    weighted_spatial_iou: float
    mse: float
    variance_spatiotemporal_iou: float    # physical-variance terms: take 1 vs take 2, rounded
    variance_spatial_iou: float
    variance_weighted_spatial_iou: float
    variance_mse: float
    physical_variance_all_metrics: float  # informative only: round(V_ST + V_SP + V_WSP - V_MSE, 4)
    num_scenarios: int


def _python_round4(values: Sequence[float]) -> list[float]:
    """Python's round(x, 4): correct rounding of the exact binary value (round(0.12345, 4) = 0.1235)."""
    return [round(float(v), 4) for v in values]


def _numpy_round(value: float, decimals: int) -> float:
    """numpy's rounding: rint(x·10^n) / 10^n, half to even after the multiply (R4(0.12345) = 0.1234)."""
    return float(np.round(np.float64(value), decimals))


def physics_iq_score(views_by_scenario: Mapping[str, Mapping[str, ViewMetrics]]) -> PhysicsIQScore:
    """The Physics-IQ score from every scenario's per-perspective metrics (the official aggregation).

    Model terms: per scenario, the mean over all frames of all views (per-frame values rounded with
    Python's round(., 4) first), then the mean over scenarios; spatial IoUs are averaged per view
    over scenarios, then over views, unrounded. Physical-variance terms: per view, pooled over all
    scenarios (and frames), then averaged over views and rounded with numpy, to 4 decimals (5 for
    spatial IoU). raw = 100·[(ST/V_ST + SP/V_SP + WSP/V_WSP)/3 − (MSE − V_MSE)], clipped to
    [0, 100], rounded to 2 decimals. The benchmark has 3 views per scenario; any fixed set works.
    """
    if not views_by_scenario:
        raise ValueError("no scenarios to score")
    scenarios = list(views_by_scenario.values())
    views = list(scenarios[0])
    for name, per_view in views_by_scenario.items():
        if set(per_view) != set(views):
            raise ValueError(f"scenario {name!r} has views {sorted(per_view)}, expected {sorted(views)}")

    def per_scenario_frame_mean(column: str) -> float:
        means = [np.mean(np.concatenate([_python_round4(getattr(s[v], column)) for v in views])) for s in scenarios]
        return float(np.mean(means))

    def per_view_scalar_mean(column: str) -> float:
        return float(np.mean([np.mean([getattr(s[v], column) for s in scenarios]) for v in views]))

    def pooled_frame_mean(column: str) -> float:
        per_view = [np.mean(np.concatenate([_python_round4(getattr(s[v], column)) for s in scenarios])) for v in views]
        return float(np.mean(per_view))

    mse = per_scenario_frame_mean("v1_mse")
    st = per_scenario_frame_mean("spatiotemporal_iou_v1")
    sp = per_view_scalar_mean("spatial_iou_v1")
    wsp = per_view_scalar_mean("weighted_spatial_iou_v1")
    var_mse = _numpy_round(pooled_frame_mean("variance_mse"), 4)
    var_st = _numpy_round(pooled_frame_mean("variance_spatiotemporal_iou"), 4)
    var_sp = _numpy_round(per_view_scalar_mean("variance_spatial"), 5)
    var_wsp = _numpy_round(per_view_scalar_mean("variance_weighted_spatial"), 4)

    raw = 100.0 * ((st / var_st + sp / var_sp + wsp / var_wsp) / 3.0 - (mse - var_mse))
    return PhysicsIQScore(
        score=_numpy_round(min(max(raw, 0.0), 100.0), 2),
        raw=raw,
        spatiotemporal_iou=st,
        spatial_iou=sp,
        weighted_spatial_iou=wsp,
        mse=mse,
        variance_spatiotemporal_iou=var_st,
        variance_spatial_iou=var_sp,
        variance_weighted_spatial_iou=var_wsp,
        variance_mse=var_mse,
        physical_variance_all_metrics=_numpy_round(var_st + var_sp + var_wsp - var_mse, 4),
        num_scenarios=len(scenarios),
    )


def scenario_summary(views: Mapping[str, ViewMetrics]) -> dict[str, float]:
    """Unrounded per-scenario means over its views (and frames), for reports; not part of the score."""
    def frame_mean(column):
        return float(np.mean(np.concatenate([getattr(m, column) for m in views.values()])))

    def view_mean(column):
        return float(np.mean([getattr(m, column) for m in views.values()]))

    return {
        "spatiotemporal_iou": frame_mean("spatiotemporal_iou_v1"),
        "spatial_iou": view_mean("spatial_iou_v1"),
        "weighted_spatial_iou": view_mean("weighted_spatial_iou_v1"),
        "mse": frame_mean("v1_mse"),
        "variance_spatiotemporal_iou": frame_mean("variance_spatiotemporal_iou"),
        "variance_spatial_iou": view_mean("variance_spatial"),
        "variance_weighted_spatial_iou": view_mean("variance_weighted_spatial"),
        "variance_mse": frame_mean("variance_mse"),
    }


# ------------------------------------------------------------------------------ the official CSV format

_LIST_COLUMNS = {f.name for f in fields(ViewMetrics) if f.type in ("list[float]", list[float])}
# numpy 2 prints list elements as np.float64(0.5); older numpy and Python print 0.5.
_NUMPY_SCALAR = re.compile(r"np\.\w+\(([^()]*)\)")
_NUMBER = re.compile(r"[-+]?(?:nan|inf|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", re.IGNORECASE)


def _parse_list(text: str) -> list[float]:
    return [float(token) for token in _NUMBER.findall(_NUMPY_SCALAR.sub(r"\1", text))]


def write_metrics_csv(views_by_scenario: Mapping[str, Mapping[str, ViewMetrics]], path: str | Path) -> None:
    """One row per scenario, columns `scenario` and `{metric}_{perspective}`; lists as Python reprs."""
    views = list(next(iter(views_by_scenario.values())))
    header = ["scenario"] + [f"{f.name}_{v}" for v in views for f in fields(ViewMetrics)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for scenario, per_view in views_by_scenario.items():
            row = [scenario]
            for v in views:
                row += [repr(getattr(per_view[v], f.name)) for f in fields(ViewMetrics)]
            writer.writerow(row)


def read_metrics_csv(path: str | Path) -> dict[str, dict[str, ViewMetrics]]:
    """Inverse of write_metrics_csv; also reads the official CSV (any perspective suffixes, numpy reprs)."""
    # Longest stems first, so `spatial_iou_v1_` never claims a `weighted_spatial_iou_v1_` column.
    stems = sorted((f.name for f in fields(ViewMetrics)), key=len, reverse=True)
    result: dict[str, dict[str, ViewMetrics]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            values: dict[str, dict[str, object]] = {}
            for column, text in row.items():
                stem = next((s for s in stems if column.startswith(s + "_")), None)
                if stem is None:
                    continue
                view = column[len(stem) + 1 :]
                values.setdefault(view, {})[stem] = _parse_list(text) if stem in _LIST_COLUMNS else float(text)
            result[row["scenario"]] = {view: ViewMetrics(**kw) for view, kw in values.items()}
    return result


def physics_iq_score_from_csv(path: str | Path) -> PhysicsIQScore:
    """The score of a metrics CSV (ours or the official `calculate_and_write_metrics_to_csv` output)."""
    return physics_iq_score(read_metrics_csv(path))
