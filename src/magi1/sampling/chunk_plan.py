"""Which chunks are in flight at each forward step, at which denoise step, and what they attend to.

A pure function of the chunk counts, the window and the step count: no model, no tensors.

MAGI-1 denoises up to `window_size` chunks at once, staggered: a chunk enters the window with step 0,
and the window slides by one chunk every `num_steps / window_size` forward steps ("a stage"), so the
oldest chunk in the window is always the least noisy. Every chunk gets all `num_steps` steps.
When the window has slid past a chunk that just finished, the next forward step (the first of the
stage) re-runs that chunk at t = clean_t in front of the window, so that its clean keys/values are
written to the KV cache ("the extra clean chunk"). Chunks [0, slice_point) of a call come from the cache.

Spans are the chunks each call chunk may attend to, [start, end) in absolute chunk indices; the model
expects them in tokens (x tokens per chunk), since its keys are [cached chunks | this call's chunks].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

DEFAULT_PREFIX_SPAN = 8  # official fallback span for prefix chunks when no span is configured


@dataclass(frozen=True)
class ForwardStep:
    """One forward step of the sampler (official counter `cur`)."""

    index: int  # 0 .. total - 1
    stage: int  # 0-based, counting from the first generated chunk
    substep: int  # step inside the stage (official `idx`)
    chunk_start: int  # the denoising window [chunk_start, chunk_end)
    chunk_end: int
    chunk_steps: tuple[int, ...]  # denoise step of each window chunk, oldest (highest step) first
    extra_clean_chunk: bool  # chunk_start - 1 is prepended at clean_t to write its KV
    slice_point: int  # chunks before this one are read from the cache; also the call's first chunk
    spans: tuple[tuple[int, int], ...]  # per call chunk (the extra one first), absolute chunk indices
    finished_chunk: int | None  # the chunk that is clean after this step's update (emit it), if any
    keep_from: int  # no later step attends to a chunk before this one (cache rows below may go)

    @property
    def call_chunks(self) -> range:
        """Chunks passed to the model in this step, the extra clean chunk included."""
        return range(self.slice_point, self.chunk_end)

    @property
    def window_chunks(self) -> range:
        return range(self.chunk_start, self.chunk_end)

    def key_ranges(self, tokens_per_chunk: int) -> list[tuple[int, int]]:
        """The spans in the model's key coordinates: token = chunk * tokens_per_chunk."""
        return [(start * tokens_per_chunk, end * tokens_per_chunk) for start, end in self.spans]


