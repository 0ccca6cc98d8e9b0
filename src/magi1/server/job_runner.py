"""Running one job in the worker thread: the pipeline's chunk stream into chunk files and the job's video.

- Progress comes from the pipeline's callback (step events, 1-based, capped at their total).
- After every finished chunk the pipeline hands over its resume state, saved in the job folder; a job
  interrupted by a shutdown is left queued and, on the next start, continues after that chunk with the same
  inputs and noise, so it ends with the same video as an uninterrupted run.
- A cancel (or a shutdown) stops the run at the next step. A cancelled job keeps the chunks it finished,
  and its video of those chunks is closed properly, so it plays.
- Failures reach the client as one sentence with no server path; the traceback goes to the log.
- A job that asks for prompt enhancement gets its captions first (job_enhance.py); they replace the
  request's prompts for the render and are written into the video's metadata.
"""

from __future__ import annotations

import inspect
import logging
import sys

from .errors import scrub_paths
from .job_record import Job, JobState

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


def run_job(store, job: Job) -> None:
    from .job_enhance import JobEnhanceError, enhanced_prompts

    logger.info("job %s started", job.id)
    try:
        enhanced = enhanced_prompts(store, job)  # before the render, in this thread (job_enhance.py)
    except JobEnhanceError as err:
        store.finish(job, JobState.FAILED, describe_error(err))
        return
    resume_state = _load_resume_state(job)
    try:
        _render(store, job, resume_state, enhanced)
    except _ResumeRefused as refused:
        # The saved state belongs to another run (the model or its config changed between starts).
        logger.warning("job %s: its resume state cannot be used (%s); running it from the start", job.id,
                       refused.reason)
        job.resume_path.unlink(missing_ok=True)
        store.update(job, resumable_chunks=0, chunks_ready=0, progress=0.0, save=True)
        _render(store, job, None, enhanced)


def _with_run_settings(store, pipeline, mode: str, kwargs: dict, metadata):
    """The job's settings in its mp4's tags, as `magi1 generate` writes them (magi1.run_tags); left out for a
    pipeline without a MagiConfig (the tests' fakes)."""
    from magi1.config import MagiConfig
    from magi1.errors import InputError
    from magi1.preflight import call_config
    from magi1.run_tags import run_settings, with_run_settings

    config = getattr(pipeline, "config", None)
    if not isinstance(config, MagiConfig):
        return metadata
    try:
        config = call_config(config, num_frames=kwargs["num_frames"], height=kwargs["height"], width=kwargs["width"],
                             num_inference_steps=kwargs["num_inference_steps"], seed=kwargs["seed"])
    except InputError:  # the render refuses it in its own words
        return metadata
    prompt, chunk_prompts = kwargs["prompt"], kwargs["chunk_prompts"]
    if chunk_prompts and prompt and 0 not in {int(k) for k in chunk_prompts}:
        # The prompt captions the chunks before the first entry: recorded as chunk 0, as `magi1 generate` does,
        # or the tags (and so the description) would lose it.
        chunk_prompts = {0: prompt, **{int(k): v for k, v in chunk_prompts.items()}}
    settings = run_settings(config, config_name=getattr(store, "model_id", "magi1"), mode=mode,
                            prompt=prompt, chunk_prompts=chunk_prompts)
    return with_run_settings(metadata, settings)


