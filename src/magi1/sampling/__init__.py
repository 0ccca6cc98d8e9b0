"""Chunk-wise autoregressive sampling: time grid, window plan, guidance, conditioning, the sampler loop."""

from .chunk_plan import ForwardStep, plan_forward_steps, prefix_spans
from .conditioning import Conditioning, build_conditioning
from .guidance import blend_nearly_clean, combine_guidance, guidance_buckets, guidance_scales, is_nearly_clean
from .sampler import chunk_counts, emitted_frames, initial_noise, resume_prefix, sample_chunks
from .schedule import distill_step_size, noisy_latent, step_intervals, time_grid, velocity_target
from .special_tokens import SpecialTokens

__all__ = [
    "Conditioning",
    "ForwardStep",
    "SpecialTokens",
    "blend_nearly_clean",
    "build_conditioning",
    "chunk_counts",
    "combine_guidance",
    "distill_step_size",
    "emitted_frames",
    "guidance_buckets",
    "guidance_scales",
    "initial_noise",
    "is_nearly_clean",
    "noisy_latent",
    "plan_forward_steps",
    "prefix_spans",
    "resume_prefix",
    "sample_chunks",
    "step_intervals",
    "time_grid",
    "velocity_target",
]
