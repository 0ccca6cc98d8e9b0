"""One rank of a parallel test launch. The environment is torchrun's (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); the test starts the processes itself, which is what torchrun does, faster.

    worker.py compare OUT_DIR --layouts 2x1:2 1x2 [--timeout 20]
        for each layout CPxPP[:OVERLAP] (all of one world size, sharing the first one's process group)
        runs the three cases of cases.py and saves <layout>.rank<R>.pt
    worker.py die|hang OUT_DIR --cp 2 --timeout 4
        a t2v run that writes an mp4 on rank 0; rank 1 reports its progress in OUT_DIR/rank1.step<k>
        (the test kills it there), or with `hang` stops answering after step 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases  # noqa: E402

from magi1.parallel import (  # noqa: E402
    DistributedError,
    broadcast_text,
    is_output_rank,
    is_text_rank,
    parallel_decode,
    parallel_decode_chunk,
    parallelize_dit,
    setup_from_env,
    teardown,
)


def compare(args, ctx, config, layout: str) -> None:
    model = parallelize_dit(cases.tiny_dit(config), ctx)
    results = {f"dit.{k}": v for k, v in cases.dit_forward(model).items()}
    y, masks = broadcast_text(*(cases.text_inputs() if is_text_rank(ctx) else (None, None)), ctx)
    results["t2v"] = cases.t2v(model, config, y, masks)
    results["vae"] = parallel_decode(cases.tiny_vae(), cases.vae_latent(), ctx, cases.VAE_TILES)
    torch.save(results, Path(args.out) / f"{layout}.rank{ctx.rank}.pt")


def failing_run(args, ctx, config) -> None:
    from magi1.io.video import VideoWriter

    model = parallelize_dit(cases.tiny_dit(config), ctx)
    y, masks = broadcast_text(*(cases.text_inputs() if is_text_rank(ctx) else (None, None)), ctx)
    vae = cases.tiny_vae()

    def on_step(step, _latent) -> None:
        if ctx.rank == 1:
            (Path(args.out) / f"rank1.step{step.index}").touch()
            if args.mode == "hang" and step.index == 2:
                time.sleep(3600)  # alive but silent: the others must time out
        time.sleep(0.05)

    chunks = cases.sample_chunks(model, config, y, masks, seed=5, progress=False, callback=on_step)
    if is_output_rank(ctx):
        with VideoWriter(Path(args.out) / "out.mp4", fps=8) as writer:
            for chunk in chunks:
                writer.append(parallel_decode_chunk(vae, chunk, ctx, fps=8, tiling=cases.VAE_TILES).numpy())
    else:
        for chunk in chunks:
            parallel_decode_chunk(vae, chunk, ctx, fps=8, tiling=cases.VAE_TILES)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["compare", "die", "hang"])
    parser.add_argument("out")
    parser.add_argument("--layouts", nargs="+", default=["2x1"])
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    contexts = []
    start = time.monotonic()
    try:
        for layout in args.layouts:
            sizes, _, overlap = layout.partition(":")
            cp, pp = (int(n) for n in sizes.split("x"))
            config = cases.make_config(cp, pp, int(overlap or 1), num_steps=4 if args.mode == "compare" else 16)
            ctx = setup_from_env(config, timeout=args.timeout)
            contexts.append(ctx)
            if args.mode == "compare":
                compare(args, ctx, config, layout)
            else:
                failing_run(args, ctx, config)
    except DistributedError as err:
        print(f"worker rank {contexts[-1].rank}: error after {time.monotonic() - start:.1f}s: {err}", file=sys.stderr)
        return 3
    finally:
        for ctx in reversed(contexts):  # the first one owns the process group
            teardown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