class _ResumeRefused(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _render(store, job: Job, resume_state, enhanced=None) -> None:
    from magi1.io.chunked_mp4 import ChunkedMp4Writer
    from magi1.io.video import write_video

    from .live_jobs import live_job_of

    pipeline = store.pipeline
    live = live_job_of(store, job)  # someone watches it over WS /v1/realtime/video
    fps = int(getattr(pipeline, "fps", 24))
    kwargs = job.request.pipeline_kwargs()
    metadata = None
    if enhanced is not None:  # EnhancedPrompts: its captions replace the request's, and go into the mp4
        kwargs["prompt"] = enhanced.prompt
        kwargs["chunk_prompts"] = dict(enhanced.chunk_prompts) if enhanced.chunk_prompts else None
        metadata = enhanced.video_metadata()
    metadata = _with_run_settings(store, pipeline, job.request.mode, kwargs, metadata)
    if job.request.mode == "i2v":
        kwargs["image"] = str(job.input_path)
    elif job.request.mode == "v2v":
        kwargs["video"] = str(job.input_path)
    accepted = _keyword_names(pipeline.stream)
    if live is not None and "live_prompts" in accepted:
        kwargs["live_prompts"] = live.prompts
    if "on_state" in accepted:
        kwargs["on_state"] = lambda state: _save_resume_state(store, job, state)
    if resume_state is not None and "resume_state" in accepted:
        kwargs["resume_state"] = resume_state
    resumed = resume_state.finished_chunks if resume_state is not None and "resume_state" in kwargs else 0
    store.update(job, fps=fps, resumed_chunks=resumed, save=True)
    if resumed:
        logger.info("job %s resumes after chunk %d", job.id, resumed - 1)

    # Each chunk encoded on its own, as `magi1 generate` writes it: the same seed gives the same frames from
    # the CLI, the server and a live session, and a resumed job re-encodes its first chunks to the same bytes.
    writer = live.video_writer(job.video_path, fps, metadata) if live is not None \
        else ChunkedMp4Writer(job.video_path, fps=fps, metadata=metadata)
    emitted = 0
    try:
        # The callback reads only dict events, so a pipeline reporting progress in another shape still runs.
        chunks = pipeline.stream(**kwargs, callback=lambda *event, **_: _on_event(store, job, event),
                                 should_stop=lambda: store.should_stop(job))
        for chunk in chunks:
            # The chunk file appears only once complete, so a client never fetches half a segment.
            path = write_video(job.chunk_path(chunk.index), chunk.frames, fps)
            writer.append(chunk.frames)
            emitted += 1
            if live is not None:  # saved with the chunk: the record is the one place a live prompt change is kept
                captions = (job.live_captions or [])[: chunk.index] + [live.caption_prompt(chunk.index)]
                store.update(job, live_captions=captions)
            store.on_chunk(job, chunk.index, chunk.num_chunks, _size(path))
            if live is not None:
                live.chunk_done(chunk.index, chunk.num_chunks)  # its metadata and fragment, to the viewer
            if store.should_stop(job):
                break
    except Exception as err:
        if not (store.should_stop(job) and _is_cancellation(err)):  # a stop between two steps is not a failure
            _discard(writer)
            if resume_state is not None and emitted == 0 and _is_user_facing(err) and "resume" in str(err):
                raise _ResumeRefused(str(err)) from None
            logger.warning("job %s failed: %s", job.id, err, exc_info=not _is_user_facing(err))
            store.finish(job, JobState.FAILED, describe_error(err))
            return

    # A resumed run re-yields the chunks it took over, so `emitted` counts every chunk of the video.
    complete = job.num_chunks is not None and emitted >= job.num_chunks > 0
    if store.stopping and not job.cancel_requested.is_set() and not complete:
        _discard(writer)
        store.requeue_interrupted(job)  # resumes after its last finished chunk on the next start
        logger.info("job %s interrupted by shutdown after %d chunk(s); it resumes on restart", job.id,
                    job.resumable_chunks)
        return
    if emitted < job.chunks_ready:  # cancelled while re-reading a resumed job's chunks: keep what the video has
        for index in range(emitted, job.chunks_ready):
            job.chunk_path(index).unlink(missing_ok=True)
        store.update(job, chunks_ready=emitted)
    has_video = emitted > 0
    if has_video:
        writer.close()  # a cancelled job keeps the chunks it finished, as a playable video
    else:
        _discard(writer)
    state = JobState.DONE if complete else JobState.CANCELLED
    store.finish(job, state, has_video=has_video)
    logger.info("job %s %s after %d chunk(s)", job.id, state.value, job.chunks_ready)


def _discard(writer) -> None:
    """Stop the job's writer and remove its unfinished file: a job's finished chunks are kept as chunk files, and
    a resumed job writes its video afresh."""
    writer.abort()
    partial = getattr(writer, "partial_path", None)
    if partial is not None and partial != writer.path:
        partial.unlink(missing_ok=True)


def _on_event(store, job: Job, event: tuple) -> None:
    event = event[0] if event else None
    if not isinstance(event, dict):
        return
    if event.get("type") == "step":
        store.previews.offer(job.id, store.pipeline, event)
        store.on_progress(job, event.get("step"), event.get("total_steps"))
    elif event.get("type") == "chunk" and isinstance(event.get("num_chunks"), int) and event["num_chunks"] > 0:
        store.update(job, num_chunks=event["num_chunks"])


# ---------------------------------------------------------------------------------------------- resume state
def _resume_state_class():
    try:
        from magi1.run_state import ResumeState  # the shared run-state module, where it exists
    except ImportError:
        from magi1.pipeline import ResumeState
    return ResumeState


def _load_resume_state(job: Job):
    if not job.resumable_chunks or not job.resume_path.is_file():
        return None
    try:
        return _resume_state_class().load(job.resume_path)
    except Exception as err:  # a damaged file: run from the start rather than fail the job
        logger.warning("job %s: unreadable resume state (%s); running it from the start", job.id, err)
        return None


def _save_resume_state(store, job: Job, state) -> None:
    state.save(job.resume_path)
    store.update(job, resumable_chunks=int(state.finished_chunks), save=True)


# ---------------------------------------------------------------------------------------------- helpers
def _keyword_names(func) -> set[str]:
    """The keywords `func` names. A catch-all **kwargs does not count: a wrapper that forwards it to a
    pipeline without resume would fail every job on an argument it cannot take."""
    try:
        parameters = inspect.signature(func).parameters.values()  # follows functools.wraps
    except (TypeError, ValueError):
        return set()
    return {p.name for p in parameters if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                     inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def _is_cancellation(err: BaseException) -> bool:
    """The pipeline's own "stopped because should_stop() said so" (only if the pipeline module is loaded)."""
    for module_name in ("magi1.pipeline", "magi1.run_state"):
        cancelled = getattr(sys.modules.get(module_name), "GenerationCancelled", None)
        if isinstance(cancelled, type) and isinstance(err, cancelled):
            return True
    return False


def _is_user_facing(err: BaseException) -> bool:
    from magi1.errors import is_user_facing

    return is_user_facing(err)


def describe_error(err: BaseException) -> str:
    """A message for the client: ours (paths removed), or just the kind of an internal error."""
    if _is_user_facing(err):
        text = scrub_paths(str(err))
    else:
        text = f"internal error in the server ({type(err).__name__}); its log has the details"
    return text[:MAX_ERROR_CHARS]


def _size(path) -> int:
    try:
        return path.stat().st_size
    except (OSError, AttributeError):
        return 0

