"""A submitted job checked against the model's config (not the loaded model, so it works while it loads).

Thin adapter until `magi1.request` (the one validated generation request shared by the CLI, the Python API
and the server) lands: then `check_job_against_config` calls its `check(config, limits)` instead of the
few config checks below, and keeps only the cost budget, which is the server's own.
"""

from __future__ import annotations

import math

from .cost import JobCost, check_cost
from .errors import scrub_paths
from .job_request import BadRequest, JobRequest
from .settings import ServerSettings


def check_job_against_config(job_request: JobRequest, config, settings: ServerSettings) -> JobCost:
    """Refuse what the config cannot run, or what costs more than the budget; return the job's cost."""
    from magi1.config import ConfigError

    overrides = {key: value for key, value in (("video_size_h", job_request.height),
                                               ("video_size_w", job_request.width),
                                               ("num_frames", job_request.num_frames),
                                               ("num_steps", job_request.steps), ("seed", job_request.seed))
                 if value is not None}
    if job_request.steps is not None:
        _check_step_multiple(job_request.steps, config.runtime_config)
    try:
        call_config = config.replace(**overrides) if overrides else config
    except ConfigError as err:
        reason = str(err).replace("invalid config:\n  - ", "").replace("\n  - ", "; ")
        raise BadRequest(f"the model cannot run these settings: {scrub_paths(reason)}") from None
    r = call_config.runtime_config
    prefix_latent_frames = {"t2v": 0, "i2v": 1}.get(job_request.mode)
    if prefix_latent_frames is not None:  # v2v: the prefix length is known once the video is read
        latent_frames = r.num_frames // r.temporal_downsample_factor + prefix_latent_frames
        generated = math.ceil(latent_frames / r.chunk_width) - prefix_latent_frames // r.chunk_width
        if generated < 1 or r.num_frames < r.temporal_downsample_factor:
            raise BadRequest(f"num_frames {r.num_frames} gives no new chunk to generate; ask for at least "
                             f"{r.temporal_downsample_factor} frames (one latent frame is "
                             f"{r.temporal_downsample_factor} frames)")
        beyond = sorted(k for k in (job_request.chunk_prompts or {}) if k >= generated)
        if beyond:
            raise BadRequest(f"a chunk prompt is given for chunk {beyond[0]}, but this job generates {generated} "
                             f"chunk(s); ask for more frames or drop it")
    return check_cost(job_request, config.runtime_config, settings)


def _check_step_multiple(steps: int, runtime) -> None:
    """One sentence in the client's terms for the config's two divisibility rules on num_steps (its window and
    its noise-to-clean stages), which the config states in its own field names."""
    stages = [n for n in (int(runtime.window_size), len(runtime.noise2clean_kvrange or ())) if n > 0]
    multiple = math.lcm(*stages) if stages else 1
    if steps % multiple:
        raise BadRequest(f"the number of denoising steps must be a multiple of {multiple} on this model (the steps "
                         f"are shared out evenly over its {runtime.window_size}-chunk denoising window), got {steps}")
