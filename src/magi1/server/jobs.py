"""The job store: accepted jobs, a bounded queue of waiting ones, and the one worker thread that runs them.

One worker per model, because the GPU (or the CPU) is the bottleneck: two jobs at once would each run at
half speed and need twice the memory. Every job lives in its own folder, <results_dir>/<random hex id>/,
holding job.json (its state, rewritten atomically at every change), the upload it was given, one mp4 per
finished chunk and, at the end, video.mp4. Because job.json is on disk, a server restarted on the same
results folder picks up what it had accepted: queued and interrupted jobs run again, results stay listed.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from .job_request import JobRequest
from .previews import JobPreviews
from .settings import ServerSettings

logger = logging.getLogger(__name__)

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
INPUT_NAME_PATTERN = re.compile(r"^input\.[a-z0-9]{1,5}$")
JOB_FILE = "job.json"
VIDEO_FILE = "video.mp4"
MAX_ERROR_CHARS = 500


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class QueueFull(Exception):
    pass


class ModelUnavailable(Exception):
    pass


@dataclass
class Job:
    id: str
    folder: Path
    request: JobRequest
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    progress: float = 0.0
    step: int | None = None
    total_steps: int | None = None
    chunks_ready: int = 0
    num_chunks: int | None = None
    fps: int | None = None
    has_video: bool = False
    # Not saved: a restarted server starts every job afresh.
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    delete_requested: bool = False

    @property
    def video_path(self) -> Path:
        return self.folder / VIDEO_FILE

    @property
    def input_path(self) -> Path | None:
        return self.folder / self.request.input_name if self.request.input_name else None

    def chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk-{int(index):04d}.mp4"

    def to_record(self) -> dict:
        """What job.json holds."""
        return {
            "id": self.id, "state": self.state.value, "request": self.request.to_dict(),
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "error": self.error, "progress": self.progress, "chunks_ready": self.chunks_ready,
            "num_chunks": self.num_chunks, "fps": self.fps, "has_video": self.has_video,
        }

    @classmethod
    def from_record(cls, folder: Path, record: dict) -> "Job":
        request = JobRequest.from_dict(record["request"])
        if request.input_name is not None and not INPUT_NAME_PATTERN.match(request.input_name):
            raise ValueError(f"unexpected input file name {request.input_name!r}")
        job = cls(id=folder.name, folder=folder, request=request, state=JobState(record["state"]),
                  created_at=float(record["created_at"]))
        job.started_at, job.finished_at = record.get("started_at"), record.get("finished_at")
        job.error = record.get("error")
        job.progress = float(record.get("progress") or 0.0)
        job.chunks_ready = int(record.get("chunks_ready") or 0)
        job.num_chunks = record.get("num_chunks")
        job.fps = record.get("fps")
        job.has_video = bool(record.get("has_video"))
        return job


class JobStore:
    """Thread-safe: HTTP handlers call submit/get/list/cancel/delete while the worker runs jobs."""

    def __init__(self, settings: ServerSettings, pipeline_factory: Callable[[], Any]):
        self.settings = settings
        self.pipeline_factory = pipeline_factory
        self.previews = JobPreviews()  # the newest latent preview of each running job, for the page
        self.pipeline = None
        self.model_state = "loading"          # loading | ready | failed
        self.model_error: str | None = None
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._running: Job | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.settings.results_dir.mkdir(parents=True, exist_ok=True)
        self._reload()
        self._worker = threading.Thread(target=self._work, name="magi1-worker", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker; a running job stops at its next check and goes back to the queue on disk."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                logger.warning("the worker did not stop within %.0fs", timeout)

    # ------------------------------------------------------------------ client-facing operations
    def reserve(self) -> Job:
        """A fresh id and folder for a submission whose upload is still being checked."""
        self._check_accepting()
        while True:
            job_id = secrets.token_hex(16)
            folder = self.settings.results_dir / job_id
            try:
                folder.mkdir(parents=True)
                break
            except FileExistsError:
                continue
        return Job(id=job_id, folder=folder, request=JobRequest())

    def release(self, job: Job) -> None:
        """Give up a reservation (the submission was refused)."""
        shutil.rmtree(job.folder, ignore_errors=True)

    def submit(self, job: Job, request: JobRequest) -> Job:
        """Queue a reserved job; raises QueueFull or ModelUnavailable (and removes the folder) when refused."""
        with self._wake:
            refusal = self._refusal()
            if refusal is None:
                job.request = request
                job.created_at = time.time()
                self._jobs[job.id] = job
                self._queue.append(job)
                self._save(job)
                self._wake.notify_all()
        if refusal is not None:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise refusal
        logger.info("job %s queued (%s)", job.id, request.mode)
        return job

    def get(self, job_id: str) -> Job | None:
        if not JOB_ID_PATTERN.match(job_id or ""):
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)

    def cancel(self, job: Job) -> bool:
        """Cancel a queued or running job; False when it had already finished."""
        with self._wake:
            if job.state.finished:
                return False
            job.cancel_requested.set()
            if job.state is JobState.QUEUED:
                self._queue.remove(job)
                self._finish(job, JobState.CANCELLED)
            self._wake.notify_all()
        logger.info("job %s cancel requested", job.id)
        return True

    def delete(self, job: Job) -> None:
        """Forget a job and remove its folder; a running job is cancelled and removed when it stops."""
        with self._wake:
            self._jobs.pop(job.id, None)
            job.delete_requested = True
            job.cancel_requested.set()
            if job.state is JobState.QUEUED:
                self._queue.remove(job)
            running = job is self._running
        self.previews.forget(job.id)
        if not running:
            shutil.rmtree(job.folder, ignore_errors=True)
        logger.info("job %s deleted", job.id)

    def snapshot(self, job: Job) -> dict:
        """A consistent copy of a job's fields, for the API (the worker may be updating them)."""
        with self._lock:
            record = job.to_record()
            record.update(step=job.step, total_steps=job.total_steps,
                          cancel_requested=job.cancel_requested.is_set() and not job.state.finished,
                          has_preview=self.previews.png(job.id) is not None)
            position = None
            if job.state is JobState.QUEUED:
                position = next((i for i, waiting in enumerate(self._queue, start=1) if waiting is job), None)
            record["queue_position"] = position
            return record

    def counts(self) -> dict:
        with self._lock:
            return {"queued": len(self._queue), "running": 1 if self._running else 0, "total": len(self._jobs),
                    "max_queue": self.settings.max_queue}

    def _check_accepting(self) -> None:
        with self._lock:
            refusal = self._refusal()
        if refusal is not None:
            raise refusal

    def _refusal(self) -> Exception | None:
        """Why a new job cannot be accepted now, or None (caller holds the lock)."""
        if self.model_state == "failed":
            return ModelUnavailable(f"the model failed to load: {self.model_error}")
        if len(self._queue) >= self.settings.max_queue:
            return QueueFull(f"the queue is full ({self.settings.max_queue} jobs waiting); try again later")
        return None

    # ------------------------------------------------------------------ persistence
    def _save(self, job: Job) -> None:
        """Rewrite job.json atomically (caller holds the lock or owns the job)."""
        if job.delete_requested:
            return
        temporary = job.folder / f".{JOB_FILE}.tmp"
        try:
            temporary.write_text(json.dumps(job.to_record()), encoding="utf-8")
            os.replace(temporary, job.folder / JOB_FILE)
        except OSError as err:
            logger.warning("could not save job %s: %s", job.id, err)

    def _reload(self) -> None:
        """Take back the jobs a previous server left in results_dir: finished ones stay, others queue again."""
        found: list[Job] = []
        for folder in self.settings.results_dir.iterdir():
            record_path = folder / JOB_FILE
            if not (JOB_ID_PATTERN.match(folder.name) and folder.is_dir() and record_path.is_file()):
                continue
            try:
                job = Job.from_record(folder, json.loads(record_path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning("ignoring job folder %s: unreadable job.json (%s)", folder.name, err)
                continue
            if not job.state.finished:
                self._reset_for_rerun(job)
            found.append(job)
        found.sort(key=lambda j: j.created_at)
        with self._lock:
            for job in found:
                self._jobs[job.id] = job
                if job.state is JobState.QUEUED:
                    self._queue.append(job)
        if found:
            logger.info("took back %d job(s) from %s, %d to run", len(found), self.settings.results_dir,
                        sum(j.state is JobState.QUEUED for j in found))

    def _reset_for_rerun(self, job: Job) -> None:
        for stale in job.folder.glob("chunk-*.mp4"):
            stale.unlink(missing_ok=True)
        for stale in job.folder.glob(".*.partial.mp4"):
            stale.unlink(missing_ok=True)
        job.video_path.unlink(missing_ok=True)
        job.state, job.started_at, job.progress = JobState.QUEUED, None, 0.0
        job.chunks_ready, job.num_chunks, job.has_video, job.step, job.total_steps = 0, None, False, None, None
        self._save(job)

    # ------------------------------------------------------------------ expiry
    def sweep_expired(self) -> None:
        now = time.time()
        with self._lock:
            finished = sorted((j for j in self._jobs.values() if j.state.finished and j.finished_at is not None),
                              key=lambda j: j.finished_at)
            excess = max(0, len(finished) - self.settings.max_finished_jobs)
            expired = [j for i, j in enumerate(finished)
                       if i < excess or now - j.finished_at > self.settings.result_ttl_s]
            for job in expired:
                self._jobs.pop(job.id, None)
        for job in expired:
            shutil.rmtree(job.folder, ignore_errors=True)
            logger.info("job %s expired and was removed", job.id)

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        self._load_model()
        while not self._stopping.is_set():
            job = self._next_job()
            if job is None:
                self.sweep_expired()
                continue
            try:
                self._run(job)
            except Exception:  # the worker must outlive any one job
                logger.exception("job %s: unexpected error in the worker", job.id)
                with self._lock:
                    self._finish(job, JobState.FAILED, "internal error in the server; see its log")
            finally:
                with self._lock:
                    self._running = None
                if job.delete_requested:
                    shutil.rmtree(job.folder, ignore_errors=True)
            self.sweep_expired()  # also between jobs, so a server that is never idle still expires results

    def _load_model(self) -> None:
        try:
            pipeline = self.pipeline_factory()
        except Exception as err:
            logger.exception("the model failed to load")
            self.model_error = _describe(err)
            self.model_state = "failed"
            self._fail_waiting_jobs()
            return
        self.pipeline = pipeline
        self.model_state = "ready"
        logger.info("model ready")

    def _fail_waiting_jobs(self) -> None:
        with self._lock:
            while self._queue:
                self._finish(self._queue.popleft(), JobState.FAILED, f"the model failed to load: {self.model_error}")

    def _next_job(self) -> Job | None:
        """The next queued job, or None after sweep_interval_s without one (or when stopping)."""
        with self._wake:
            if not self._queue and not self._stopping.is_set():
                self._wake.wait(self.settings.sweep_interval_s)
            if self._stopping.is_set() or not self._queue or self.pipeline is None:
                return None
            job = self._queue.popleft()
            self._running = job
            job.state, job.started_at = JobState.RUNNING, time.time()
            self._save(job)
            return job

    def _should_stop(self, job: Job) -> bool:
        return job.cancel_requested.is_set() or self._stopping.is_set()

    def _run(self, job: Job) -> None:
        from magi1.io.video import VideoWriter, write_video

        logger.info("job %s started", job.id)
        pipeline = self.pipeline
        fps = int(getattr(pipeline, "fps", 24))
        job.fps = fps
        kwargs = job.request.pipeline_kwargs()
        if job.request.mode == "i2v":
            kwargs["image"] = str(job.input_path)
        elif job.request.mode == "v2v":
            kwargs["video"] = str(job.input_path)
        writer = VideoWriter(job.video_path, fps=fps)
        try:
            # The callback takes any arguments and reads only dict events, so a pipeline that reports progress
            # in another shape still runs (without step progress) instead of failing the job.
            chunks = pipeline.stream(**kwargs,
                                     callback=lambda *event, **_: self._on_event(job, event[0] if event else None),
                                     should_stop=lambda: self._should_stop(job))
            for chunk in chunks:
                # The chunk file appears only once complete, so a client never fetches half a segment.
                write_video(job.chunk_path(chunk.index), chunk.frames, fps)
                writer.append(chunk.frames)
                with self._lock:
                    job.chunks_ready = chunk.index + 1
                    job.num_chunks = chunk.num_chunks
                    job.progress = max(job.progress, min(0.99, job.chunks_ready / max(1, chunk.num_chunks)))
                    self._save(job)
                if self._should_stop(job):
                    break
        except Exception as err:
            writer.abort()
            logger.warning("job %s failed: %s", job.id, err, exc_info=not _is_user_facing(err))
            with self._lock:
                self._finish(job, JobState.FAILED, _describe(err))
            return
        if self._stopping.is_set() and not job.cancel_requested.is_set():
            writer.abort()
            with self._lock:
                self._reset_for_rerun(job)  # the server is going down: run it again on the next start
            logger.info("job %s interrupted by shutdown; it will run again on restart", job.id)
            return
        if job.chunks_ready:
            writer.close()  # a cancelled job keeps the chunks it finished
        else:
            writer.abort()
        with self._lock:
            job.has_video = job.chunks_ready > 0
            self._finish(job, JobState.CANCELLED if job.cancel_requested.is_set() else JobState.DONE)
        logger.info("job %s %s after %d chunk(s)", job.id, job.state.value, job.chunks_ready)

    def _on_event(self, job: Job, event: dict) -> None:
        """Progress from the pipeline's callback: step events give a fine fraction, chunk events a coarse one."""
        if not isinstance(event, dict):
            return
        if event.get("type") == "step":
            self.previews.offer(job.id, self.pipeline, event)
        with self._lock:
            if event.get("type") == "step":
                step, total = event.get("step"), event.get("total_steps")
                if isinstance(step, int) and isinstance(total, int) and total > 0:
                    job.step, job.total_steps = step + 1, total
                    job.progress = max(job.progress, min(0.99, (step + 1) / total))
            elif event.get("type") == "chunk":
                num_chunks = event.get("num_chunks")
                if isinstance(num_chunks, int) and num_chunks > 0:
                    job.num_chunks = num_chunks

    def _finish(self, job: Job, state: JobState, error: str | None = None) -> None:
        """Move a job to a final state (caller holds the lock)."""
        job.state, job.error, job.finished_at = state, error, time.time()
        if state is JobState.DONE:
            job.progress = 1.0
        self._save(job)


def _is_user_facing(err: BaseException) -> bool:
    from magi1.errors import is_user_facing

    return is_user_facing(err)


def _describe(err: BaseException) -> str:
    """A message for the client: ours verbatim, anything else by type (the traceback goes to the log)."""
    text = str(err) if _is_user_facing(err) else f"{type(err).__name__}: {err}"
    return text[:MAX_ERROR_CHARS]
