"""Turning model passes into one velocity per window chunk.

Base models (cfg_number 3) run three passes per forward step and mix them per chunk:
  cond_full  caption rows, adaLN "conditional" token, previous chunks in context (reads the cache)
  cond_pre   null caption rows, adaLN "null" token, previous chunks in context (writes the cache)
  uncond     null caption rows, adaLN "null" token, every chunk alone: no cache, no neighbours
  v = (1 - s_p) uncond + (s_p - s_t) cond_pre + s_t cond_full
    = uncond + s_p (cond_pre - uncond) + s_t (cond_full - cond_pre)
so s_p scales the pull of the previous chunks and s_t that of the text, both chosen by t bucket.

Distilled models (cfg_number 1) run one conditional pass that writes the cache; while the oldest
window chunk is nearly clean, a context-free copy of it rides along at the end of the call and the two
outputs are blended (a weak, built-in "previous chunk" guidance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

DEFAULT_PREV_CHUNKS_SCALE = 0.7  # official env `prev_chunks_scale`
BUCKET_EPS = 1e-7


# ---------------------------------------------------------------------------------------------- formulas
def guidance_buckets(t: torch.Tensor, cfg_t_range: Sequence[float]) -> torch.Tensor:
    """Bucket b of each t: range[b] - 1e-7 < t <= range[b + 1] - 1e-7, computed in float32 as official."""
    edges = torch.tensor(list(cfg_t_range), dtype=torch.float32, device=t.device) - BUCKET_EPS
    buckets = torch.searchsorted(edges, t.to(torch.float32).contiguous()) - 1
    if int(buckets.min()) < 0:
        raise ValueError(f"t {t.tolist()} below the first cfg_t_range edge {cfg_t_range[0]}")
    return buckets


def guidance_scales(
    t: torch.Tensor, cfg_t_range: Sequence[float], prev_chunk_scales: Sequence[float], text_scales: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_p, s_t) per entry of t, float32 tensors shaped like t."""
    if not len(cfg_t_range) == len(prev_chunk_scales) == len(text_scales):
        raise ValueError("cfg_t_range, prev_chunk_scales and text_scales need one entry per bucket")
    b = guidance_buckets(t, cfg_t_range)
    prev = torch.tensor(list(prev_chunk_scales), dtype=torch.float32, device=t.device)
    text = torch.tensor(list(text_scales), dtype=torch.float32, device=t.device)
    return prev[b], text[b]


def combine_guidance(
    cond_full: torch.Tensor,
    cond_pre: torch.Tensor,
    uncond: torch.Tensor,
    t: torch.Tensor,
    chunk_width: int,
    cfg_t_range: Sequence[float],
    prev_chunk_scales: Sequence[float],
    text_scales: Sequence[float],
) -> torch.Tensor:
    """Mix the three passes, (1, C, n*cw, h, w) each, with per-chunk scales from t (n,)."""
    s_p, s_t = guidance_scales(t, cfg_t_range, prev_chunk_scales, text_scales)
    # One scale per frame; elementwise float32 products equal the official per-chunk loop bit for bit.
    s_p = s_p.repeat_interleave(chunk_width).view(1, 1, -1, 1, 1)
    s_t = s_t.repeat_interleave(chunk_width).view(1, 1, -1, 1, 1)
    return (1 - s_p) * uncond + (s_p - s_t) * cond_pre + s_t * cond_full


def override_scales(scales: Sequence[float], value: float | None, neutral: float) -> list[float]:
    """A schedule with every guided bucket (scale != neutral) set to `value`; the neutral buckets stay.

    The official schedules guide only the noisier buckets (t <= 0.3): text_scales [7.5, 7.5, 7.5, 0, 0],
    prev_chunk_scales [1.5, 1.5, 1.5, 1, 1]. The neutral scale is 0 for text (the text plays no part) and
    1 for previous chunks (no extra pull). A schedule with no guided bucket gets `value` everywhere.
    """
    if value is None:
        return list(scales)
    guided = [s != neutral for s in scales]
    if not any(guided):
        return [float(value)] * len(scales)
    return [float(value) if g else float(s) for s, g in zip(scales, guided)]


