"""One job's record: its state, progress and files, as kept in memory and in <results_dir>/<id>/job.json.

A job folder holds job.json (rewritten atomically at every change), the upload it was given (input.<ext>),
one mp4 per finished chunk, the resume state of an unfinished render (resume.safetensors) and, at the end,
video.mp4. The record is all a restarted server needs to take the job back.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .cost import JobCost
from .job_request import JobRequest

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
INPUT_NAME_PATTERN = re.compile(r"^input\.[a-z0-9]{1,5}$")
JOB_FILE = "job.json"
VIDEO_FILE = "video.mp4"
RESUME_FILE = "resume.safetensors"
STAGING_PREFIX = ".incoming-"


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass
class Job:
    id: str
    folder: Path
    request: JobRequest
    state: JobState = JobState.QUEUED
    client: str = ""                  # a hash of the submitting client's identity (never the API key itself)
    cost: JobCost | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    progress: float = 0.0
    step: int | None = None
    total_steps: int | None = None
    chunks_ready: int = 0
    num_chunks: int | None = None
    resumable_chunks: int = 0         # finished chunks in resume.safetensors (a restart continues after them)
    resumed_chunks: int = 0           # chunks the last run took over from an interrupted one
    fps: int | None = None
    has_video: bool = False
    disk_bytes: int = 0
    # What prompt enhancement made (EnhancedPrompts.to_dict()): kept, so a resumed job keeps its captions.
    enhanced: dict | None = None
    # Cancelled by its live viewer's session.stop ("end the video here"), not abandoned: the chunks it finished
    # are the video, which the Videos API reports as completed.
    stopped: bool = False
    # A live job's caption of each finished chunk (the prompt it was made with, session.interaction changes
    # included): the init segment with the mp4's tags goes out before any change, so only the record has them.
    live_captions: list[str] | None = None
    # Not saved: what a running server asks of the job now.
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    delete_requested: bool = False

    @property
    def video_path(self) -> Path:
        return self.folder / VIDEO_FILE

    @property
    def resume_path(self) -> Path:
        return self.folder / RESUME_FILE

    @property
    def input_path(self) -> Path | None:
        return self.folder / self.request.input_name if self.request.input_name else None

    def chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk-{int(index):04d}.mp4"

    def to_record(self) -> dict:
        """What job.json holds."""
        cost = self.cost
        return {
            "id": self.id, "state": self.state.value, "request": self.request.to_dict(), "client": self.client,
            "cost": None if cost is None else [cost.frames, cost.height, cost.width, cost.steps],
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "error": self.error, "progress": self.progress, "chunks_ready": self.chunks_ready,
            "num_chunks": self.num_chunks, "resumable_chunks": self.resumable_chunks,
            "resumed_chunks": self.resumed_chunks, "fps": self.fps, "has_video": self.has_video,
            "disk_bytes": self.disk_bytes, "enhanced": self.enhanced, "stopped": self.stopped,
            "live_captions": self.live_captions,
        }

    @classmethod
    def from_record(cls, folder: Path, record: dict) -> "Job":
        request = JobRequest.from_dict(record["request"])
        if request.input_name is not None and not INPUT_NAME_PATTERN.match(request.input_name):
            raise ValueError(f"unexpected input file name {request.input_name!r}")
        cost = record.get("cost")
        job = cls(id=folder.name, folder=folder, request=request, state=JobState(record["state"]),
                  client=str(record.get("client") or ""), created_at=float(record["created_at"]),
                  cost=JobCost(*(int(v) for v in cost)) if cost else None)
        job.started_at, job.finished_at = record.get("started_at"), record.get("finished_at")
        job.error = record.get("error")
        job.progress = float(record.get("progress") or 0.0)
        job.chunks_ready = int(record.get("chunks_ready") or 0)
        job.num_chunks = record.get("num_chunks")
        job.resumable_chunks = int(record.get("resumable_chunks") or 0)
        job.resumed_chunks = int(record.get("resumed_chunks") or 0)
        job.fps = record.get("fps")
        job.has_video = bool(record.get("has_video"))
        job.disk_bytes = int(record.get("disk_bytes") or 0)
        job.stopped = bool(record.get("stopped"))
        enhanced = record.get("enhanced")
        job.enhanced = enhanced if isinstance(enhanced, dict) else None
        captions = record.get("live_captions")
        job.live_captions = [str(c) for c in captions] if isinstance(captions, list) else None
        return job
