"""Evaluation: the Physics-IQ benchmark's metrics, exact to the official code, in numpy.

    opencv_exact   the OpenCV operations the official metric uses, bit for bit
    motion         motion masks and the reduction to metric resolution
    physics        per-view metrics (IoUs, MSE), one view's evaluation, the aggregate score, CSV
    benchmark      the benchmark's folder layout, and scoring a folder of generated videos
"""

from magi1.eval.benchmark import (
    PERSPECTIVES,
    FolderScore,
    benchmark_file_name,
    change_fps,
    parse_benchmark_file_name,
    read_video,
    score_generated_folder,
    write_lossless_video,
)
from magi1.eval.motion import (
    frames_at_metric_resolution,
    masks_at_metric_resolution,
    metric_size,
    motion_masks,
)
from magi1.eval.physics import (
    PhysicsIQScore,
    ViewMetrics,
    evaluate_view,
    mse_per_frame,
    physics_iq_score,
    physics_iq_score_from_csv,
    read_metrics_csv,
    spatial_iou,
    spatiotemporal_iou,
    view_metrics_from_masks,
    weighted_spatial_iou,
    write_metrics_csv,
)

__all__ = [
    "PERSPECTIVES",
    "FolderScore",
    "PhysicsIQScore",
    "ViewMetrics",
    "benchmark_file_name",
    "change_fps",
    "evaluate_view",
    "frames_at_metric_resolution",
    "masks_at_metric_resolution",
    "metric_size",
    "motion_masks",
    "mse_per_frame",
    "parse_benchmark_file_name",
    "physics_iq_score",
    "physics_iq_score_from_csv",
    "read_metrics_csv",
    "read_video",
    "score_generated_folder",
    "spatial_iou",
    "spatiotemporal_iou",
    "view_metrics_from_masks",
    "weighted_spatial_iou",
    "write_lossless_video",
    "write_metrics_csv",
]