def _span(step: int, num_steps: int, noise2clean_kvrange: Sequence[int], clean_span: int) -> int | None:
    """How many chunks (itself included) a chunk at `step` sees; None means every earlier chunk."""
    if not noise2clean_kvrange:
        return None
    if step == num_steps:  # the extra clean chunk
        return clean_span
    steps_per_span = num_steps // len(noise2clean_kvrange)
    return int(noise2clean_kvrange[step // steps_per_span])


def _chunk_span(chunk: int, span: int | None) -> tuple[int, int]:
    end = chunk + 1
    return (0 if span is None else max(0, end - span), end)


def clean_span(noise2clean_kvrange: Sequence[int], clean_chunk_kvrange: int) -> int:
    """Span of a clean chunk whose KV is being cached: clean_chunk_kvrange, -1 meaning the last noise span."""
    if clean_chunk_kvrange != -1:
        return int(clean_chunk_kvrange)
    if noise2clean_kvrange:
        return int(noise2clean_kvrange[-1])
    return DEFAULT_PREFIX_SPAN


def prefix_spans(
    chunk_offset: int, noise2clean_kvrange: Sequence[int] = (), clean_chunk_kvrange: int = -1
) -> tuple[tuple[int, int], ...]:
    """Spans of the prefix chunks in the one call that caches their KV (v2v), in chunks.

    Unlike denoising calls, this one always uses a finite span (official fallback 8 when nothing is set).
    """
    span = clean_span(noise2clean_kvrange, clean_chunk_kvrange)
    return tuple(_chunk_span(c, span) for c in range(chunk_offset))


def plan_forward_steps(
    chunk_num: int,
    window_size: int,
    num_steps: int,
    chunk_offset: int = 0,
    noise2clean_kvrange: Sequence[int] = (),
    clean_chunk_kvrange: int = -1,
) -> tuple[ForwardStep, ...]:
    """Every forward step of a run that generates chunks [chunk_offset, chunk_num).

    chunk_offset counts the whole prefix chunks (v2v; 0 for t2v and i2v). They never enter a window:
    their KV is cached once before the first step.
    """
    if window_size <= 0 or num_steps <= 0 or num_steps % window_size:
        raise ValueError(f"num_steps ({num_steps}) must be a positive multiple of window_size ({window_size})")
    if noise2clean_kvrange and num_steps % len(noise2clean_kvrange):
        raise ValueError(f"num_steps ({num_steps}) must be divisible by len(noise2clean_kvrange) "
                         f"({len(noise2clean_kvrange)})")
    if not 0 <= chunk_offset < chunk_num:
        raise ValueError(f"need 0 <= chunk_offset ({chunk_offset}) < chunk_num ({chunk_num}): nothing to generate")
    steps_per_stage = num_steps // window_size
    stages = chunk_num - chunk_offset + window_size - 1
    clean = clean_span(noise2clean_kvrange, clean_chunk_kvrange) if noise2clean_kvrange else None

    plan = []
    for index in range(stages * steps_per_stage):
        stage, substep = divmod(index, steps_per_stage)
        newest = chunk_offset + stage  # the chunk entering the window in this stage (may be past the end)
        chunk_start = max(chunk_offset, newest - window_size + 1)
        chunk_end = min(chunk_num, newest + 1)
        # A chunk entered at stage (c - chunk_offset) and gains steps_per_stage steps per stage since.
        chunk_steps = tuple((newest - c) * steps_per_stage + substep for c in range(chunk_start, chunk_end))
        extra = chunk_start > chunk_offset and substep == 0
        slice_point = chunk_start - 1 if extra else chunk_start
        call_steps = ((num_steps,) if extra else ()) + chunk_steps
        spans = tuple(
            _chunk_span(c, _span(k, num_steps, noise2clean_kvrange, clean))
            for c, k in zip(range(slice_point, chunk_end), call_steps)
        )
        finished = chunk_start if chunk_steps[0] == num_steps - 1 else None
        plan.append((index, stage, substep, chunk_start, chunk_end, chunk_steps, extra, slice_point, spans, finished))

    # What later steps still read decides which cache rows may be dropped after each step.
    keep_from = [0] * len(plan)
    lowest = chunk_num
    for i in range(len(plan) - 1, -1, -1):
        keep_from[i] = lowest
        lowest = min(lowest, min(start for start, _ in plan[i][8]))
    return tuple(ForwardStep(*fields, keep_from=keep) for fields, keep in zip(plan, keep_from))


def chunk_counts(num_frames: int, prefix_latent_frames: int, chunk_width: int, temporal_downsample: int):
    """(infer_chunk_num, clean_chunk_num): all chunks of the latent video, and the whole prefix chunks.

    num_frames are the requested pixel frames; the prefix (0 for t2v, 1 for i2v, Tp for v2v) comes on top,
    and the total is rounded up to whole chunks: t2v 96 frames -> 4 chunks, i2v -> 5, v2v Tp=8 -> (6, 1).
    """
    latent = num_frames // temporal_downsample + prefix_latent_frames
    return math.ceil(latent / chunk_width), prefix_latent_frames // chunk_width


def emitted_frames(chunk: int, chunk_width: int, prefix_frames: int = 0) -> tuple[int, int]:
    """Latent frames [start, end) a finished chunk contributes to the output.

    Prefix frames are not output again, except the i2v image frame (chunk 0 with a 1-frame prefix):
    it is emitted as denoised, i.e. the image latent plus the last Euler increment.
    """
    start, end = chunk * chunk_width, (chunk + 1) * chunk_width
    if prefix_frames and not (chunk == 0 and prefix_frames == 1):
        start = max(start, prefix_frames)
    return start, end
