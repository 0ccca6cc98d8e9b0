"""Chunk-wise autoregressive sampling: time grid, window plan, guidance, conditioning, the sampler loop.

Names load on first use (magi1.lazy_exports): the torch-free submodules import without torch.
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# public name -> the submodule that defines it
_WHERE = {
    "Conditioning": "conditioning",
    "ForwardStep": "chunk_plan",
    "SpecialTokens": "special_tokens",
    "blend_nearly_clean": "guidance",
    "build_conditioning": "conditioning",
    "chunk_counts": "chunk_plan",
    "combine_guidance": "guidance",
    "distill_step_size": "schedule",
    "emitted_frames": "chunk_plan",
    "guidance_buckets": "guidance",
    "guidance_scales": "guidance",
    "initial_noise": "sampler",
    "is_nearly_clean": "guidance",
    "noisy_latent": "schedule",
    "plan_forward_steps": "chunk_plan",
    "prefix_spans": "chunk_plan",
    "resume_prefix": "sampler",
    "sample_chunks": "sampler",
    "step_intervals": "schedule",
    "time_grid": "schedule",
    "velocity_target": "schedule",
}

__getattr__, __all__ = lazy_exports(__name__, _WHERE)
