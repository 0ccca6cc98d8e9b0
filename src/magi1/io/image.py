"""Conditioning images for i2v: any image in, uint8 (H, W, 3) RGB out at the model's size.

The official code pipes the file through the ffmpeg CLI with a plain `scale=w:h`
(reference-vae-t5-infra.md §3.1): the image is stretched to exactly W x H, aspect ratio ignored.
The CLI's default scaler is swscale bicubic with B=0, C=0.6 (a Keys cubic with a = -0.6), applied
to the decoded YUV planes. Pillow's BICUBIC is a Keys cubic with a = -0.5 applied to RGB, which is
the closest Pillow offers: edges are a touch softer, and pixels differ by a few levels at most.
EXIF orientation is ignored, as ffmpeg ignores it for still images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageSource = str | Path | Image.Image | np.ndarray

RESAMPLE = Image.Resampling.BICUBIC


def _check_size(height: int, width: int) -> None:
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"target size must be positive, got height={height}, width={width}")


def cover_size(src_height: int, src_width: int, height: int, width: int) -> tuple[int, int]:
    """Smallest (h, w) with the source aspect ratio that covers height x width."""
    scale = max(height / src_height, width / src_width)
    return max(height, round(src_height * scale)), max(width, round(src_width * scale))


def center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crop the middle height x width of an (..., H, W, C) array."""
    top = (array.shape[-3] - height) // 2
    left = (array.shape[-2] - width) // 2
    return array[..., top : top + height, left : left + width, :]


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(_as_rgb_array(source))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from error
    return image


def _as_rgb_array(array: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from (H, W), (H, W, 1|3|4) uint8 or float in [0, 1]."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"image array must be uint8 or float in [0, 1]; got {array.dtype}")
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    # Alpha is dropped, not composited: ffmpeg's rgba -> rgb24 conversion does the same.
    return np.ascontiguousarray(array[..., :3])


def as_rgb_image(image: Image.Image) -> Image.Image:
    """8-bit RGB of any Pillow mode, deep images scaled down rather than clipped.

    Pillow's own convert("RGB") clips 16-bit and 32-bit grey ("I;16", "I") at 255, which turns a 16-bit PNG
    into a white page; ffmpeg (what the official code reads images with) keeps the top 8 bits instead.
    A float image ("F") is taken to be in [0, 1], as ffmpeg's float formats are.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
        image = Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8))
    elif image.mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255.0
        image = Image.fromarray(grey.round().astype(np.uint8))
    return image.convert("RGB")


def load_image(source: ImageSource, height: int, width: int, *, keep_aspect: bool = False) -> np.ndarray:
    """An image as uint8 (height, width, 3) RGB.

    keep_aspect=False: stretch to exactly width x height (official "fit").
    keep_aspect=True: scale to cover the target, then crop the centre (official "crop" policy).
    """
    _check_size(height, width)
    image = as_rgb_image(_open(source))
    if keep_aspect:
        cover_h, cover_w = cover_size(image.height, image.width, height, width)
        resized = np.asarray(image.resize((cover_w, cover_h), RESAMPLE))
        return np.ascontiguousarray(center_crop(resized, height, width))
    return np.asarray(image.resize((width, height), RESAMPLE)).copy()


def save_image(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) array; the format follows the extension."""
    Image.fromarray(_as_rgb_array(np.asarray(image))).save(Path(path))
