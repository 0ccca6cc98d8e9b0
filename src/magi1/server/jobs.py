"""The job store: accepted jobs, a bounded queue of waiting ones, retention, and the one worker thread.

One worker per model, because the GPU (or the CPU) is the bottleneck: two jobs at once would each run at
half speed and need twice the memory. Every job lives in its own folder (job_record.py). Because job.json
is on disk, a server restarted on the same results folder takes back what it had accepted: queued jobs
run, interrupted ones resume after their last finished chunk, results stay listed.

Consistency: every change of a job's state, the queue or the job table happens under one lock, and a job
folder appears whole (it is filled as <results_dir>/.incoming-<id>, then renamed), so a crash or a refusal
half-way through a submission leaves nothing a later server would take for a job.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .clients import SHARED_CLIENT, client_key
from .cost import JobCost
from .job_record import JOB_FILE, JOB_ID_PATTERN, STAGING_PREFIX, Job, JobState
from .job_request import JobRequest
from .list_cursors import GoneCursors
from .previews import JobPreviews
from .results_folder import folder_bytes, free_disk_bytes, hold_results_folder
from .settings import GiB, ServerSettings

logger = logging.getLogger(__name__)

__all__ = ["Job", "JobState", "JobStore", "QueueFull", "ModelUnavailable", "ClientOverLimit", "LowDisk",
           "Refusal", "StagedJob"]


class Refusal(Exception):
    """A valid job the server cannot take now; `status` is the HTTP answer."""

    status = 503
    retry_after: int | None = None


class QueueFull(Refusal):
    status, retry_after = 429, 10


class ClientOverLimit(Refusal):
    status, retry_after = 429, 30


class ModelUnavailable(Refusal):
    status = 503


class LowDisk(Refusal):
    status = 507


@dataclass
class StagedJob:
    """A submission being checked: its files go into `folder`, which becomes the job folder on commit."""

    id: str
    folder: Path


class JobStore:
    """Thread-safe: HTTP handlers call stage/commit/get/page/cancel/delete while the worker runs jobs."""

    def __init__(self, settings: ServerSettings, pipeline_factory: Callable[[], Any], config=None):
        self.settings = settings
        self.pipeline_factory = pipeline_factory
        self._config = config
        self.previews = JobPreviews()  # the newest latent preview of each running job, for the page
        self.pipeline = None
        self.model_state = "loading"          # loading | ready | failed
        self.model_error: str | None = None
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._running: Job | None = None
        self._folder_lock = None
        self._gone = GoneCursors()  # removed jobs' places in the list, for page cursors that name them

    @property
    def config(self):
        """The model's config (MagiConfig) if known: given up front, or the loaded pipeline's."""
        if self._config is not None:
            return self._config
        config = getattr(self.pipeline, "config", None)
        return config if hasattr(config, "replace") and hasattr(config, "runtime_config") else None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def unfinished_count(self) -> int:
        with self._lock:
            return sum(not j.state.finished for j in self._jobs.values())

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Lock the results folder (ResultsFolderBusy if another server holds it), take back its jobs, work."""
        self._folder_lock = hold_results_folder(self.settings.results_dir)
        self._reload()
        self._worker = threading.Thread(target=self._work, name="magi1-worker", daemon=True)
        self._worker.start()

    def request_stop(self) -> None:
        """Tell the worker to stop at its next step (safe from a signal handler: it only sets a flag)."""
        self._stopping.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the worker; a running job stops at its next step and resumes on restart. True once stopped."""
        timeout = self.settings.worker_stop_s if timeout is None else timeout
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                logger.warning("the running job did not reach a step boundary within %.0fs; it resumes from its "
                               "last finished chunk on restart", timeout)
                return False
        if self._folder_lock is not None:
            self._folder_lock.release()
            self._folder_lock = None
        return True

    # ------------------------------------------------------------------ submissions
    def stage(self) -> StagedJob:
        """A fresh id and a hidden folder for a submission whose files are still being checked."""
        self.settings.results_dir.mkdir(parents=True, exist_ok=True)
        while True:
            job_id = secrets.token_hex(16)
            folder = self.settings.results_dir / f"{STAGING_PREFIX}{job_id}"
            try:
                folder.mkdir()
                return StagedJob(job_id, folder)
            except FileExistsError:
                continue

    def discard(self, staged: StagedJob) -> None:
        """Give up a staged submission (it was refused)."""
        shutil.rmtree(staged.folder, ignore_errors=True)

    def commit(self, staged: StagedJob, request: JobRequest, *, client: str = SHARED_CLIENT,
               cost: JobCost | None = None) -> Job:
        """Queue a checked submission, or raise a Refusal (the caller discards the staged folder)."""
        key = client_key(client)
        with self._wake:
            refusal = self._refusal(key)
            if refusal is not None:
                raise refusal
            job = Job(id=staged.id, folder=staged.folder, request=request, client=key, cost=cost,
                      disk_bytes=folder_bytes(staged.folder))
            self._save(job)
            final = self.settings.results_dir / staged.id
            os.rename(staged.folder, final)  # the job folder appears whole, with its job.json
            job.folder = final
            self._jobs[job.id] = job
            self._queue.append(job)
            self._wake.notify_all()
        logger.info("job %s queued (%s)", job.id, request.mode)
        return job

    def check_capacity(self, client: str = SHARED_CLIENT) -> None:
        """Raise the Refusal a submission from `client` would get now (cheap; commit checks again)."""
        with self._lock:
            refusal = self._refusal(client_key(client))
        if refusal is not None:
            raise refusal

    def _refusal(self, key: str) -> Refusal | None:
        """Why a new job from client `key` cannot be accepted now, or None (caller holds the lock)."""
        s = self.settings
        if self.model_state == "failed":
            return ModelUnavailable(f"the model failed to load: {self.model_error}")
        try:
            free = free_disk_bytes(s.results_dir)
        except OSError:
            free = None
        if free is not None and free < s.min_free_disk_bytes:
            return LowDisk(f"the server is low on disk space ({free / GiB:.2f} GiB free, new jobs need at least "
                           f"{s.min_free_disk_bytes / GiB:.2f} GiB); try again once old results have expired")
        if len(self._queue) >= s.max_queue:
            return QueueFull(f"the queue is full ({s.max_queue} jobs waiting); try again later")
        mine = [j for j in self._jobs.values() if j.client == key]
        unfinished = sum(not j.state.finished for j in mine)
        if unfinished >= s.max_jobs_per_client:
            return ClientOverLimit(f"you already have {unfinished} unfinished jobs, the most one client may have "
                                   f"here; wait for one to finish or cancel one")
        stored = sum(j.disk_bytes for j in mine)
        if stored >= s.max_bytes_per_client:
            return ClientOverLimit(f"your results take {stored / GiB:.2f} GiB, the most one client may keep here "
                                   f"({s.max_bytes_per_client / GiB:.2f} GiB); delete some jobs or wait for them "
                                   f"to expire")
        return None

    # ------------------------------------------------------------------ reading
    def get(self, job_id: str, client: str | None = None) -> Job | None:
        """The job, or None if there is none with this id that `client` (when given) may see."""
        if not JOB_ID_PATTERN.match(job_id or ""):
            return None
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (client is not None and job.client != client_key(client)):
            return None
        return job

    def list(self, client: str | None = None) -> list[Job]:
        """Jobs newest first (only `client`'s when given)."""
        key = None if client is None else client_key(client)
        with self._lock:
            jobs = [j for j in self._jobs.values() if key is None or j.client == key]
        return sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)

    def page(self, client: str | None, *, limit: int, after: str | None = None,
             order: str = "desc") -> tuple[list[Job], bool]:
        """One page of `list`, as OpenAI list endpoints page: the `limit` jobs after the one with id `after`.

        `after` may name a job since deleted or expired (its place is remembered: list_cursors.py). Raises
        KeyError when it names no job this client has seen.
        """
        jobs = self.list(client)
        if order == "asc":
            jobs.reverse()
        if after:
            cursor = next(((j.created_at, j.id) for j in jobs if j.id == after), None) or \
                self._gone.sort_key(after, None if client is None else client_key(client))
            if cursor is None:
                raise KeyError(after)
            jobs = [j for j in jobs if ((j.created_at, j.id) > cursor if order == "asc" else
                                        (j.created_at, j.id) < cursor)]
        return jobs[:limit], len(jobs) > limit

    def snapshot(self, job: Job) -> dict:
        """A consistent copy of a job's fields, for the API (the worker may be updating them)."""
        with self._lock:
            record = job.to_record()
            total = job.total_steps
            record.update(step=None if job.step is None else min(job.step, total or job.step), total_steps=total,
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

    # ------------------------------------------------------------------ client changes
    def cancel(self, job: Job, *, stopped: bool = False) -> str:
        """Cancel a queued or running job: "cancelled", "cancelling", "finished" (too late) or "gone".

        stopped: the client ended the video on purpose (a live session.stop): its finished chunks are the video.
        """
        with self._wake:
            if job.delete_requested or self._jobs.get(job.id) is not job:
                return "gone"
            if job.state.finished:
                return "finished"
            job.stopped = job.stopped or stopped
            job.cancel_requested.set()
            if job.state is JobState.QUEUED:
                if job in self._queue:
                    self._queue.remove(job)
                self._finish(job, JobState.CANCELLED)
                outcome = "cancelled"
            else:
                outcome = "cancelling"
            self._wake.notify_all()
        logger.info("job %s cancel requested", job.id)
        return outcome

    def delete(self, job: Job) -> bool:
        """Forget a job and remove its folder (a running one is stopped first); False if already gone."""
        with self._wake:
            if job.delete_requested or self._jobs.get(job.id) is not job:
                return False
            self._jobs.pop(job.id, None)
            self._gone.remember(job.id, job.client, job.created_at)
            job.delete_requested = True
            job.cancel_requested.set()
            if job in self._queue:
                self._queue.remove(job)
            running = job is self._running
        self.previews.forget(job.id)
        if not running:
            shutil.rmtree(job.folder, ignore_errors=True)
        logger.info("job %s deleted", job.id)
        return True

    # ------------------------------------------------------------------ the worker's changes
    def update(self, job: Job, *, save: bool = False, **fields) -> None:
        with self._lock:
            for name, value in fields.items():
                setattr(job, name, value)
            if save:
                self._save(job)

    def on_progress(self, job: Job, step: Any, total: Any) -> None:
        """A step event: never past its total, never backwards."""
        if not (isinstance(step, int) and isinstance(total, int) and total > 0):
            return
        with self._lock:
            job.step, job.total_steps = min(max(step, 0), total), total
            job.progress = max(job.progress, min(0.99, job.step / total))

    def on_chunk(self, job: Job, index: int, num_chunks: int, chunk_bytes: int) -> None:
        with self._lock:
            if index >= job.chunks_ready:
                job.disk_bytes += chunk_bytes
            job.chunks_ready = max(job.chunks_ready, index + 1)
            job.num_chunks = num_chunks
            job.progress = max(job.progress, min(0.99, job.chunks_ready / max(1, num_chunks)))
            self._save(job)

    def should_stop(self, job: Job) -> bool:
        return job.cancel_requested.is_set() or self._stopping.is_set()

    def finish(self, job: Job, state: JobState, error: str | None = None, *, has_video: bool = False) -> None:
        with self._lock:
            job.has_video = has_video
            job.resumable_chunks = 0
            job.resume_path.unlink(missing_ok=True)
            job.disk_bytes = folder_bytes(job.folder)
            self._finish(job, state, error)

    def requeue_interrupted(self, job: Job) -> None:
        """The server is stopping mid-job: leave it queued on disk, to resume on the next start."""
        with self._lock:
            job.state, job.started_at, job.step = JobState.QUEUED, None, None
            self._save(job)

    def _finish(self, job: Job, state: JobState, error: str | None = None) -> None:
        """Move a job to a final state (caller holds the lock)."""
        job.state, job.error, job.finished_at = state, error, time.time()
        job.stopped = job.stopped and state is JobState.CANCELLED  # a stop that came too late changed nothing
        if state is JobState.DONE:
            job.progress = 1.0
        self._save(job)

    # ------------------------------------------------------------------ persistence
    def _save(self, job: Job) -> None:
        """Rewrite job.json atomically (caller holds the lock)."""
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
            if folder.name.startswith(STAGING_PREFIX):
                shutil.rmtree(folder, ignore_errors=True)  # a submission that never completed
                continue
            record_path = folder / JOB_FILE
            if not (JOB_ID_PATTERN.match(folder.name) and folder.is_dir() and record_path.is_file()):
                continue
            try:
                job = Job.from_record(folder, json.loads(record_path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning("ignoring job folder %s: unreadable job.json (%s)", folder.name, err)
                continue
            if not job.client:
                job.client = client_key(SHARED_CLIENT)
            if job.state.finished:
                job.resume_path.unlink(missing_ok=True)
            elif (job.request.video_api or {}).get("live"):
                self._abandon_live(job)
            else:
                self._prepare_rerun(job)
            found.append(job)
        found.sort(key=lambda j: j.created_at)
        with self._lock:
            for job in found:
                self._jobs[job.id] = job
                if job.state is JobState.QUEUED:
                    self._queue.append(job)
        if found:
            logger.info("took back %d job(s) from the results folder, %d to run", len(found),
                        sum(j.state is JobState.QUEUED for j in found))

    def _abandon_live(self, job: Job) -> None:
        """A live video the previous server died streaming: its viewer is gone, as when a viewer disconnects,
        so it is not made again for nobody (with the prompt changes it had lost, besides). It fails, saying why;
        the chunks it finished stay under /v1/jobs/{id}/chunks."""
        from magi1.io.video import partial_path_for

        for stale in (job.video_path, partial_path_for(job.video_path), job.resume_path):
            stale.unlink(missing_ok=True)
        present = 0
        while present < job.chunks_ready and job.chunk_path(present).is_file():
            present += 1
        job.chunks_ready, job.has_video, job.resumable_chunks = present, False, 0
        job.disk_bytes = folder_bytes(job.folder)
        self._finish(job, JobState.FAILED, "the server stopped while this live video was streamed, and its viewer "
                                           "is gone; its finished chunks are kept")

    def _prepare_rerun(self, job: Job) -> None:
        """Queue an unfinished job again, keeping the chunks its resume state covers."""
        from magi1.io.video import partial_path_for

        keep = job.resumable_chunks if job.resume_path.is_file() else 0
        present = 0
        while present < keep and job.chunk_path(present).is_file():
            present += 1
        for stale in job.folder.glob("chunk-*.mp4"):
            index = stale.stem.split("-")[-1]
            if not (index.isdigit() and int(index) < present):
                stale.unlink(missing_ok=True)
        for stale in (job.video_path, partial_path_for(job.video_path)):
            stale.unlink(missing_ok=True)
        if not keep:
            job.resume_path.unlink(missing_ok=True)
        job.resumable_chunks = keep
        job.state, job.started_at, job.step, job.total_steps = JobState.QUEUED, None, None, None
        job.chunks_ready, job.has_video = present, False
        job.progress = min(0.99, present / job.num_chunks) if job.num_chunks else 0.0
        job.disk_bytes = folder_bytes(job.folder)
        with self._lock:
            self._save(job)

    # ------------------------------------------------------------------ retention
    def sweep_expired(self) -> None:
        """Delete finished jobs, oldest first: past the age limit, beyond the count, or while over the bytes."""
        s, now = self.settings, time.time()
        with self._lock:
            finished = sorted((j for j in self._jobs.values() if j.state.finished),
                              key=lambda j: j.finished_at or j.created_at)
            total_bytes = sum(j.disk_bytes for j in self._jobs.values())
            excess = max(0, len(finished) - s.max_finished_jobs)
            expired = []
            for index, job in enumerate(finished):
                if index < excess or now - (job.finished_at or job.created_at) > s.result_ttl_s \
                        or total_bytes > s.max_results_bytes:
                    expired.append(job)
                    total_bytes -= job.disk_bytes
            for job in expired:
                self._jobs.pop(job.id, None)
                self._gone.remember(job.id, job.client, job.created_at)
                job.delete_requested = True
        for job in expired:
            shutil.rmtree(job.folder, ignore_errors=True)
            logger.info("job %s expired and was removed", job.id)

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        from .job_runner import run_job

        self._load_model()
        while not self._stopping.is_set():
            job = self._next_job()
            if job is None:
                self.sweep_expired()
                continue
            try:
                run_job(self, job)
            except Exception:  # the worker must outlive any one job
                logger.exception("job %s: unexpected error in the worker", job.id)
                self.finish(job, JobState.FAILED, "internal error in the server; its log has the details")
            finally:
                with self._lock:
                    self._running = None
                if job.delete_requested:
                    shutil.rmtree(job.folder, ignore_errors=True)
            self.sweep_expired()  # also between jobs, so a server that is never idle still expires results

    def _load_model(self) -> None:
        from .job_runner import describe_error

        try:
            pipeline = self.pipeline_factory()
        except Exception as err:
            logger.exception("the model failed to load")
            self.model_error = describe_error(err)
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
                # Often enough that a short retention is kept to within a tenth of it.
                self._wake.wait(min(self.settings.sweep_interval_s, max(0.2, self.settings.result_ttl_s / 10)))
            if self._stopping.is_set() or not self._queue or self.pipeline is None:
                return None
            job = self._queue.popleft()
            self._running = job
            job.state, job.started_at = JobState.RUNNING, time.time()
            self._save(job)
            return job
