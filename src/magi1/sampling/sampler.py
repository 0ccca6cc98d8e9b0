"""The autoregressive chunk sampler: a generator that yields each chunk's latents the moment it is clean.

One forward step (see chunk_plan): slice the window out of the latent video, prepend the just-finished
chunk at clean_t when its KV must be cached, overwrite prefix frames (i2v image, v2v partial chunk),
get a velocity from the guidance passes, take an Euler step in float32, emit the chunk that finished.

Conditioning comes from `conditioning.build_conditioning`; the number of chunks is y.shape[1].
The latent video, time grid and Euler state live on y's device, float32 throughout.

Resuming an interrupted run, exactly: save `(step.index + 1, latent)` from the callback after a step that
finished a chunk, and later pass it back as `resume_from`. The state holds every chunk, the finished ones
and the half-denoised ones in flight; the only other state, the KV cache, is rebuilt by replaying the
clean re-encode of each chunk that had been re-encoded (`replay_clean_chunks`), and the loop continues
at the saved step. (A looser alternative: `resume_prefix` turns the finished chunks into a v2v prefix.)
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..runtime import cpu_generator
from .chunk_plan import ForwardStep, chunk_counts, emitted_frames, plan_forward_steps, prefix_spans  # noqa: F401 (re-exported)
from .guidance import (
    DEFAULT_PREV_CHUNKS_SCALE,
    WindowCall,
    batched_spans,
    distilled_velocity,
    is_nearly_clean,
    three_pass_velocity,
)
from .schedule import distill_step_size, step_intervals, time_grid

StepCallback = Callable[[ForwardStep, torch.Tensor], "torch.Tensor | None"]
# chunk index -> the conditional caption rows (B, Lc, Ct) and masks (B, Lc) to use for it instead, or None.
CaptionRows = Callable[[int], "tuple[torch.Tensor, torch.Tensor] | None"]


# ---------------------------------------------------------------------------------------------- sizes
def resume_prefix(finished_chunks: Sequence[torch.Tensor], prefix_latent: torch.Tensor | None = None,
                  chunk_width: int = 6) -> torch.Tensor:
    """The prefix that continues a run whose first chunks were emitted: kept prefix frames + emitted frames."""
    if not finished_chunks:
        raise ValueError("nothing to resume from: no finished chunks")
    tp = 0 if prefix_latent is None else prefix_latent.shape[2]
    first = emitted_frames(tp // chunk_width, chunk_width, tp)[0]  # the first generated chunk's first frame
    kept = [] if prefix_latent is None or first == 0 else [prefix_latent[:, :, :first].to(torch.float32)]
    return torch.cat(kept + [c.to(torch.float32) for c in finished_chunks], dim=2)


def initial_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """Standard normal noise drawn on the CPU, so one seed gives one video on every device."""
    return torch.randn(tuple(shape), generator=cpu_generator(seed), dtype=torch.float32)


def check_generators(generator, batch: int) -> None:
    """Refuse a `generator` argument that cannot draw the noise of `batch` videos (one sentence, InputError)."""
    from ..errors import InputError

    given = generator if isinstance(generator, (list, tuple)) else [generator] if generator is not None else []
    odd = [g for g in given if not isinstance(g, torch.Generator)]
    if odd:
        inside = " in the list" if isinstance(generator, (list, tuple)) else ""  # [[g]] said "got list" of a list
        raise InputError(f"generator must be a torch.Generator or a list of them, got {type(odd[0]).__name__}"
                         f"{inside} (for a seed, use torch.Generator().manual_seed(n))")
    if isinstance(generator, (list, tuple)) and len(generator) != batch:
        raise InputError(f"a list of generators needs one per video ({batch}), got {len(generator)}; or give "
                         f"one torch.Generator, not in a list, for all of them")


def batch_noise(shape: Sequence[int], *, latents: torch.Tensor | None = None, generator=None,
                seed: int = 0) -> torch.Tensor:
    """(B, C, T, h, w) initial noise for B videos, on the CPU.

    latents: used as given (shape checked). generator: one per video (video b draws its single run's noise)
    or one for all (drawn in one call). Neither: video b is seeded `seed + b`.
    """
    from ..errors import InputError

    batch, one = shape[0], (1, *shape[1:])
    if latents is not None:
        if tuple(latents.shape) != tuple(shape):
            raise InputError(f"latents must have shape {tuple(shape)} for these settings, got {tuple(latents.shape)}")
        return latents.float().cpu()
    check_generators(generator, batch)
    # Drawn where the generator lives, as diffusers does: torch.Generator("cuda") is common in diffusers code,
    # and torch refuses to draw CPU noise from it. A CPU generator draws exactly what it always did.
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.randn(one, generator=g, device=g.device, dtype=torch.float32).cpu()
                          for g in generator])
    if generator is not None:
        return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32).cpu()
    return torch.cat([initial_noise(one, seed + b) for b in range(batch)])


# ---------------------------------------------------------------------------------------------- pieces
def _pad_prefix(x: torch.Tensor, prefix: torch.Tensor | None, first_frame: int) -> torch.Tensor:
    """Overwrite the call frames that lie inside the prefix with the prefix (official try_pad_prefix_video).

    Windows never hold a whole prefix chunk, so in practice only the i2v image frame and the frames of a
    partial v2v chunk are replaced; their chunk keeps its noisy t (the official t = 1 branch never runs).
    """
    if prefix is None or prefix.shape[2] <= first_frame:
        return x
    n = min(prefix.shape[2] - first_frame, x.shape[2])
    x = x.clone()
    x[:, :, :n] = prefix[:, :, first_frame : first_frame + n]
    return x


def _kv_range(spans: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    return torch.tensor(spans, dtype=torch.int32, device=device).reshape(-1, 2)


def as_batched_conditioning(y: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y (2, n, Lc, Ct) of one video or (2, B, n, Lc, Ct) of B -> (2, B, n, Lc, Ct); masks likewise."""
    if y.dim() == 4:
        return y[:, None], masks[:, None]
    if y.dim() != 5 or masks.dim() != 4:
        raise ValueError(f"y must be (2, n, Lc, Ct) or (2, B, n, Lc, Ct), got {tuple(y.shape)}")
    return y, masks


def _rows(y: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, R, Lc, Ct) and (B, R, Lc) -> the DiT's chunk rows (B*R, 1, Lc, Ct) and (B*R, 1, Lc), row b*R + r."""
    return y.reshape(-1, 1, *y.shape[-2:]), masks.reshape(-1, 1, masks.shape[-1])


def _velocity(model, call: WindowCall, cache, config, prev_chunks_scale: float) -> torch.Tensor:
    if config.runtime_config.cfg_number == 3:
        return three_pass_velocity(model, call, cache, config.runtime_config)
    if config.runtime_config.cfg_number == 1:
        return distilled_velocity(model, call, cache, prev_chunks_scale)
    raise ValueError(f"cfg_number must be 1 or 3, got {config.runtime_config.cfg_number}")


def cache_prefix(model, config, prefix: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, cache,
                 tokens_per_chunk: int, step_size: float | None) -> None:
    """Write the KV of the whole prefix chunks into the cache (official extract_prefix_video_feature).

    One call over all prefix chunks at clean_t with their null rows. x keeps the prefix's own dtype, as
    official: the DiT's `x * x_rescale_factor` runs in it (bf16 for a prefix from the official bf16 VAE,
    which `MagiPipeline.encode_prefix` reproduces; float32 when the caller passes float32 latents).
    Official code runs every guidance pass here and discards the outputs; only the cache-writing pass
    has an effect, so only that one runs: cond_pre for cfg 3, the single pass for cfg 1.
    """
    r = config.runtime_config
    cw = r.chunk_width
    y, masks = as_batched_conditioning(y, masks)
    offset = prefix.shape[2] // cw
    x = prefix[:, :, : offset * cw]
    batch = x.shape[0]
    t = torch.full((batch, offset), r.clean_t, dtype=torch.float32, device=x.device)
    spans = [(s * tokens_per_chunk, e * tokens_per_chunk)
             for s, e in prefix_spans(offset, r.noise2clean_kvrange, r.clean_chunk_kvrange)]
    kv_range = batched_spans(_kv_range(spans, x.device), batch, offset * tokens_per_chunk)
    model(x, t, *_rows(y[1, :, :offset], masks[1, :, :offset]), kv_range,
          null_adaln=r.cfg_number == 3, kv_cache=cache, slice_point=0, read_cache=True, write_cache=True,
          step_size=step_size)


def replay_clean_chunks(model, config, plan: Sequence[ForwardStep], latent: torch.Tensor, prefix, clean_rows,
                        cache, tokens_per_chunk: int, step_size: Callable[[int], float | None]) -> None:
    """Rebuild the cache rows that the steps in `plan` wrote and later steps read.

    Those are the finished chunks re-encoded at clean_t (the `extra_clean_chunk` of a step). Each is
    re-run alone with the same inputs the original window call gave it (final latent, prefix padding,
    null row, clean span, cache-writing pass's adaLN token); only its own rows are ever read back, and
    they depend on nothing else in that call.
    """
    r = config.runtime_config
    cw = r.chunk_width
    batch = latent.shape[0]
    clean_t = torch.full((batch, 1), r.clean_t, dtype=torch.float32, device=latent.device)
    clean_y, clean_mask = clean_rows  # (B, Lc, Ct), (B, Lc): the null row and mask the window call used
    for step in plan:
        if not step.extra_clean_chunk:
            continue
        chunk = step.slice_point
        x = _pad_prefix(latent[:, :, chunk * cw : (chunk + 1) * cw], prefix, chunk * cw)
        span = batched_spans(_kv_range(step.key_ranges(tokens_per_chunk)[:1], latent.device), batch,
                             (chunk + 1) * tokens_per_chunk)
        model(x, clean_t, clean_y[:, None, None], clean_mask[:, None, None], span,
              null_adaln=r.cfg_number == 3, kv_cache=cache, slice_point=chunk, read_cache=True, write_cache=True,
              step_size=step_size(step.substep))


def _new_cache(model, tokens: int, batch: int = 1, offload: bool = False):
    """Fresh caches; with engine_config.kv_offload their rows live in host memory (pinned beside a GPU)."""
    from ..models.kv_cache import KVCache, KVCacheBatch  # imported late: the sampler itself needs no model code

    layers = getattr(model.config, "num_layers", None)
    host = "cpu" if offload else None
    if batch == 1:
        return KVCache(tokens, num_layers=layers, offload_device=host)
    return KVCacheBatch([KVCache(tokens, num_layers=layers, offload_device=host) for _ in range(batch)])


def default_clean_rows(y: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The caption row and mask a finished chunk is re-encoded with: the first null row, as official.

    y (2, B, n, Lc, Ct), masks (2, B, n, Lc) -> (B, Lc, Ct), (B, Lc). (Null masks are the same for every
    chunk; official code happens to take the second chunk's.)
    """
    return y[1, :, 0], masks[1, :, min(1, masks.shape[2] - 1)]


# ---------------------------------------------------------------------------------------------- the loop
def sample_chunks(
    model: Any,
    config: Any,
    y: torch.Tensor,
    masks: torch.Tensor,
    noise: torch.Tensor | None = None,
    prefix_latent: torch.Tensor | None = None,
    *,
    seed: int | None = None,
    kv_cache: Any = None,
    prev_chunks_scale: float = DEFAULT_PREV_CHUNKS_SCALE,
    release_cache: bool = True,
    progress: bool | Mapping = True,
    callback: StepCallback | None = None,
    resume_from: tuple[int, torch.Tensor] | None = None,
    clean_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    stop: Callable[[], bool] | None = None,
    caption_rows: CaptionRows | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the clean latents (B, 16, <=cw, h, w) float32 of each generated chunk, in order, as soon as clean.

    B videos are denoised together (B = 1 for the official single-video case): every DiT call carries all
    of them as its batch, each with its own conditioning rows, noise and KV cache, so each video equals its
    own single run. Memory: activations and KV cache grow B-fold, the weights are shared.
    y, masks: from build_conditioning, (2, n_chunks, Lc, Ct) and (2, n_chunks, Lc) for one video, or
      (2, B, n_chunks, Lc, Ct) and (2, B, n_chunks, Lc) for B videos (their rows stacked on dim 1).
    noise: the whole initial latent video (B, 16, n_chunks*cw, h, w); default: drawn on the CPU from
      `seed` (default runtime_config.seed) at the config's video size.
    prefix_latent: (1 or B, 16, Tp, h, w) VAE latent in its own dtype (bf16 as official): 1 frame for i2v,
      Tp frames for v2v, or resume_prefix(...) to continue an interrupted run.
    kv_cache: a KVCache to use (e.g. one that offloads; a KVCacheBatch of B for B videos); default: fresh
      ones on the latents' device.
    release_cache: drop cache rows no later step reads, so memory stays flat on long videos.
    callback(step, latent): after every Euler update, with the whole latent video (B, 16, T, h, w). It may
      return a tensor of that shape, which replaces the latent video from then on (e.g. edited latents).
    resume_from: (first step to run, the latent video after the step before it), saved from the callback
      after a step whose `finished_chunk` was set; chunks finished before it are not yielded again.
    clean_rows: the caption row and mask (B, Lc, Ct), (B, Lc) that finished chunks are re-encoded with
      into the cache; default: the null row (see default_clean_rows). Passed when the null rows of y carry
      something else (a negative prompt), so the cache still holds what the official code caches.
    stop(): asked before every step; when true the generator ends there (after yielding everything the
      steps before finished), e.g. diffusers' `pipe._interrupt`.
    caption_rows(chunk): asked once for each chunk, in order, just before it first enters the denoising
      window (as late as its caption can still be chosen, e.g. by a prompt changed live); rows it returns
      replace the conditional rows y[0, :, chunk] and masks[0, :, chunk] for every step of that chunk.
    """
    r, m = config.runtime_config, model.config
    cw, num_steps = r.chunk_width, r.num_steps
    device = y.device
    y, masks = as_batched_conditioning(y, masks)
    batch, n_chunks = y.shape[1], y.shape[2]
    if clean_rows is None:
        clean_rows = default_clean_rows(y, masks)
    if noise is None:
        h, w = r.video_size_h // 8, r.video_size_w // 8
        noise = initial_noise((batch, m.latent_channels, n_chunks * cw, h, w), r.seed if seed is None else seed)
    if noise.shape[0] != batch:
        raise ValueError(f"noise holds {noise.shape[0]} videos, y describes {batch}")
    if noise.shape[2] != n_chunks * cw:
        raise ValueError(f"noise has {noise.shape[2]} frames, y describes {n_chunks} chunks of {cw}")
    start = 0
    if resume_from is not None:
        start, saved = resume_from
        if saved.shape != noise.shape:
            raise ValueError(f"resume state has shape {tuple(saved.shape)}, this run's latent video {tuple(noise.shape)}")
        noise = saved
    latent = noise.to(device=device, dtype=torch.float32).clone()
    prefix = None if prefix_latent is None else prefix_latent.to(device).expand(batch, -1, -1, -1, -1)
    prefix_frames = 0 if prefix is None else prefix.shape[2]
    offset = prefix_frames // cw

    plan = plan_forward_steps(n_chunks, r.window_size, num_steps, offset, r.noise2clean_kvrange, r.clean_chunk_kvrange)
    grid = time_grid(num_steps, config.engine_config.shortcut_mode).to(device)
    intervals = step_intervals(num_steps, config.engine_config.shortcut_mode)
    distill = bool(getattr(model, "distill", config.engine_config.distill))
    ctn = (cw // m.t_patch_size) * (latent.shape[3] // m.patch_size) * (latent.shape[4] // m.patch_size)
    cache = kv_cache if kv_cache is not None else _new_cache(model, n_chunks * ctn, batch,
                                                             bool(config.engine_config.kv_offload))
    clean_t = torch.tensor([r.clean_t], dtype=torch.float32, device=device)
    nearly_clean_threshold = config.engine_config.distill_nearly_clean_chunk_threshold

    def step_size(substep: int) -> float | None:
        return distill_step_size(num_steps, intervals[substep]) if distill else None

    if not 0 <= start <= len(plan):
        raise ValueError(f"resume step {start} is outside the plan's {len(plan)} steps")
    with torch.no_grad():
        if offset:
            cache_prefix(model, config, prefix, y, masks, cache, ctn, step_size(0))
        if start:
            replay_clean_chunks(model, config, plan[:start], latent, prefix, clean_rows, cache, ctn, step_size)
            if release_cache and hasattr(cache, "release_before"):
                cache.release_before(plan[start - 1].keep_from * ctn)

    if caption_rows is not None:
        y, masks = y.clone(), masks.clone()  # rows are replaced below; the caller's tensors stay as given
    entered = max([offset] + [s.chunk_end for s in plan[:start]])  # chunks [0, entered) have their captions

    bar = _progress(len(plan), progress)
    bar.update(start)
    try:
        for step in plan[start:]:
            if stop is not None and stop():
                return
            first, end = step.slice_point, step.chunk_end
            if caption_rows is not None:
                for chunk in range(entered, end):
                    rows = caption_rows(chunk)
                    if rows is not None:
                        y[0, :, chunk], masks[0, :, chunk] = rows[0].to(y), rows[1].to(masks)
            entered = max(entered, end)
            t = grid[list(step.chunk_steps)][None]
            call_y, call_masks = y[:, :, step.chunk_start : end], masks[:, :, step.chunk_start : end]
            if step.extra_clean_chunk:
                # The finished chunk is re-encoded with the null row (and null mask) in both rows.
                t = torch.cat([clean_t[None], t], dim=1)
                call_y = torch.cat([clean_rows[0][None, :, None].expand(2, -1, -1, -1, -1), call_y], dim=2)
                call_masks = torch.cat([clean_rows[1][None, :, None].expand(2, -1, -1, -1), call_masks], dim=2)
            t = t.expand(batch, -1)
            x = _pad_prefix(latent[:, :, first * cw : end * cw], prefix, first * cw)
            call = WindowCall(
                x=x, t=t, y=call_y, masks=call_masks, kv_range=_kv_range(step.key_ranges(ctn), device),
                slice_point=first, chunk_width=cw, tokens_per_chunk=ctn, read_cache=step.extra_clean_chunk,
                extra_clean_chunk=step.extra_clean_chunk, step_size=step_size(step.substep),
                nearly_clean=is_nearly_clean(t[0, int(step.extra_clean_chunk)], nearly_clean_threshold),
            )
            with torch.no_grad():  # not around the yield: grad mode would leak into the consumer
                velocity = _velocity(model, call, cache, config, prev_chunks_scale)

            # Euler step of the (padded) window chunks from grid[k] to grid[k + 1], in float32.
            k = torch.tensor(step.chunk_steps, device=device)
            dt = (grid[k + 1] - grid[k]).repeat_interleave(cw).view(1, 1, -1, 1, 1)
            window = slice(step.chunk_start * cw, end * cw)
            latent[:, :, window] = x[:, :, -velocity.shape[2] :] + velocity * dt

            if release_cache and hasattr(cache, "release_before"):
                cache.release_before(step.keep_from * ctn)
            if callback is not None:
                edited = callback(step, latent)
                if edited is not None and edited is not latent:
                    if tuple(edited.shape) != tuple(latent.shape):
                        raise ValueError(f"the callback returned latents {tuple(edited.shape)}, "
                                         f"expected {tuple(latent.shape)}")
                    latent.copy_(edited)
            bar.update(1)
            if step.finished_chunk is not None:
                lo, hi = emitted_frames(step.finished_chunk, cw, prefix_frames)
                yield latent[:, :, lo:hi].clone()
    finally:  # also when the consumer stops early
        bar.close()


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool | Mapping):
    """A tqdm bar over the steps; `enabled` may be tqdm options (diffusers' set_progress_bar_config)."""
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    options = dict(enabled) if isinstance(enabled, Mapping) else {}
    return tqdm(total=total, **{"desc": "denoising", "unit": "step", **options})
