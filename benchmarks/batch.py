"""Batches of videos: time per video and memory for B = 1, 2, 4 videos denoised together.

Random-weight DiT, `sample_chunks` with B videos (each its own caption rows, noise and KV cache), base-model
guidance (3 passes per step), streamed. Each batch size runs in its own process, so its peak RSS is its own.
What grows with B: the activations of every pass and the KV caches (one per video); the weights do not.

    python benchmarks/batch.py [--batch 1 2 4] [--config small|medium] [--chunks 4] [--steps 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from common import machine_line, markdown_table, peak_rss_mb, run_isolated, save_section
from cost_growth import CONFIGS, current_rss_mb


def worker(batch: int, config_name: str, chunks: int, steps: int, threads: int | None) -> dict:
    from magi1.config import EngineConfig, MagiConfig, ModelConfig, RuntimeConfig
    from magi1.models.dit import MagiDiT
    from magi1.models.kv_cache import KVCache, KVCacheBatch
    from magi1.sampling.sampler import sample_chunks

    if threads:
        torch.set_num_threads(threads)
    overrides, latent, lc, ct = CONFIGS[config_name]
    model_config = ModelConfig(caption_max_length=lc, caption_channels=ct, params_dtype="torch.float32", **overrides)
    config = MagiConfig(model_config=model_config, engine_config=EngineConfig(), runtime_config=RuntimeConfig(
        cfg_number=3, num_steps=steps, window_size=4, num_frames=chunks * 24, video_size_h=8 * latent,
        video_size_w=8 * latent))
    config.validate()
    torch.manual_seed(0)
    model = MagiDiT(model_config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, batch, chunks, lc, ct, generator=g)
    masks = torch.zeros(2, batch, chunks, lc)
    masks[0, :, :, : lc // 2] = 1
    masks[1, :, :, :8] = 1
    ctn = config.tokens_per_chunk
    cache = KVCacheBatch([KVCache(chunks * ctn, num_layers=model_config.num_layers) for _ in range(batch)])
    noise = torch.randn(batch, 16, chunks * 6, latent, latent, generator=g)
    kv_peak = [0]
    rss_before = current_rss_mb()
    start = time.perf_counter()
    for chunk in sample_chunks(model, config, y, masks, noise, kv_cache=cache, progress=False,
                               callback=lambda step, lat: kv_peak.__setitem__(0, max(kv_peak[0], cache.nbytes()))):
        del chunk
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, peak_rss_mb=peak_rss_mb(), rss_before_mb=rss_before, kv_peak_mb=kv_peak[0] / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.config, args.chunks, args.steps, args.threads)))
        return
    rows, results = [], {}
    for b in args.batch:
        r = results[b] = run_isolated([__file__, "--worker", str(b), "--config", args.config, "--chunks",
                                       str(args.chunks), "--steps", str(args.steps), "--threads", str(args.threads)])
        growth = r["peak_rss_mb"] - r["rss_before_mb"]
        rows.append([b, f"{r['seconds']:.2f}", f"{r['seconds'] / b:.2f}", f"{r['kv_peak_mb']:.1f}",
                     f"{r['peak_rss_mb']:.0f}", f"{growth:.0f}"])
        print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    first = results[args.batch[0]]
    body = (f"{machine_line()}\n\n`python benchmarks/batch.py --config {args.config} --chunks {args.chunks} "
            f"--steps {args.steps} --threads {args.threads}`: random-weight DiT ({args.config}), "
            f"{CONFIGS[args.config][1]}x{CONFIGS[args.config][1]} latent, {args.chunks} chunks, cfg 3; one process "
            f"per row. RSS growth = peak RSS minus RSS before sampling (activations + KV caches). The rows run one "
            f"after another, so on a shared machine their seconds are noisy; the memory columns are not.\n\n"
            f"{markdown_table(HEADERS, rows)}")
    for b in args.batch[1:]:
        r = results[b]
        # with 2 chunks or fewer no clean chunk is cached while sampling: a ratio of two empty caches means nothing
        empty = f"- (empty at B={args.batch[0]})"
        kv = f"{r['kv_peak_mb'] / first['kv_peak_mb']:.2f}x" if first["kv_peak_mb"] > 0 else empty
        body += (f"\n\nB={b} against B={args.batch[0]}: time per video "
                 f"{(r['seconds'] / b) / (first['seconds'] / args.batch[0]):.2f}x, KV cache {kv}, RSS growth "
                 f"{(r['peak_rss_mb'] - r['rss_before_mb']) / max(first['peak_rss_mb'] - first['rss_before_mb'], 1):.2f}x.")
    print(body)
    if not args.no_save:
        save_section("Batches of videos", body)


HEADERS = ["videos", "total s", "s per video", "KV cache peak MB", "peak RSS MB", "RSS growth MB"]

if __name__ == "__main__":
    sys.exit(main())
