"""The MAGI-1 training objective as pure tensor functions: time samplers, interpolation, targets, losses.

Conventions (paper-notes §1.1, DESIGN.md): t = 0 is pure noise and t = 1 is clean data;
x_t = (1 − t)·noise + t·data, and the network predicts the velocity dx/dt = data − noise.

Nothing here knows about the model: the trainers in this package combine these pieces.
Choices that the report leaves open (paper-notes §8) are marked "[choice]" where they are made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..sampling.guidance import guidance_scales
from ..sampling.schedule import SD3_SHIFT, distill_step_size, noisy_latent, shift_transform
from ..sampling.schedule import velocity_target as _velocity_target

# --------------------------------------------------------------------------------------------- schedules


def shift_toward_noise(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style shift t' = w·t / (1 − (1 − w)·t); w < 1 moves mass toward t = 0 (noise)."""
    return shift * t / (1.0 - (1.0 - shift) * t)


def inference_schedule(s: torch.Tensor | float, shift: float = SD3_SHIFT) -> torch.Tensor:
    """t of a uniform grid position s ∈ [0, 1] under the inference schedule (sampling.schedule.time_grid).

    Evaluated in float64 so that the training sampler and its inverse agree to 1e-12; the training
    sampler reuses it so that chunks in a window sit where inference puts them.
    """
    s = torch.as_tensor(s, dtype=torch.float64)
    return shift_transform(s * s, shift)


def inverse_inference_schedule(t: torch.Tensor, shift: float = SD3_SHIFT) -> torch.Tensor:
    """Grid position s of a time t: the inverse of `inference_schedule`."""
    t = torch.as_tensor(t, dtype=torch.float64).clamp(0.0, 1.0)
    u = shift * t / (1.0 + (shift - 1.0) * t)
    return u.sqrt()


