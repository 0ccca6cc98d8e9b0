"""Helpers a diffusers user expects by name: `export_to_video`, and the frame conversions behind it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np


# Float frames a hair outside [0, 1] (a decoder's or a resize's rounding) are clipped; further out is a mistake.
FLOAT_RANGE_TOLERANCE = 1e-3


def video_to_uint8(video) -> np.ndarray:
    """One video as uint8 (T, H, W, 3), from any frame form a pipeline returns or a user holds.

    Accepted: numpy (T, H, W, 3) uint8 or float in [0, 1]; torch (T, 3, H, W) or (T, H, W, 3), float in
    [0, 1] or uint8; a list of PIL images (any mode: grey, palette and RGBA become RGB) or of (H, W, 3)
    arrays. Float frames outside [0, 1] (e.g. [0, 255] or [-1, 1]) or not finite are an InputError: clipping
    them turned a [0, 255] video white.
    """
    from PIL import Image

    from .errors import InputError

    if isinstance(video, (list, tuple)):  # PIL images or (H, W, 3) arrays
        if not video:
            raise InputError("the video has no frames")
        frames = [np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame) for frame in video]
        sizes = sorted({frame.shape for frame in frames})
        if len(sizes) > 1:  # np.stack's "all input arrays must have the same shape"
            raise InputError(f"the frames of a video must all be one size, got {len(sizes)} sizes: "
                             f"{', '.join(str(size) for size in sizes[:3])}")
        video = np.stack(frames)
    if hasattr(video, "detach"):  # a torch tensor
        tensor = video.detach().cpu()
        if tensor.dim() == 4 and tensor.shape[1] == 3 and tensor.shape[-1] != 3:
            tensor = tensor.permute(0, 2, 3, 1)  # (T, 3, H, W) -> (T, H, W, 3)
        video = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"a video must be (T, H, W, 3) frames (for a batch, pass one video: frames[0]); "
                         f"got shape {frames.shape}")
    if not len(frames):  # the encoder failed with an errno deep in libx264 (e.g. a run interrupted at once)
        raise InputError("the video has no frames")
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise InputError(f"frames must be uint8 or float in [0, 1], got {frames.dtype}")
    check_float_pixels(frames, "float frames")
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def check_float_pixels(pixels: np.ndarray, what: str) -> None:
    """Refuse float pixels that are not finite or lie outside [0, 1] (a [0, 255] image clipped to white)."""
    from .errors import InputError

    if pixels.size and not np.isfinite(pixels).all():
        raise InputError(f"the {what} hold NaN or infinite values; every value must be a number in [0, 1]")
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 1.0)
    if low < -FLOAT_RANGE_TOLERANCE or high > 1 + FLOAT_RANGE_TOLERANCE:
        raise InputError(f"{what} must be in [0, 1], got values from {low:g} to {high:g}; "
                         f"{_range_hint(low, high)}")


def _range_hint(low: float, high: float) -> str:
    """What probably happened to float frames outside [0, 1], and the fix."""
    if high > 1.5:
        return "divide [0, 255] frames by 255, or pass uint8"
    if low < -0.5:
        return "map [-1, 1] frames to [0, 1] with (x + 1) / 2"
    return "clip them to [0, 1]"


def export_to_video(video_frames: Sequence | np.ndarray, output_video_path: str | Path | None = None,
                    fps: int = 24) -> str:
    """Write one video to an mp4 with PyAV (H.264, yuv420p) and return its path, as diffusers' helper does.

    video_frames: one video in any form `video_to_uint8` takes, e.g. `pipe(...).frames[0]`.
    output_video_path: default a new temporary .mp4 file.
    """
    from .io.video import write_video

    if output_video_path is None:
        with tempfile.NamedTemporaryFile(suffix=".mp4", delete=False) as handle:
            output_video_path = handle.name
    else:  # a folder, a missing folder or another extension: one InputError before any encoding
        from .preflight import check_output_path

        output_video_path = check_output_path(output_video_path)
    write_video(output_video_path, video_to_uint8(video_frames), fps=fps)
    return str(output_video_path)
