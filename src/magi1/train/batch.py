"""Turn clean latent clips into exactly the DiT inputs inference produces (reference-dit-pipeline §5.4, §6).

A training sample is one clip of R chunks. Per chunk it gets a timestep (losses.MonotoneChunkTimeSampler),
a caption row and an attention span; the whole sample gets an adaLN null flag. What each piece mirrors:

- noisy chunks: the caption row, span `noise2clean_kvrange[stage]` chunks back (itself included);
- clean chunks: the null caption (first `null_tokens` rows of the null table), told `clean_t`, span
  `clean_chunk_kvrange` (itself only: at inference their K/V are cached from a self-only pass);
- caption dropout: every row null and adaLN null row −1: the "cond_pre" guidance pass; a dropped one-chunk
  sample is the "uncond" pass (each chunk alone, positions from 0, no context);
- i2v: latent frame 0 of chunk 0 is the clean image latent while the chunk keeps its noisy t; no loss there.

Samples in one batch share R (so they stack), and key spans are batch-major, as MagiDiT expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .losses import ChunkTimes, MonotoneChunkTimeSampler, interpolate, per_frame, velocity_target

# The official pipeline marks the first 50 rows of the null table as the null caption (reference §6.1).
OFFICIAL_NULL_TOKENS = 50


def null_token_count(caption_max_length: int) -> int:
    """Rows of the null caption; the last two rows of the table are the adaLN tokens and stay out of it."""
    return max(1, min(OFFICIAL_NULL_TOKENS, caption_max_length - 2))


@dataclass
class TaskMix:
    """How often each task appears, by the number of clean chunks (report §1.4). [choice] rates.

    `dropout` is the caption dropout rate that teaches the unconditional branches of guidance.
    """

    t2v: float = 0.5
    i2v: float = 0.25
    v2v: float = 0.25
    dropout: float = 0.15
    chunk_weights: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0, 1.5)  # R = 1..5 chunks per clip
    first_chunk_start_prob: float = 0.5  # crops that start where the clip starts (t2v must learn openings)


@dataclass
class SampleLayout:
    """The per-sample choices of one batch element (all tensors per chunk or per frame)."""

    times: ChunkTimes
    image_frame: bool          # i2v: latent frame 0 is the clean image latent
    dropped: bool              # caption dropout: null caption everywhere, adaLN null row -1


@dataclass
class DiTBatch:
    """Inputs of one MagiDiT call and what to compare its output with.

    x: (B, C, R*cw, h, w) noisy input; t: (B, R); y: (B*R, 1, Lc, Ct); xattn_mask: (B*R, 1, Lc);
    kv_range: (B*R, 2) int32; null_adaln: (B,) bool; target: velocity (B, C, R*cw, h, w);
    frame_weight: (B, R*cw) 1 where the loss applies; data / noise kept for distillation.
    """

    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    xattn_mask: torch.Tensor
    kv_range: torch.Tensor
    null_adaln: torch.Tensor
    target: torch.Tensor
    frame_weight: torch.Tensor
    data: torch.Tensor
    noise: torch.Tensor
    layouts: list[SampleLayout] = field(default_factory=list)

    def model_inputs(self) -> tuple:
        return self.x, self.t, self.y, self.xattn_mask, self.kv_range

    def to(self, device: torch.device) -> "DiTBatch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return DiTBatch(**moved)


def kv_spans(times: ChunkTimes, noise2clean_kvrange, clean_chunk_kvrange: int) -> list[int]:
    """Chunks each chunk may attend to, itself included, as the inference window assigns them."""
    last = int(noise2clean_kvrange[-1]) if noise2clean_kvrange else 10**6
    clean_span = last if clean_chunk_kvrange == -1 else int(clean_chunk_kvrange)
    spans = []
    for clean, stage in zip(times.clean.tolist(), times.stage.tolist()):
        if clean:
            spans.append(clean_span)
        elif noise2clean_kvrange:
            spans.append(int(noise2clean_kvrange[min(stage, len(noise2clean_kvrange) - 1)]))
        else:
            spans.append(10**6)  # no list: full causal attention
    return spans


def kv_ranges(spans_per_sample: list[list[int]], chunk_tokens: int) -> torch.Tensor:
    """(B*R, 2) int32 key spans [start, end) in the batch-major key coordinates of one call."""
    rows = []
    for b, spans in enumerate(spans_per_sample):
        offset = b * len(spans) * chunk_tokens
        for r, span in enumerate(spans):
            end = r + 1
            start = max(0, end - span)
            rows.append((offset + start * chunk_tokens, offset + end * chunk_tokens))
    return torch.tensor(rows, dtype=torch.int32)


class DiTBatchBuilder:
    """Draws tasks and times and assembles DiTBatch objects from clean latents and caption embeddings."""

    def __init__(self, *, chunk_width: int, tokens_per_frame: int, noise2clean_kvrange, clean_chunk_kvrange: int,
                 caption_max_length: int, sampler: MonotoneChunkTimeSampler | None = None,
                 mix: TaskMix | None = None) -> None:
        self.chunk_width = chunk_width
        self.chunk_tokens = chunk_width * tokens_per_frame
        self.noise2clean_kvrange = list(noise2clean_kvrange)
        self.clean_chunk_kvrange = clean_chunk_kvrange
        self.caption_max_length = caption_max_length
        self.null_tokens = null_token_count(caption_max_length)
        self.sampler = sampler or MonotoneChunkTimeSampler(num_stages=max(1, len(self.noise2clean_kvrange)))
        self.mix = mix or TaskMix()

    # ------------------------------------------------------------------ choices
    def draw_num_chunks(self, generator: torch.Generator, max_chunks: int) -> int:
        weights = torch.tensor(self.mix.chunk_weights[:max_chunks], dtype=torch.float64)
        return 1 + int(torch.multinomial(weights, 1, generator=generator))

    def draw_layout(self, num_chunks: int, generator: torch.Generator, *, phase_steps: int | None = None,
                    allow_dropout: bool = True, staged: bool | None = None) -> SampleLayout:
        """Task (t2v / i2v / v2v), caption dropout, and the per-chunk times of one sample."""
        m = self.mix
        draw = float(torch.rand((), generator=generator)) * (m.t2v + m.i2v + m.v2v)
        num_clean, image_frame = 0, False
        if draw >= m.t2v + m.i2v and num_chunks > 1:
            num_clean = 1 + int(torch.randint(num_chunks - 1, (1,), generator=generator))
        elif m.t2v <= draw < m.t2v + m.i2v:
            image_frame = True
        times = self.sampler.sample(num_chunks, num_clean, generator=generator, staged=staged,
                                    phase_steps=phase_steps)
        # An image frame only matters while chunk 0 is still noisy (inference overwrites it there).
        image_frame = image_frame and not bool(times.clean[0])
        dropped = allow_dropout and float(torch.rand((), generator=generator)) < m.dropout
        return SampleLayout(times=times, image_frame=image_frame, dropped=dropped)

    # ------------------------------------------------------------------ assembly
    def caption_rows(self, layouts: list[SampleLayout], captions: torch.Tensor, caption_masks: torch.Tensor,
                     null_caption: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B*R, 1, Lc, Ct) caption rows and (B*R, 1, Lc) masks.

        captions: (B, Lc, Ct) one caption per clip; caption_masks: (B, Lc); null_caption: (Lc, Ct), the
        model's own null table (kept in the graph so that it learns).
        """
        lc = self.caption_max_length
        null_mask = torch.zeros(lc, dtype=captions.dtype, device=captions.device)
        null_mask[: self.null_tokens] = 1
        rows, masks = [], []
        for b, layout in enumerate(layouts):
            for clean in layout.times.clean.tolist():
                if clean or layout.dropped:
                    rows.append(null_caption.to(captions.dtype))
                    masks.append(null_mask)
                else:
                    rows.append(captions[b])
                    masks.append(caption_masks[b].to(captions.dtype))
        y = torch.stack(rows)[:, None]
        mask = torch.stack(masks)[:, None]
        return y, mask

    def assemble(self, latents: torch.Tensor, layouts: list[SampleLayout], captions: torch.Tensor,
                 caption_masks: torch.Tensor, null_caption: torch.Tensor, *, generator: torch.Generator,
                 image_latents: torch.Tensor | None = None) -> DiTBatch:
        """latents: (B, C, R*cw, h, w) clean scaled latents; image_latents: (B, C, 1, h, w) or None."""
        batch, _, frames, _, _ = latents.shape
        chunks = frames // self.chunk_width
        if any(layout.times.num_chunks != chunks for layout in layouts) or len(layouts) != batch:
            raise ValueError("every layout must describe the batch's clips chunk for chunk")
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
        t = torch.stack([layout.times.t for layout in layouts])                       # (B, R)
        mix = per_frame(torch.stack([layout.times.mix for layout in layouts]), self.chunk_width)  # (B, T)
        data = latents.clone()
        x = interpolate(data, noise, mix)
        weight = per_frame((~torch.stack([layout.times.clean for layout in layouts])).float(), self.chunk_width)
        for b, layout in enumerate(layouts):
            if layout.image_frame:
                image = image_latents[b, :, 0] if image_latents is not None else data[b, :, 0]
                data[b, :, 0] = image
                x[b, :, 0] = image
                weight[b, 0] = 0.0
        y, y_mask = self.caption_rows(layouts, captions, caption_masks, null_caption)
        spans = [kv_spans(layout.times, self.noise2clean_kvrange, self.clean_chunk_kvrange) for layout in layouts]
        return DiTBatch(
            x=x,
            t=t,
            y=y,
            xattn_mask=y_mask,
            kv_range=kv_ranges(spans, self.chunk_tokens),
            null_adaln=torch.tensor([layout.dropped for layout in layouts], dtype=torch.bool),
            target=velocity_target(data, noise),
            frame_weight=weight,
            data=data,
            noise=noise,
            layouts=layouts,
        )