def sample_logit_normal(shape, *, mean: float = 0.0, std: float = 0.5, shift: float = 1.0 / 3.0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Training t (report §1.2): sigmoid of N(mean, std²), then shifted toward noise with w = 1/3.

    With the report's values about 70% of draws land below t = 0.3, where a video is still being laid out.
    """
    u = torch.randn(shape, generator=generator, dtype=torch.float64) * std + mean
    return shift_toward_noise(torch.sigmoid(u), shift).float()


# --------------------------------------------------------------------------------------------- per-chunk times


@dataclass
class ChunkTimes:
    """Timesteps of the chunks of one training clip, oldest chunk first.

    t:      (N,) float32, what the model is told (clean chunks get `clean_t`, as at inference).
    mix:    (N,) float32, the t actually used to mix noise into the data (clean chunks: slightly noised).
    clean:  (N,) bool, conditioning chunks: no loss, null caption, attention to themselves only.
    stage:  (N,) int64, the inference noise stage 0..L-1 of each noisy chunk (index into
            noise2clean_kvrange), -1 for clean chunks. It decides how far back each chunk may attend.
    """

    t: torch.Tensor
    mix: torch.Tensor
    clean: torch.Tensor
    stage: torch.Tensor

    @property
    def num_chunks(self) -> int:
        return int(self.t.shape[0])


@dataclass
class MonotoneChunkTimeSampler:
    """Per-chunk t that never increases with the chunk index: earlier chunks are cleaner (paper-notes §1.1).

    The report gives the marginal (logit-normal, shift 1/3) but not the joint law of the t-vector
    (paper-notes §8.1). [choice] Two layouts, mixed:

    - "staged" (probability `staged_prob`): the chunks sit where the inference window puts them. A random
      phase φ ∈ [0, 1) is drawn; the newest chunk is in noise stage m0 (usually 0, the newest chunk of a
      window; other values happen at the end of a video); the chunk d places older is in stage m0 + d at grid
      position s = (m0 + d + φ) / stages, t = inference_schedule(s). Chunks whose stage reaches the number of
      stages have finished denoising and become clean conditioning, exactly as the window slides at inference.
    - "sorted": the report's logit-normal draws, one per noisy chunk, sorted so that the oldest is the largest.

    Leading `num_clean` chunks are clean whatever the layout (continuation / v2v). Clean chunks are told
    `clean_t` (0.9999, what inference feeds) but mixed with up to `clean_noise_max` noise (report §1.3:
    "up to 5% noise", against exposure bias).
    """

    num_stages: int = 4
    staged_prob: float = 0.5
    newest_in_first_stage_prob: float = 0.6
    logit_mean: float = 0.0
    logit_std: float = 0.5
    logit_shift: float = 1.0 / 3.0
    schedule_shift: float = SD3_SHIFT
    clean_t: float = 0.9999
    clean_noise_max: float = 0.05
    min_t: float = 0.0

    def sample(self, num_chunks: int, num_clean: int = 0, *, generator: torch.Generator | None = None,
               staged: bool | None = None, phase_steps: int | None = None) -> ChunkTimes:
        """Times for a clip of `num_chunks` chunks whose first `num_clean` are conditioning.

        `staged` forces a layout (None: draw one). `phase_steps` puts the staged phase on a grid of that
        many steps per stage (the distillation trainer needs grid-aligned times); None: continuous.
        """
        if num_chunks < 1 or not 0 <= num_clean <= num_chunks:
            raise ValueError(f"need 1 <= num_chunks and 0 <= num_clean <= num_chunks, got {num_chunks}, {num_clean}")
        if staged is None:
            staged = _uniform(generator) < self.staged_prob
        clean = torch.zeros(num_chunks, dtype=torch.bool)
        clean[:num_clean] = True
        t = torch.zeros(num_chunks, dtype=torch.float64)
        if staged:
            newest_stage = 0
            if _uniform(generator) >= self.newest_in_first_stage_prob and self.num_stages > 1:
                newest_stage = 1 + int(torch.randint(self.num_stages - 1, (1,), generator=generator))
            if phase_steps:
                phase = int(torch.randint(phase_steps, (1,), generator=generator)) / phase_steps
            else:
                phase = _uniform(generator)
            for index in range(num_chunks):
                stage = newest_stage + (num_chunks - 1 - index)
                if stage >= self.num_stages:
                    clean[index] = True  # finished: the window has moved past it
                else:
                    t[index] = float(inference_schedule((stage + phase) / self.num_stages, self.schedule_shift))
        else:
            noisy = int((~clean).sum())
            draws = sample_logit_normal((noisy,), mean=self.logit_mean, std=self.logit_std, shift=self.logit_shift,
                                        generator=generator).double()
            t[~clean] = torch.sort(draws, descending=True).values
        # Noisy chunks stay strictly below the clean label, so ties in the sequence happen only among clean
        # chunks. t = 0 (pure noise) is kept: the first inference step asks exactly that.
        t = torch.where(clean, torch.full_like(t, self.clean_t), t.clamp(self.min_t, self.clean_t - 1e-6))
        mix = t.clone()
        num_clean_total = int(clean.sum())
        if num_clean_total:
            noise_share = torch.rand(num_clean_total, generator=generator, dtype=torch.float64) * self.clean_noise_max
            mix[clean] = 1.0 - noise_share
        stage = self.noise_stage(t.float())
        stage[clean] = -1
        return ChunkTimes(t=t.float(), mix=mix.float(), clean=clean, stage=stage)

    def noise_stage(self, t: torch.Tensor, num_stages: int | None = None) -> torch.Tensor:
        """Inference noise stage of each t: how many stage boundaries it has passed (reference §5.4).

        Stage boundaries are the schedule at grid positions i / num_stages; for 4 stages and shift 3 they are
        t = 0.0217, 0.1, 0.3 whatever the step count. A tiny epsilon puts t exactly on a boundary in the later
        stage, as the step-index arithmetic of the inference code does.
        """
        stages = num_stages or self.num_stages
        s = inverse_inference_schedule(t, self.schedule_shift)
        return torch.floor(s * stages + 1e-6).clamp(0, stages - 1).long()


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


# --------------------------------------------------------------------------------------------- flow matching


def per_frame(values: torch.Tensor, chunk_width: int) -> torch.Tensor:
    """(..., N) per-chunk values → (..., N·chunk_width) per latent frame."""
    return values.repeat_interleave(chunk_width, dim=-1)


def interpolate(data: torch.Tensor, noise: torch.Tensor, t_frames: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·noise + t·data with one t per latent frame.

    data, noise: (B, C, T, h, w); t_frames: (B, T).
    """
    return noisy_latent(noise, data, t_frames.to(data.dtype)[:, None, :, None, None])


def velocity_target(data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """dx_t/dt for the interpolation above: data − noise (note: data first here)."""
    return _velocity_target(noise, data)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, frame_weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the latent frames that carry loss.

    prediction, target: (B, C, T, h, w); frame_weight: (B, T), 0 for clean frames, 1 for noisy ones.
    The mean is over weighted elements, so a batch with few noisy frames is not down-weighted.
    """
    weight = frame_weight.to(prediction.dtype)[:, None, :, None, None]
    squared = (prediction.float() - target.float()).pow(2) * weight
    per_element = prediction.shape[1] * prediction.shape[3] * prediction.shape[4]
    return squared.sum() / (weight.sum() * per_element).clamp_min(1.0)


# --------------------------------------------------------------------------------------------- shortcut distillation


def step_size_condition(num_steps: int) -> float:
    """The value fed to the step-size embedding for a uniform grid of `num_steps` steps per chunk.

    The official distilled models add t_embedder(num_steps / 2) (reference §3.3, §7): 8 for 16 steps,
    32 for 64, i.e. 1 / (2·Δs) for a base-grid step Δs. Training uses the inference function itself.
    """
    return float(distill_step_size(int(num_steps)))


def euler_step(x: torch.Tensor, velocity: torch.Tensor, dt_frames: torch.Tensor) -> torch.Tensor:
    """x + Δt·v with one Δt per latent frame (B, T): the inference update (reference §6.8)."""
    return x + dt_frames.to(x.dtype)[:, None, :, None, None] * velocity


def shortcut_target(v_first: torch.Tensor, v_second: torch.Tensor, dt_first: torch.Tensor,
                    dt_second: torch.Tensor) -> torch.Tensor:
    """Velocity that one step of size 2s must have to land where two steps of size s land (report §5.1).

    v(x_t, t, 2s) = Δt1/(Δt1+Δt2)·v(x_t, t, s) + Δt2/(Δt1+Δt2)·v(x̂_{t+Δt1}, t+Δt1, s),
    x̂_{t+Δt1} = x_t + Δt1·v(x_t, t, s). The weights differ from ½ because the schedule's steps are uneven.

    v_first, v_second: (B, C, T, h, w); dt_first, dt_second: (B, T). Frames whose two steps are both zero
    (clean chunks) get the plain average; they carry no loss anyway.
    """
    total = dt_first + dt_second
    safe = torch.where(total > 0, total, torch.ones_like(total))
    w_first = torch.where(total > 0, dt_first / safe, torch.full_like(total, 0.5))
    w_first = w_first.to(v_first.dtype)[:, None, :, None, None]
    return w_first * v_first + (1.0 - w_first) * v_second


def grid_step(t: torch.Tensor, num_steps: int, schedule_shift: float = SD3_SHIFT) -> torch.Tensor:
    """The time one inference step of a `num_steps` grid advances from t (grid-aligned t): t_next − t.

    The step is taken on the base grid (s → s + 1/num_steps) and mapped through the schedule, so it
    shrinks near noise and grows near data, as at inference. Clean chunks (t ≥ 1 − 1e-3) do not move.
    """
    s = inverse_inference_schedule(t, schedule_shift)
    s_next = torch.clamp(s + 1.0 / num_steps, max=1.0)
    dt = (inference_schedule(s_next, schedule_shift) - inference_schedule(s, schedule_shift)).float()
    return torch.where(t >= 1.0 - 1e-3, torch.zeros_like(dt), dt)


def guided_velocity(uncond: torch.Tensor, cond_pre: torch.Tensor, cond_full: torch.Tensor, prev_scale: torch.Tensor,
                    text_scale: torch.Tensor) -> torch.Tensor:
    """The three-pass guidance combination (report §4.1), per latent frame scales (B, T).

    v = (1 − s_p)·uncond + (s_p − s_t)·cond_pre + s_t·cond_full
    """
    sp = prev_scale.to(cond_full.dtype)[:, None, :, None, None]
    st = text_scale.to(cond_full.dtype)[:, None, :, None, None]
    return (1.0 - sp) * uncond + (sp - st) * cond_pre + st * cond_full


def guidance_scales_for(t: torch.Tensor, t_range, prev_scales, text_scales) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chunk (prev, text) scales by t bucket, exactly as inference picks them (sampling.guidance)."""
    return guidance_scales(t.float(), t_range, prev_scales, text_scales)


def fraction_below(t: torch.Tensor, value: float) -> float:
    """Share of t below `value` (used by tests and the training log to show where compute goes)."""
    return float((t < value).float().mean()) if t.numel() else math.nan
