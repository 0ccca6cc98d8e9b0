"""Shortcut distillation (report §5.1): one network v(x_t, t, s) that runs at several step counts, cfg-free.

The student is a MagiDiT built with `distill=True` (it adds t_embedder(step size) to the time embedding,
no new weights) and starts from the base model's weights. Training cycles through step sizes as the report
does, `[finest] × 8` then one each of the coarser ones:

- finest level (the base model's step count): guidance distillation. The target is the frozen base model's
  three-pass guided velocity (text, "cond_pre" null-caption, and each chunk alone), mixed per chunk by the
  preset's t buckets and scales, exactly as `sampling.guidance` mixes them at inference. The student sees
  the caption and the context in one pass: the distilled inference runs `cfg_number = 1`.
- coarser levels (n steps per chunk): bootstrap. Two no-grad student steps of the finer grid (2n steps)
  from the same x_t define the target of one step of the n-step grid (losses.shortcut_target). Times are
  grid-aligned (the staged layout with `phase_steps`), so both half steps stay inside one noise stage and
  every chunk's attention span is the one inference gives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import MagiConfig
from .batch import DiTBatch, TaskMix
from .data import LatentClips
from .dit_trainer import DiTTrainer, DiTTrainSettings, dit_velocity
from .loop import step_generator, warmup_cosine
from .losses import (euler_step, grid_step, guidance_scales_for, guided_velocity, per_frame, shortcut_target,
                     step_size_condition)


def shortcut_cycle(finest_steps: int, levels: int = 3, finest_repeats: int = 8) -> list[int]:
    """Step counts per training iteration: [finest] × repeats, then finest/2, finest/4, ... (report §5.1)."""
    cycle = [finest_steps] * finest_repeats
    steps = finest_steps
    for _ in range(levels):
        steps //= 2
        if steps < 1:
            break
        cycle.append(steps)
    return cycle


@dataclass
class DistillSettings(DiTTrainSettings):
    steps: int = 600
    lr: float = 2e-4
    warmup: int = 20
    finest_steps: int = 32               # the base preset's num_steps: the 1/finest step carries the guidance
    levels: int = 3                      # coarser grids: finest/2, /4, /8
    finest_repeats: int = 8
    mix: TaskMix = field(default_factory=lambda: TaskMix(dropout=0.0))


class ShortcutDistiller(DiTTrainer):
    """Trains `student` (distill=True) against the frozen `teacher` and against itself."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: MagiConfig, clips: LatentClips, text_encoder,
                 settings: DistillSettings | None = None) -> None:
        if not getattr(student, "distill", False):
            raise ValueError("the student must be built with distill=True (it embeds the step size)")
        text_encoder.trainable = False  # the caption path is fixed after base training
        super().__init__(student, config, clips, text_encoder, settings or DistillSettings())
        self.teacher = teacher.eval().requires_grad_(False)
        self.cycle = shortcut_cycle(self.settings.finest_steps, self.settings.levels, self.settings.finest_repeats)
        windows = max(1, len(config.runtime_config.noise2clean_kvrange))
        for steps in self.cycle:
            if steps % windows:
                raise ValueError(f"{steps} steps do not split into {windows} noise stages")

    # ------------------------------------------------------------------ targets
    @torch.no_grad()
    def guided_target(self, batch: DiTBatch) -> torch.Tensor:
        """The base model's cfg-3 velocity for every chunk of the batch (B, C, R*cw, h, w)."""
        r = self.config.runtime_config
        cw = self.chunk_width
        batch_size, chunks = batch.t.shape
        text_off = torch.zeros(batch_size, dtype=torch.bool)
        cond_full = dit_velocity(self.teacher, batch, null_adaln=text_off)
        null_batch = self._null_caption_copy(batch)
        cond_pre = dit_velocity(self.teacher, null_batch, null_adaln=~text_off)
        uncond = self._alone(null_batch)
        t = batch.t
        prev, text = guidance_scales_for(t.flatten(), r.cfg_t_range, r.prev_chunk_scales, r.text_scales)
        prev, text = per_frame(prev.view(batch_size, chunks), cw), per_frame(text.view(batch_size, chunks), cw)
        return guided_velocity(uncond, cond_pre, cond_full, prev, text)

    def _null_caption_copy(self, batch: DiTBatch) -> DiTBatch:
        """The same batch with the null caption on every chunk row (the cond_pre / uncond captions)."""
        null_rows = torch.zeros_like(batch.y) + self.teacher.y_embedder.null_caption_embedding.detach()[None, None]
        null_mask = torch.zeros_like(batch.xattn_mask)
        null_mask[..., : self.builder.null_tokens] = 1
        fields = dict(batch.__dict__, y=null_rows, xattn_mask=null_mask)
        return DiTBatch(**fields)

    def _alone(self, null_batch: DiTBatch) -> torch.Tensor:
        """Every chunk as its own one-chunk sample: no context, positions from 0, null caption."""
        b, c, frames, h, w = null_batch.x.shape
        chunks = null_batch.t.shape[1]
        cw = self.chunk_width
        x = null_batch.x.view(b, c, chunks, cw, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b * chunks, c, cw, h, w)
        ctn = self.builder.chunk_tokens
        starts = torch.arange(b * chunks, dtype=torch.int64) * ctn
        single = DiTBatch(
            x=x, t=null_batch.t.reshape(b * chunks, 1), y=null_batch.y, xattn_mask=null_batch.xattn_mask,
            kv_range=torch.stack([starts, starts + ctn], dim=1).to(torch.int32),
            null_adaln=torch.ones(b * chunks, dtype=torch.bool), target=x, frame_weight=x.new_zeros(1), data=x,
            noise=x,
        )
        out = dit_velocity(self.teacher, single)
        return out.view(b, chunks, c, cw, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b, c, frames, h, w)

    @torch.no_grad()
    def bootstrap_target(self, batch: DiTBatch, coarse_steps: int) -> torch.Tensor:
        """Velocity of one coarse step that reproduces two student steps of the twice-finer grid."""
        fine = 2 * coarse_steps
        size = step_size_condition(fine)
        cw = self.chunk_width
        dt_first = per_frame(grid_step(batch.t, fine), cw)                       # (B, T)
        v_first = dit_velocity(self.model, batch, step_size=size)
        x_mid = euler_step(batch.x, v_first, dt_first)
        t_mid = (batch.t + grid_step(batch.t, fine)).where(batch.t < 1 - 1e-3, batch.t)
        x_mid = self._repin_image_frames(x_mid, batch)
        mid = DiTBatch(**dict(batch.__dict__, x=x_mid, t=t_mid))
        dt_second = per_frame(grid_step(t_mid, fine), cw)
        v_second = dit_velocity(self.model, mid, step_size=size)
        return shortcut_target(v_first, v_second, dt_first, dt_second)

    @staticmethod
    def _repin_image_frames(x: torch.Tensor, batch: DiTBatch) -> torch.Tensor:
        """i2v: inference writes the image latent back over frame 0 before every step."""
        for b, layout in enumerate(batch.layouts):
            if layout.image_frame:
                x[b, :, 0] = batch.data[b, :, 0]
        return x

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict[str, float]:
        s = self.settings
        for group in self.optimizer.param_groups:
            group["lr"] = s.lr * warmup_cosine(step, s.steps, s.warmup)
        self.model.train()
        self.text.train(False)
        steps = self.cycle[step % len(self.cycle)]
        stages = max(1, len(self.config.runtime_config.noise2clean_kvrange))
        generator = step_generator(s.seed, step)
        finest = steps == s.finest_steps
        # Times on this level's grid (so a coarse step's half step lands on the finer grid, inside the same
        # noise stage), and no caption dropout: the distilled model runs one pass with the text on.
        with torch.no_grad():
            batch, _ = self.make_batch(generator, allow_dropout=False, staged=True, phase_steps=steps // stages)
            target = self.guided_target(batch) if finest else self.bootstrap_target(batch, steps)
        prediction = dit_velocity(self.model, batch, step_size=step_size_condition(steps))
        metrics = self.optimize(batch, prediction, target)
        return {f"loss_{steps}": metrics["loss"], "grad": metrics["grad"]}
