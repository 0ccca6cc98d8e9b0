"""Image and video input/output: conditioning inputs in, generated video out (PyAV + Pillow)."""

from magi1.io.image import load_image, save_image
from magi1.io.video import (
    VideoInfo,
    VideoWriter,
    frames_to_mp4_bytes,
    load_video,
    partial_path_for,
    probe_video,
    resample_frames,
    write_video,
)

__all__ = [
    "VideoInfo",
    "VideoWriter",
    "frames_to_mp4_bytes",
    "load_image",
    "load_video",
    "partial_path_for",
    "probe_video",
    "resample_frames",
    "save_image",
    "write_video",
]