def guidance_overrides(runtime_config: Any, guidance_scale: float | None = None,
                       prev_chunk_guidance_scale: float | None = None) -> dict[str, list[float]]:
    """Config overrides ({"text_scales": ..., "prev_chunk_scales": ...}) for diffusers-style guidance knobs.

    guidance_scale replaces the text scale of the guided buckets, prev_chunk_guidance_scale the
    previous-chunk scale of its guided buckets (see override_scales); None leaves a schedule as it is.
    """
    out = {}
    if guidance_scale is not None:
        out["text_scales"] = override_scales(runtime_config.text_scales, guidance_scale, 0.0)
    if prev_chunk_guidance_scale is not None:
        out["prev_chunk_scales"] = override_scales(runtime_config.prev_chunk_scales, prev_chunk_guidance_scale, 1.0)
    return out


def is_nearly_clean(t_first: torch.Tensor, threshold: float) -> bool:
    """Official test on the oldest window chunk: python float of the float32 t against the threshold.

    float32(0.3) is 0.30000001 > 0.3, so the step that lands exactly on t = 0.3 counts as nearly clean.
    """
    return float(t_first) > threshold


def blend_nearly_clean(with_context: torch.Tensor, alone: torch.Tensor, weight: float = DEFAULT_PREV_CHUNKS_SCALE):
    """weight * (output with previous chunks) + (1 - weight) * (output of the chunk alone)."""
    return with_context * weight + alone * (1 - weight)


