"""Pictures for vision models: the i2v image and the last frames of a v2v prefix, as data-URL image parts."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

MAX_SIDE = 768           # pixels: plenty for a description, small enough for any vision model's input
V2V_FRAMES = 3           # the last frames shown for a continuation: the last one and two before it
V2V_FRAME_GAP = 8        # frames between them (a third of a second at 24 fps)
PREFIX_MAX_FRAMES = 32   # the pipeline conditions v2v on the first 32 frames of the clip (official prefix_frame)


def image_part(source: str | Path | np.ndarray | Image.Image) -> dict:
    """A chat-completions content part holding the image as a base64 JPEG data URL."""
    return {"type": "image_url", "image_url": {"url": data_url(source)}}


def data_url(source: str | Path | np.ndarray | Image.Image) -> str:
    from ..io.image import as_rgb_image  # deep (16-bit) images scaled to 8 bits, as the run reads them

    image = as_rgb_image(_as_image(source))
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)  # keeps the aspect ratio
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def last_prefix_frames(video: str | Path | np.ndarray, *, fps: int, count: int = V2V_FRAMES,
                       gap: int = V2V_FRAME_GAP) -> list[np.ndarray]:
    """The last `count` frames (oldest first) of what the pipeline continues: its first 32 frames at `fps`."""
    frames = prefix_frames(video, fps=fps)
    picks = sorted({max(0, len(frames) - 1 - i * gap) for i in range(count)})
    return [frames[i] for i in picks]


def prefix_frames(video: str | Path | np.ndarray, *, fps: int) -> np.ndarray:
    """uint8 (T <= 32, H, W, 3): the frames the pipeline encodes as the v2v prefix, at a size for the model."""
    if isinstance(video, np.ndarray):
        return video[:PREFIX_MAX_FRAMES]
    from ..io.video import load_video, probe_video

    info = probe_video(video)
    scale = min(1.0, MAX_SIDE / max(info.height, info.width))
    height, width = max(2, round(info.height * scale)), max(2, round(info.width * scale))
    return load_video(video, height, width, fps, max_frames=PREFIX_MAX_FRAMES)


def _as_image(source: str | Path | np.ndarray | Image.Image) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(source[..., :3].astype(np.uint8)))
    with Image.open(source) as opened:
        opened.load()
        return opened.copy()
