"""Limits and knobs of `magi1 serve`, in one frozen object the app, the job store and the checks all read.

Every number a client can send is capped here, so an operator can see at a glance how much work, memory,
disk and time one request may cause. Values a client leaves out fall back to the model's own config, which
the operator chose; the per-job cost budget defaults to a multiple of that config's default job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB

# Names Pillow reports in `Image.format`, mapped to the suffix the stored copy gets.
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}
# Container families recognised by their leading bytes (see uploads.py), mapped to the suffix the stored copy
# gets: "mp4" covers MP4 and QuickTime MOV, "matroska" covers MKV and WebM.
VIDEO_FORMATS = {"mp4": ".mp4", "matroska": ".mkv", "avi": ".avi"}

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

# The default per-job budget is this many times the cost of the model config's own default job.
DEFAULT_BUDGET_MULTIPLE = 8


@dataclass(frozen=True)
class ServerSettings:
    # Where job folders live; each job gets <results_dir>/<random hex id>/. One server per folder (an OS lock).
    results_dir: Path = Path("magi1-results")
    # Jobs waiting (not counting the running one); one more gets 429.
    max_queue: int = 8
    # Uploads: a multipart body may be this large (the file streams to disk); it must decode as an allowed
    # image or video, decoded in full.
    max_upload_bytes: int = 64 * MiB
    # Every other request body (JSON, urlencoded, ...) is parsed in memory, so it is capped much lower.
    max_body_bytes: int = 1 * MiB
    image_formats: tuple[str, ...] = tuple(IMAGE_FORMATS)
    video_formats: tuple[str, ...] = tuple(VIDEO_FORMATS)
    # Decoded size of an uploaded image or video frame: guards against tiny files that expand enormously.
    max_input_pixels: int = 4096 * 4096
    # Frames an uploaded video may have (all of them are decoded when it is checked).
    max_input_frames: int = 4000
    # What one job may ask for.
    max_frames: int = 192
    max_height: int = 1280
    max_width: int = 1280
    max_steps: int = 128
    max_prompt_chars: int = 4000
    max_chunk_prompts: int = 64
    # Cost budget of one job in pixel-steps (frames x height x width x steps); None: DEFAULT_BUDGET_MULTIPLE x
    # the model config's default job. A job over it is refused up front, with the numbers.
    max_job_cost: int | None = None
    # Per client (an API key once keys exist; one shared client without them): unfinished jobs at a time,
    # and bytes of results kept.
    max_jobs_per_client: int = 8
    max_bytes_per_client: int = 8 * GiB
    # Retention: finished jobs (done, failed, cancelled) are deleted oldest first once older than
    # result_ttl_s, beyond max_finished_jobs, or while all results together take more than max_results_bytes.
    result_ttl_s: float = 24 * 3600.0
    max_finished_jobs: int = 200
    max_results_bytes: int = 10 * GiB
    # New jobs are refused with 507 while the results folder's disk has less free space than this.
    min_free_disk_bytes: int = 1 * GiB
    # How often the worker looks for expired results while idle.
    sweep_interval_s: float = 30.0
    # Connections: the request head must arrive within header_timeout_s (and be at most max_header_bytes),
    # the body within body_timeout_s; an idle keep-alive connection is closed after keep_alive_s.
    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    body_timeout_s: float = 120.0
    keep_alive_s: float = 5.0
    # On Ctrl-C / SIGTERM: open connections get this long, the running job this long to stop at a step
    # boundary (its finished chunks are kept and it resumes on restart).
    graceful_shutdown_s: float = 2.0
    worker_stop_s: float = 5.0
    # GET /v1/jobs pages: `limit` defaults to / is capped at these.
    default_page_size: int = 20
    max_page_size: int = 100
    # Host names accepted in the Host header; None accepts any. Set to loopback names when bound to loopback,
    # so a web page on another site cannot reach the server through DNS rebinding.
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Absolute, so every path in an exception message is recognisable as one (and scrubbed from replies).
        object.__setattr__(self, "results_dir", Path(self.results_dir).expanduser().absolute())
        for name in ("max_queue", "max_upload_bytes", "max_body_bytes", "max_frames", "max_height", "max_width",
                     "max_steps", "max_prompt_chars", "max_chunk_prompts", "max_finished_jobs", "max_input_pixels",
                     "max_input_frames", "max_jobs_per_client", "max_bytes_per_client", "max_results_bytes",
                     "max_header_bytes", "default_page_size", "max_page_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"server setting {name} must be at least 1, got {getattr(self, name)}")
        if self.max_job_cost is not None and self.max_job_cost < 1:
            raise ValueError(f"server setting max_job_cost must be at least 1, got {self.max_job_cost}")
        if self.min_free_disk_bytes < 0:
            raise ValueError("server setting min_free_disk_bytes must not be negative")
        for name in ("result_ttl_s", "sweep_interval_s", "header_timeout_s", "body_timeout_s", "keep_alive_s",
                     "graceful_shutdown_s", "worker_stop_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"server setting {name} must be positive, got {getattr(self, name)}")
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
            "max_body_bytes": self.max_body_bytes,
            "image_formats": list(self.image_formats),
            "video_formats": list(self.video_formats),
            "max_frames": self.max_frames,
            "max_height": self.max_height,
            "max_width": self.max_width,
            "max_steps": self.max_steps,
            "max_prompt_chars": self.max_prompt_chars,
            "max_chunk_prompts": self.max_chunk_prompts,
            "max_queue": self.max_queue,
            "max_jobs_per_client": self.max_jobs_per_client,
            "result_ttl_s": self.result_ttl_s,
            "max_page_size": self.max_page_size,
        }
