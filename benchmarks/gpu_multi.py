"""Multi-GPU window step (context / pipeline parallel) and tile-parallel VAE decode. Run under torchrun:

    torchrun --nproc_per_node 8 benchmarks/gpu_multi.py --layouts 8x1 4x2 2x4 --check
    torchrun --nproc_per_node 1 benchmarks/gpu_multi.py --layouts 1x1          # the one-GPU baseline
    torchrun --nproc_per_node 4 benchmarks/gpu_multi.py --model 24B --layers 8 --height 720 --width 1280 --vae

Every layout in --layouts must use all the processes (cp x pp = WORLD_SIZE); they share one process group.
The model is the preset's width with --layers layers and random weights (the same on every rank), in bf16.
The step is the steady state of a long video: a window of 4 chunks at steps 48/32/16/0 of 64, key spans
[2, 3, 4, 5] chunks, 4 clean chunks in the KV cache. --check also runs the step on one GPU (rank 0, whole
model) and reports the largest difference (bf16: expect ~1e-2, not bit equality: shards change GEMM shapes).
--vae times a tile-parallel decode of one chunk with a random-weight VAE of the official size.
Results: a table on rank 0 and a JSON file (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

from common import machine_line, require_accelerator, run_main
from magi1.config import EngineConfig, MagiConfig, load_config
from magi1.models.dit import MagiDiT
from magi1.models.kv_cache import KVCache
from magi1.parallel import is_output_rank, parallelize_dit, setup_from_env, teardown
from magi1.runtime import peak_memory_bytes, pick_device, reset_peak_memory, synchronize

CHUNKS, CACHED, SPANS, CHUNK_FRAMES, TEXT = 4, 4, [2, 3, 4, 5], 6, 128


def build_model(args, device) -> MagiDiT:
    base = load_config(args.model).model_config
    fields = {**vars(base), "num_layers": args.layers, "params_dtype": "torch.bfloat16", "caption_max_length": TEXT}
    config = base.__class__(**fields)
    torch.manual_seed(0)
    with torch.device(device):
        model = MagiDiT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=None)
    return model.apply_precision(torch.bfloat16)


def step_inputs(model: MagiDiT, args, device):
    c = model.config
    h, w = args.height // 8, args.width // 8
    ctn = CHUNK_FRAMES * (h // c.patch_size) * (w // c.patch_size)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, c.latent_channels, CHUNKS * CHUNK_FRAMES, h, w, generator=g)
    y = torch.randn(CHUNKS, 1, TEXT, c.caption_channels, generator=g)
    mask = torch.ones(CHUNKS, 1, TEXT)
    ends = [CACHED + j + 1 for j in range(CHUNKS)]
    kv_range = torch.tensor([[max(0, e - s) * ctn, e * ctn] for e, s in zip(ends, SPANS)], dtype=torch.int32)
    t = torch.tensor([[0.6, 0.3, 0.1, 0.01]])
    # the clean chunks that fill the cache
    xc = torch.randn(1, c.latent_channels, CACHED * CHUNK_FRAMES, h, w, generator=g)
    yc = torch.zeros(CACHED, 1, TEXT, c.caption_channels)
    mc = torch.zeros(CACHED, 1, TEXT)
    mc[:, :, :8] = 1
    kc = torch.tensor([[i * ctn, (i + 1) * ctn] for i in range(CACHED)], dtype=torch.int32)
    move = lambda *ts: [v.to(device) for v in ts]  # noqa: E731
    return move(x, t, y, mask, kv_range), move(xc, torch.full((1, CACHED), 0.9999), yc, mc, kc), ctn


def run_step(model, inputs, clean, ctn, repeat, device, ctx):
    cache = KVCache((CACHED + CHUNKS) * ctn, num_layers=model.config.num_layers)
    with torch.inference_mode():
        xc, tc, yc, mc, kc = clean
        model(xc, tc, yc, mc, kc, null_adaln=True, kv_cache=cache, read_cache=True, write_cache=True)
        x, t, y, mask, kv_range = inputs

        def step():
            return model(x, t, y, mask, kv_range, null_adaln=False, kv_cache=cache, slice_point=CACHED)

        out = step()
        times = []
        for _ in range(repeat):
            if ctx is not None:
                dist.barrier()
            synchronize(device)
            start = time.perf_counter()
            out = step()
            synchronize(device)
            if ctx is not None:
                dist.barrier()
            times.append(time.perf_counter() - start)
    return out, times


def vae_decode_time(args, device, ctx, repeat) -> float:
    from magi1.models.vae import OFFICIAL_DDCONFIG, VAEConfig, ViTVAE
    from magi1.parallel import parallel_decode_chunk

    with torch.device(device):
        vae = ViTVAE(VAEConfig(**OFFICIAL_DDCONFIG))
    vae.init_weights(0).to(device=device, dtype=torch.bfloat16).eval().requires_grad_(False)
    latent = torch.randn(1, 16, CHUNK_FRAMES, args.height // 8, args.width // 8,
                         generator=torch.Generator().manual_seed(2)).to(device)
    parallel_decode_chunk(vae, latent, ctx, fps=24)
    times = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        parallel_decode_chunk(vae, latent, ctx, fps=24)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", default=None, help="CPxPP each; default: cp = WORLD_SIZE")
    parser.add_argument("--model", default="24B_base", help="preset whose width is used")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="compare with the step on one GPU")
    parser.add_argument("--vae", action="store_true", help="also time a tile-parallel VAE decode of one chunk")
    parser.add_argument("--out", default="gpu_multi.json")
    args = parser.parse_args()
    require_accelerator(pick_device(), "its process group is NCCL, one GPU per process, under torchrun")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    layouts = args.layouts or [f"{world}x1"]
    results, contexts = [], []
    try:
        for layout in layouts:
            cp, pp = (int(n) for n in layout.split("x"))
            base = load_config(args.model)
            config = MagiConfig(
                model_config=base.model_config.__class__(**{**vars(base.model_config), "num_layers": args.layers}),
                engine_config=EngineConfig(distributed_backend="nccl", cp_size=cp, pp_size=pp,
                                           cp_strategy="cp_ulysses" if cp > 1 else "none",
                                           distributed_timeout_minutes=10),
            )
            ctx = setup_from_env(config)
            contexts.append(ctx)
            device = ctx.device if ctx is not None else pick_device()
            model = build_model(args, device)
            inputs, clean, ctn = step_inputs(model, args, device)
            reference = None
            if args.check and is_output_rank(ctx):
                reference, _ = run_step(model, inputs, clean, ctn, 1, device, None)
            parallelize_dit(model, ctx)
            reset_peak_memory(device)
            out, times = run_step(model, inputs, clean, ctn, args.repeat, device, ctx)
            row = {"layout": layout, "processes": cp * pp, "query_tokens": CHUNKS * ctn,
                   "best_step_s": min(times), "median_step_s": statistics.median(times),
                   "peak_gib_rank": (peak_memory_bytes(device) or 0) / 2**30}
            if reference is not None:
                row["max_abs_diff_vs_one_gpu"] = (out.float() - reference.float()).abs().max().item()
            if args.vae:
                row["vae_decode_chunk_s"] = vae_decode_time(args, device, ctx, max(1, args.repeat // 2))
            results.append(row)
            del model
    finally:
        for ctx in reversed(contexts):
            teardown(ctx)
    if is_output_rank(contexts[0] if contexts else None):
        print(machine_line())
        for row in results:
            print(json.dumps(row))
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "world_size": world, "results": results}, fh, indent=2)


if __name__ == "__main__":
    run_main(main)
