"""The five OpenCV operations the Physics-IQ metric code calls, re-created bit for bit in numpy.

The official metric runs on OpenCV's fixed-point arithmetic; a "mathematically equivalent" float
version moves scores by up to a point (docs: physics-iq.md §3, §4, §7). Every function here follows
the exact integer or float rule measured against OpenCV 4.11 / 5.0 on x86-64, not the textbook
formula. Arrays may carry any number of leading batch axes (frames), so a whole video is one call.

    grey_from_colour          cvtColor(BGR2GRAY)                    fixed point, 15 bits
    gaussian_blur_5x5         GaussianBlur((5, 5), sigma=0)          binomial kernel, reflect-101
    accumulate_weighted       accumulateWeighted(src, acc, alpha)    float64, fused multiply-add
    convert_scale_abs         convertScaleAbs(acc)                   via float32, round half even
    erode_5x5 / dilate_5x5    erode / dilate with a 5x5 square       outside pixels ignored
    resize_linear             resize(INTER_LINEAR) for uint8         fixed point, 11-bit weights
"""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------------------------------------ grey


def grey_from_colour(frames: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """uint8 (..., H, W, 3) → uint8 (..., H, W): OpenCV's BGR2GRAY, (3735 B + 19235 G + 9798 R + 2^14) >> 15.

    The official code decodes with OpenCV, so its frames are BGR; ours (PyAV, PIL) are RGB. Say which
    one you pass: the weights differ per channel, and swapping R and B changes the masks.
    """
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    frames = np.asarray(frames)
    if frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (..., H, W, 3) frames, got {frames.dtype} {frames.shape}")
    pixels = frames.astype(np.int32)
    red, green, blue = (pixels[..., 0], pixels[..., 1], pixels[..., 2])
    if channel_order == "bgr":
        red, blue = blue, red
    return ((3735 * blue + 19235 * green + 9798 * red + 16384) >> 15).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ blur


def _reflect101_indices(length: int, pad: int) -> np.ndarray:
    """Source index of every position in [-pad, length + pad) under BORDER_REFLECT_101 (…c b | a b c | b a…)."""
    positions = np.arange(-pad, length + pad)
    if length == 1:
        return np.zeros_like(positions)
    period = 2 * (length - 1)  # reflect-101 repeats with this period, also for pads wider than the image
    folded = np.abs(positions) % period
    return np.where(folded >= length, period - folded, folded)


def gaussian_blur_5x5(image: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W) → uint8: GaussianBlur((5, 5), 0) = ⌊(Σ w_i w_j Y + 128) / 256⌋, w = (1, 4, 6, 4, 1).

    sigma 0 with ksize 5 is OpenCV's binomial kernel; its 8-bit path is exact integer arithmetic
    rounded half up once at the end. Borders reflect without repeating the edge pixel (reflect-101).
    """
    image = np.asarray(image)
    height, width = image.shape[-2:]
    rows = _reflect101_indices(height, 2)
    cols = _reflect101_indices(width, 2)
    padded = image.astype(np.int32)[..., rows, :][..., cols]
    taps = (1, 4, 6, 4, 1)
    across = sum(w * padded[..., :, k : k + width] for k, w in enumerate(taps))
    down = sum(w * across[..., k : k + height, :] for k, w in enumerate(taps))
    return ((down + 128) >> 8).astype(np.uint8)


# --------------------------------------------------------------------------------- running average

_VECTOR_BLOCK = 16  # accumulateWeighted's AVX2 loop handles the flattened image in blocks of 16
_DEKKER_SPLIT = 134217729.0  # 2**27 + 1: splits a float64 into two 26-bit halves


def _two_product(a: np.ndarray, b: float) -> tuple[np.ndarray, np.ndarray]:
    """(p, e) with p = fl(a·b) and p + e = a·b exactly (Dekker)."""
    product = a * b

    def split(x):
        scaled = _DEKKER_SPLIT * x
        high = scaled - (scaled - x)
        return high, x - high

    a_hi, a_lo = split(a)
    b_hi, b_lo = split(np.float64(b))
    error = ((a_hi * b_hi - product) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return product, error


def fused_multiply_add(a: np.ndarray, b: float, c: np.ndarray) -> np.ndarray:
    """a·b + c rounded once, as the hardware FMA does (numpy has no fma; this uses error-free sums).

    Equal to the correctly rounded result except in vanishingly rare double-rounding ties.
    """
    product, product_error = _two_product(np.asarray(a, np.float64), b)
    total = product + c
    recovered = total - product
    sum_error = (product - (total - recovered)) + (c - recovered)
    return total + (sum_error + product_error)


def accumulate_weighted(accumulator: np.ndarray, image: np.ndarray, alpha: float) -> np.ndarray:
    """New float64 running average (1 - alpha)·acc + alpha·image, rounded as OpenCV's AVX2 build rounds it.

    Per flattened image: blocks of 16 compute fma(acc, 1 - alpha, image·alpha); the last
    (size mod 16) elements take the compiler-contracted scalar form fma(image, alpha, acc·(1 - alpha)).
    A plain multiply-then-add is 1 ulp off in about a fifth of the values.
    """
    keep = 1.0 - alpha
    acc = np.asarray(accumulator, np.float64).ravel()
    src = np.asarray(image).astype(np.float64).ravel()
    head = acc.size - acc.size % _VECTOR_BLOCK
    out = np.empty_like(acc)
    out[:head] = fused_multiply_add(acc[:head], keep, src[:head] * alpha)
    out[head:] = fused_multiply_add(src[head:], alpha, acc[head:] * keep)
    return out.reshape(np.shape(accumulator))


def convert_scale_abs(values: np.ndarray) -> np.ndarray:
    """float64 → uint8: OpenCV's vector path goes through float32 first, then rounds half to even.

    The float32 step matters: 105.49999999999999 becomes 105.5f and then 106, where a float64
    round would give 105. (OpenCV takes this path for any array of 16 or more elements.)
    """
    as_float32 = np.abs(np.asarray(values).astype(np.float32))
    return np.clip(np.rint(as_float32), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ morphology


def _window_extreme(image: np.ndarray, reduce, fill: int, radius: int = 2) -> np.ndarray:
    """Min or max over a (2r+1)² square; `fill` stands for outside pixels and never wins the reduction."""
    height, width = image.shape[-2:]
    pad = [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, pad + [(radius, radius), (0, 0)], constant_values=fill)
    out = padded[..., 0:height, :]
    for k in range(1, 2 * radius + 1):
        out = reduce(out, padded[..., k : k + height, :])
    padded = np.pad(out, pad + [(0, 0), (radius, radius)], constant_values=fill)
    out = padded[..., :, 0:width]
    for k in range(1, 2 * radius + 1):
        out = reduce(out, padded[..., :, k : k + width])
    return out


def erode_5x5(mask: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W): minimum over the 5x5 square centred on each pixel; outside pixels are ignored."""
    return _window_extreme(np.asarray(mask, np.uint8), np.minimum, fill=255)


def dilate_5x5(mask: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W): maximum over the 5x5 square centred on each pixel; outside pixels are ignored."""
    return _window_extreme(np.asarray(mask, np.uint8), np.maximum, fill=0)


# ---------------------------------------------------------------------------------------------- resize

_COEF_SCALE = 2048  # INTER_RESIZE_COEF_SCALE: interpolation weights are 11-bit fixed point


def _axis_taps(source: int, target: int, clamp_fraction: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along one axis: (first source index, weight of it, weight of the next), weights ×2048."""
    scale = 1.0 / (target / source)  # OpenCV: inverse of the double ratio dst/src
    position = ((np.arange(target) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = (position - first.astype(np.float32)).astype(np.float32)
    if clamp_fraction:  # columns: outside the image the nearest edge pixel is taken whole
        before = first < 0
        first[before], fraction[before] = 0, 0.0
        after = first >= source - 1
        first[after], fraction[after] = source - 1, 0.0
    weight_first = np.rint((np.float32(1.0) - fraction) * np.float32(_COEF_SCALE)).astype(np.int64)
    weight_next = np.rint(fraction * np.float32(_COEF_SCALE)).astype(np.int64)
    return first, weight_first, weight_next


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (..., H, W, C) → (..., height, width, C): cv2.resize(img, (width, height)), INTER_LINEAR.

    The last axis is always channels (pass a grey image as (..., H, W, 1)). Bilinear with OpenCV's
    fixed point: a horizontal pass with 11-bit integer weights (exact), then a vertical pass that
    rounds like the SIMD code (pre-shift by 4, high half of a 16-bit product, then (x + 2) >> 2) for
    every value of a row, its last (row length mod 8) values included: OpenCV 4.11 and 5.0 round none
    of them with the scalar (x + 2^21) >> 22 (physics-iq.md §4). For a ×4 reduction each output is ⌊(sum of the 2×2 central pixels + 2) / 4⌋, not a 4×4 box
    average. Note the argument order: width first, as in OpenCV.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim < 3:
        raise ValueError(f"resize_linear takes uint8 (..., H, W, C), got {image.dtype} {image.shape}")
    src_height, src_width, channels = image.shape[-3:]
    if (src_height, src_width) == (height, width):  # OpenCV copies an equal-size resize
        return image.copy()

    col, col_w0, col_w1 = _axis_taps(src_width, width, clamp_fraction=True)
    col_next = np.minimum(col + 1, src_width - 1)
    pixels = image.astype(np.int64)
    across = pixels[..., :, col, :] * col_w0[:, None] + pixels[..., :, col_next, :] * col_w1[:, None]

    row, row_w0, row_w1 = _axis_taps(src_height, height, clamp_fraction=False)
    upper = across[..., np.clip(row, 0, src_height - 1), :, :]
    lower = across[..., np.clip(row + 1, 0, src_height - 1), :, :]
    w0 = row_w0[:, None, None]
    w1 = row_w1[:, None, None]
    vertical = (((upper >> 4) * w0 >> 16) + ((lower >> 4) * w1 >> 16) + 2) >> 2
    return np.clip(vertical, 0, 255).astype(np.uint8)
