"""Prompt enhancement of a job (`"enhance": true` or a `story`), run by the worker just before the render.

It runs in the job, never in a request handler: the endpoint may take up to its timeout per request, and the
HTTP loop must keep answering meanwhile. The endpoint is the operator's (`magi1 serve --enhance_url
--enhance_model`, key from MAGI1_ENHANCE_API_KEY); without one the deterministic fallback templates are used,
so an enhanced job never waits on a model that is not there.

When the configured endpoint fails (unreachable, refused key, unknown model, timeout, an unusable story
answer), the job fails with one sentence saying so. It does not fall back to the templates: the client asked
for this server's model, and a video made from other captions would look like its answer.

The captions are saved in the job record before the render starts, so a job resumed after a restart keeps
them (a model asked again would answer differently); they go into the job's mp4 metadata as `magi1 generate
--enhance` writes them (prompting/prompts.py).
"""

from __future__ import annotations

import logging

from magi1.prompting import EnhanceError, EnhancedPrompts, EnhanceSettings, PromptEnhancer

from .job_record import Job

logger = logging.getLogger(__name__)

ENDPOINT_WORDS = "the server's enhancement endpoint"


class JobEnhanceError(EnhanceError):
    """Enhancement failed; the message is the client's (no endpoint address, no key)."""


def enhanced_prompts(store, job: Job) -> EnhancedPrompts | None:
    """The job's enhanced captions (made now, or recorded by an earlier run of it); None if it wants none."""
    request = job.request
    if not request.wants_enhancement:
        return None
    if job.enhanced is not None:
        return EnhancedPrompts.from_dict(job.enhanced)
    settings: EnhanceSettings = getattr(store, "enhance_settings", None) or EnhanceSettings()
    logger.info("job %s: enhancing its prompt with %s", job.id, settings.describe())
    try:
        result = _enhance(store, job, PromptEnhancer(settings))
    except EnhanceError as err:
        logger.warning("job %s: prompt enhancement failed: %s", job.id, settings.redact(str(err)))
        raise JobEnhanceError(f"prompt enhancement failed: {client_message(str(err), settings)}") from None
    store.update(job, enhanced=result.to_dict(), save=True)
    logger.info("job %s: prompt enhanced by %s (%d caption(s))", job.id, result.enhancer,
                len(result.chunk_prompts or {0: result.prompt}))
    return result


def _enhance(store, job: Job, enhancer: PromptEnhancer) -> EnhancedPrompts:
    request = job.request
    fps = int(getattr(store.pipeline, "fps", 24))
    inputs = dict(mode=request.mode, fps=fps,
                  image=str(job.input_path) if request.mode == "i2v" else None,
                  video=str(job.input_path) if request.mode == "v2v" else None)
    if request.story is None:
        return enhancer.enhance_schedule(request.prompt, request.chunk_prompts, **inputs)
    story, beats = (request.story, None) if isinstance(request.story, str) else (None, list(request.story))
    num_chunks, seconds = story_shape(store, job)
    return enhancer.enhance_story(story, beats=beats, num_chunks=num_chunks, seconds_per_chunk=seconds, **inputs)


def story_shape(store, job: Job) -> tuple[int, float]:
    """(generated chunks, seconds per chunk) of this job's run: what story mode plans its shots over."""
    from magi1.prompting.run_shape import generated_chunk_count, seconds_per_chunk

    config = store.config
    if config is None:
        raise EnhanceError("story mode needs the model's config to know the run's chunk count, and this "
                           "pipeline has none")
    if job.request.num_frames is not None:
        config = config.replace(num_frames=job.request.num_frames)
    try:
        num_chunks = generated_chunk_count(config, job.request.mode,
                                           str(job.input_path) if job.request.mode == "v2v" else None)
    except (OSError, ValueError) as err:
        raise EnhanceError(f"the run's chunk count is unknown ({err})") from None
    return num_chunks, seconds_per_chunk(config)


def client_message(text: str, settings: EnhanceSettings) -> str:
    """An enhancer error as the client reads it: without the key, and without the endpoint's address
    (the operator's internal host; the server log has it)."""
    text = settings.redact(text)
    if settings.url:
        text = text.replace(settings.url, ENDPOINT_WORDS)
    return text