# ---------------------------------------------------------------------------------------------- passes
@dataclass
class WindowCall:
    """The model inputs of one forward step (official `forward_velocity` after padding), for B videos.

    x: (B, C, R*cw, h, w) float32 over the call chunks (the extra clean chunk first, if any);
    t: (B, R); y: (2, B, R, Lc, Ct) and masks: (2, B, R, Lc), row 0 conditional, row 1 null;
    kv_range: (R, 2) int32 token spans of one video in [cached | call] coordinates (`model_kv_range`
    repeats them for every video); slice_point: first call chunk, chunks before it are cached.
    """

    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    masks: torch.Tensor
    kv_range: torch.Tensor
    slice_point: int
    chunk_width: int
    tokens_per_chunk: int
    read_cache: bool = False  # official fwd_extra_1st_chunk or extract_prefix_video_feature
    extra_clean_chunk: bool = False
    nearly_clean: bool = False  # official distill_nearly_clean_chunk
    step_size: float | None = None  # distilled models only

    def __post_init__(self) -> None:
        if self.y.dim() == 4:  # one video's rows, (2, R, Lc, Ct): the batch of one
            self.y, self.masks = self.y[:, None], self.masks[:, None]

    @property
    def chunks(self) -> int:
        return self.t.shape[1]

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def rows(self, which: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption rows (B*R, 1, Lc, Ct) and masks (B*R, 1, Lc) of row 0 (conditional) or 1 (null)."""
        y, masks = self.y[which], self.masks[which]  # (B, R, Lc, Ct), (B, R, Lc)
        return y.reshape(-1, 1, *y.shape[-2:]), masks.reshape(-1, 1, masks.shape[-1])

    def model_kv_range(self, kv_range: torch.Tensor | None = None) -> torch.Tensor:
        """(B*R, 2): the spans of every video, video b's keys after the b earlier videos' keys."""
        spans = self.kv_range if kv_range is None else kv_range
        return batched_spans(spans, self.batch, (self.slice_point + spans.shape[0]) * self.tokens_per_chunk)


def batched_spans(spans: torch.Tensor, batch: int, keys_per_video: int) -> torch.Tensor:
    """(R, 2) key spans of one video -> (batch*R, 2) for the DiT's batch-major keys of `batch` videos."""
    if batch == 1:
        return spans
    offsets = torch.arange(batch, dtype=spans.dtype, device=spans.device) * keys_per_video
    return (spans[None] + offsets[:, None, None]).reshape(-1, 2)


def self_only_ranges(batch: int, tokens_per_chunk: int, device: torch.device, first_token: int = 0):
    """kv_range of single-chunk batch elements that each see only themselves (batch-major keys)."""
    starts = torch.arange(batch, device=device, dtype=torch.int64) * tokens_per_chunk + first_token
    return torch.stack([starts, starts + tokens_per_chunk], dim=1).to(torch.int32)


def three_pass_velocity(model: Any, call: WindowCall, cache: Any, runtime_config: Any) -> torch.Tensor:
    """Guided velocity (1, C, n*cw, h, w) of the n window chunks, from three model passes.

    The passes are separate calls. Batching cond_full with cond_pre (same x, t, spans) into one B = 2 call
    would only merge GEMMs that are already large (a window is 4 chunks of tokens: 6k at the medium
    benchmark config, ~49k at 720p), which already run near the machine's GEMM rate (docs/benchmarks.md),
    and leave the attention work as it is, so it is not done. The cache-writing pass
    must stay a pass of its own in any case: only the no-text keys/values are cached.
    """
    common = dict(kv_cache=cache, slice_point=call.slice_point, read_cache=call.read_cache,
                  skip_last_chunk_write=call.nearly_clean, step_size=call.step_size)
    kv_range = call.model_kv_range()
    y_cond, m_cond = call.rows(0)
    cond_full = model(call.x, call.t, y_cond, m_cond, kv_range, null_adaln=False, write_cache=False, **common)
    y_null, m_null = call.rows(1)
    # This pass writes the cache: the cached keys/values are those seen without the text.
    cond_pre = model(call.x, call.t, y_null, m_null, kv_range, null_adaln=True, write_cache=True, **common)

    # Unconditional: each window chunk alone as its own batch element, no cache, the extra chunk dropped.
    b, n, cw = call.batch, call.chunks - int(call.extra_clean_chunk), call.chunk_width
    width = n * cw
    x = call.x[:, :, -width:]
    c, h, w = x.shape[1], x.shape[3], x.shape[4]
    x_alone = x.reshape(b, c, n, cw, h, w).transpose(1, 2).reshape(b * n, c, cw, h, w)  # (B*n, C, cw, h, w)
    t_alone = call.t[:, -n:].reshape(b * n, 1)
    y_alone = call.y[1][:, -n:].reshape(b * n, 1, *call.y.shape[-2:])  # null rows of the last n chunks
    m_alone = call.masks[1][:, -n:].reshape(b * n, 1, call.masks.shape[-1])
    out = model(x_alone, t_alone, y_alone, m_alone, self_only_ranges(b * n, call.tokens_per_chunk, x.device),
                null_adaln=True, kv_cache=None, slice_point=0, step_size=call.step_size)
    uncond = out.reshape(b, n, c, cw, h, w).transpose(1, 2).reshape(b, c, width, h, w)

    return combine_guidance(
        cond_full[:, :, -width:], cond_pre[:, :, -width:], uncond, call.t[0, -n:], cw,
        runtime_config.cfg_t_range, runtime_config.prev_chunk_scales, runtime_config.text_scales,
    )


def distilled_velocity(
    model: Any, call: WindowCall, cache: Any, prev_chunks_scale: float = DEFAULT_PREV_CHUNKS_SCALE
) -> torch.Tensor:
    """Velocity (B, C, n*cw, h, w) of the n window chunks from one conditional pass that writes the cache."""
    x, t, kv_range = call.x, call.t, call.kv_range
    y, m = call.y[0], call.masks[0]  # (B, R, Lc, Ct), (B, R, Lc)
    cw = call.chunk_width
    n = call.chunks - int(call.extra_clean_chunk)
    oldest = int(call.extra_clean_chunk)  # index of the oldest window chunk in the call
    if call.nearly_clean:
        # Append a copy of the oldest window chunk that sees only itself; its keys sit after the call's.
        frames = slice(oldest * cw, (oldest + 1) * cw)
        x = torch.cat([x, x[:, :, frames]], dim=2)
        t = torch.cat([t, t[:, oldest : oldest + 1]], dim=1)
        y = torch.cat([y, y[:, oldest : oldest + 1]], dim=1)
        m = torch.cat([m, m[:, oldest : oldest + 1]], dim=1)
        alone = self_only_ranges(1, call.tokens_per_chunk, x.device, first_token=int(kv_range.max()))
        kv_range = torch.cat([kv_range, alone], dim=0)
    y, m = y.reshape(-1, 1, *y.shape[-2:]), m.reshape(-1, 1, m.shape[-1])
    kv_range = call.model_kv_range(kv_range)
    out = model(x, t, y, m, kv_range, null_adaln=False, kv_cache=cache, slice_point=call.slice_point,
                read_cache=call.read_cache, write_cache=True, skip_last_chunk_write=call.nearly_clean,
                step_size=call.step_size)
    if call.nearly_clean:
        frames = slice(oldest * cw, (oldest + 1) * cw)
        out = out.clone()
        out[:, :, frames] = blend_nearly_clean(out[:, :, frames], out[:, :, -cw:], prev_chunks_scale)
        out = out[:, :, :-cw]
    return out[:, :, -n * cw :]
