"""Physics-IQ motion masks: which pixels move in each frame, and their copy at metric resolution.

A pixel "moves" when its blurred grey level differs by more than 10 from a running average of the
frames so far. The average already holds 30% of the current frame, so in effect a pixel must leave
the past by about 10 / 0.7 ≈ 14.3 grey levels. Then a 5x5 opening removes specks and thin
structures and a 5x5 closing fills small holes (docs: physics-iq.md §3).

Masks are computed at the video's native size and only then reduced to metric resolution (§4);
computing them on reduced frames gives different masks.
"""

from __future__ import annotations

import numpy as np

from magi1.eval.opencv_exact import (
    accumulate_weighted,
    convert_scale_abs,
    dilate_5x5,
    erode_5x5,
    gaussian_blur_5x5,
    grey_from_colour,
    resize_linear,
)

MOTION_THRESHOLD = 10       # strict: a difference of exactly 10 grey levels is still "still"
BACKGROUND_WEIGHT = 0.3     # weight of the new frame in the running average
METRIC_DOWNSCALE = 4        # metrics run at (W // 4, H // 4) of the real take-1 video


def motion_masks(
    frames: np.ndarray,
    channel_order: str = "rgb",
    threshold: int = MOTION_THRESHOLD,
    alpha: float = BACKGROUND_WEIGHT,
) -> np.ndarray:
    """uint8 (T, H, W, 3) frames → uint8 (T, H, W) masks with values {0, 255}; mask 0 is always empty.

    channel_order: "rgb" (PyAV, PIL, this project) or "bgr" (what OpenCV decodes, so what the
    official code sees). Per frame t >= 1, in this order:
      1. grey, 2. 5x5 Gaussian blur S_t,
      3. running average A_t = (1 - alpha) A_{t-1} + alpha S_t  (A_0 = S_0; update before the difference),
      4. reference R_t = uint8(round(float32(A_t))), 5. |S_t - R_t| > threshold → 255,
      6. opening (erode, dilate), then closing (dilate, erode), both with a 5x5 square.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    smooth = gaussian_blur_5x5(grey_from_colour(frames, channel_order))
    reference = np.empty_like(smooth)
    if len(smooth):
        background = smooth[0].astype(np.float64)
        reference[0] = smooth[0]
    for t in range(1, len(smooth)):
        background = accumulate_weighted(background, smooth[t], alpha)
        reference[t] = convert_scale_abs(background)
    difference = np.abs(smooth.astype(np.int16) - reference.astype(np.int16))
    moving = np.where(difference > threshold, 255, 0).astype(np.uint8)
    opened = dilate_5x5(erode_5x5(moving))
    return erode_5x5(dilate_5x5(opened))


def metric_size(frame_height: int, frame_width: int) -> tuple[int, int]:
    """(width, height) at which metrics are computed for a real take-1 video of the given size.

    OpenCV order, width first. Every stream of the view (both takes, the generated video and all
    masks) is resized to this, whatever its own size or aspect ratio.
    """
    return frame_width // METRIC_DOWNSCALE, frame_height // METRIC_DOWNSCALE


def masks_at_metric_resolution(masks: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (T, H, W) {0, 255} masks → uint8 (T, height, width) {0, 1}.

    Mirrors what the official pipeline does to a mask video, minus the lossy codec: the writer keeps
    only an even-sized top-left part (odd sizes lose their last row/column), the decoder gives three
    equal channels, the resize is INTER_LINEAR, and a cell is moving when the result is > 127. At ×4
    that means at least 2 of the 4 sampled pixels are set.
    """
    masks = np.asarray(masks, np.uint8)
    even_h, even_w = masks.shape[1] - masks.shape[1] % 2, masks.shape[2] - masks.shape[2] % 2
    cropped = masks[:, :even_h, :even_w]
    three_channel = np.repeat(cropped[..., None], 3, axis=-1)  # the tail rounding depends on width × 3
    resized = resize_linear(three_channel, width, height)[..., 0]
    return (resized > 127).astype(np.uint8)


def frames_at_metric_resolution(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (T, H, W, 3) → float64 (T, height, width, 3) in [0, 1]: resized in uint8, then / 255."""
    return resize_linear(np.asarray(frames, np.uint8), width, height).astype(np.float64) / 255.0
