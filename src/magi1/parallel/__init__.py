"""Running magi1 across processes with torch.distributed (torchrun; NCCL on GPUs, gloo on CPUs).

    ctx = setup_from_env(config)            # None when alone; checks cp x pp == WORLD_SIZE etc. first
    dit = load_dit(config, device=ctx.device, pp_rank=ctx.pp_rank)   # only this stage's weights
    parallelize_dit(dit, ctx)               # Ulysses context parallel + pipeline stage, applied to the model
    emb, mask = broadcast_text(emb, mask, ctx)        # T5 ran on rank 0 only
    frames = parallel_decode_chunk(vae, latent, ctx, fps=fps)   # VAE tiles shared by all ranks
    if is_output_rank(ctx): write files, show progress
    teardown(ctx)

Every rank runs the same sampler loop on the same inputs; the DiT plan makes each forward return the
whole velocity on every rank. Layout and failure handling: see `context`.
"""

from .broadcast import broadcast_text, is_text_rank, share_from_source
from .context import (
    DistributedError,
    LayoutError,
    ParallelContext,
    check_layout,
    is_output_rank,
    parallel_session,
    quiet_other_ranks,
    setup_from_env,
    teardown,
)
from .dit_plan import DiTParallelPlan, parallelize_dit
from .ulysses import split_sizes

__all__ = [
    "DiTParallelPlan",
    "DistributedError",
    "LayoutError",
    "ParallelContext",
    "broadcast_text",
    "check_layout",
    "is_output_rank",
    "is_text_rank",
    "parallel_decode",
    "parallel_decode_chunk",
    "parallel_session",
    "parallelize_dit",
    "quiet_other_ranks",
    "setup_from_env",
    "share_from_source",
    "split_sizes",
    "teardown",
]


def __getattr__(name: str):
    # The VAE wrappers import the VAE model code; load them only when asked for.
    if name in ("parallel_decode", "parallel_decode_chunk"):
        from . import vae_tiles

        return getattr(vae_tiles, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
