"""Limits and knobs of `magi1 serve`, in one frozen object the app, the job store and the checks all read.

Every number a client can send is capped here, so an operator can see at a glance how much work one request
may cause. Values a client leaves out fall back to the model's own config, which the operator chose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024

# Names Pillow reports in `Image.format`, mapped to the suffix the stored copy gets.
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}
# Container families recognised by their leading bytes (see uploads.py), mapped to the suffix the stored copy
# gets: "mp4" covers MP4 and QuickTime MOV, "matroska" covers MKV and WebM.
VIDEO_FORMATS = {"mp4": ".mp4", "matroska": ".mkv", "avi": ".avi"}

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServerSettings:
    # Where job folders live; each job gets <results_dir>/<random hex id>/.
    results_dir: Path = Path("magi1-results")
    # Jobs waiting (not counting the running one); one more gets 429.
    max_queue: int = 8
    # Uploads: the whole request body is capped, then the file must decode as an allowed image or video.
    max_upload_bytes: int = 64 * MiB
    image_formats: tuple[str, ...] = tuple(IMAGE_FORMATS)
    video_formats: tuple[str, ...] = tuple(VIDEO_FORMATS)
    # Decoded size of an uploaded image or video frame: guards against tiny files that expand enormously.
    max_input_pixels: int = 4096 * 4096
    # What one job may ask for.
    max_frames: int = 192
    max_height: int = 1280
    max_width: int = 1280
    max_steps: int = 128
    max_prompt_chars: int = 4000
    max_chunk_prompts: int = 64
    # Finished jobs (done, failed, cancelled) are deleted this long after they finish, oldest first
    # beyond max_finished_jobs.
    result_ttl_s: float = 24 * 3600.0
    max_finished_jobs: int = 200
    # How often the worker looks for expired results while idle.
    sweep_interval_s: float = 30.0
    # Host names accepted in the Host header; None accepts any. Set to loopback names when bound to loopback,
    # so a web page on another site cannot reach the server through DNS rebinding.
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "results_dir", Path(self.results_dir))
        for name in ("max_queue", "max_upload_bytes", "max_frames", "max_height", "max_width", "max_steps",
                     "max_prompt_chars", "max_chunk_prompts", "max_finished_jobs", "max_input_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"server setting {name} must be at least 1, got {getattr(self, name)}")
        if self.result_ttl_s <= 0 or self.sweep_interval_s <= 0:
            raise ValueError("result_ttl_s and sweep_interval_s must be positive")
        unknown = [f for f in self.image_formats if f not in IMAGE_FORMATS]
        unknown += [f for f in self.video_formats if f not in VIDEO_FORMATS]
        if unknown:
            known = list(IMAGE_FORMATS) + list(VIDEO_FORMATS)
            raise ValueError(f"unsupported upload formats {unknown}; known: {known}")

    def replace(self, **changes) -> "ServerSettings":
        return dataclasses.replace(self, **changes)

    def limits(self) -> dict:
        """What the page and API clients may ask for (sent by GET /v1/info)."""
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "image_formats": list(self.image_formats),
            "video_formats": list(self.video_formats),
            "max_frames": self.max_frames,
            "max_height": self.max_height,
            "max_width": self.max_width,
            "max_steps": self.max_steps,
            "max_prompt_chars": self.max_prompt_chars,
            "max_chunk_prompts": self.max_chunk_prompts,
            "max_queue": self.max_queue,
            "result_ttl_s": self.result_ttl_s,
        }
