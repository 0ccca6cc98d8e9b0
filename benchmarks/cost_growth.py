"""Cost growth of a long video: time and peak memory per generated chunk for 2, 4, 8, 16 chunks.

Random-weight DiT, `sample_chunks` streaming (each chunk is dropped as soon as it is yielded, as a
consumer writing it to a file would), base-model guidance (3 passes per step), KV rows released as soon
as no later step reads them. Each chunk count runs in its own process, so its peak RSS is its own.

Time per chunk = wall time between two consecutive yielded chunks. In steady state that is one window
stage (num_steps / window_size forward steps over a full window of 4 chunks plus the re-encoded clean
one); the last 3 chunks of a video finish in shrinking windows and cost less, so the growth figure
compares chunk 2 with the last chunk that still had a full window (the 19-chunk run makes that chunk 16).

One torch thread by default: the growth is the point here, and on a machine shared with other jobs a
second OpenMP thread that gets descheduled stalls every small op at its barrier (measured: a 5-chunk
small-config run took ~10 s with 1 thread and ~2 min with 2 under load).

    python benchmarks/cost_growth.py [--chunks 2 4 8 16 19] [--config small|medium] [--steps 8] [--dtype fp32]
                                     [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from common import machine_line, markdown_table, peak_rss_mb, run_isolated, save_section

CONFIGS = {
    # name: (model overrides, latent size, caption tokens, caption channels)
    "small": (dict(num_layers=4, hidden_size=256, ffn_hidden_size=1024, num_attention_heads=4, num_query_groups=2,
                   kv_channels=64), 16, 32, 64),
    "medium": (dict(num_layers=8, hidden_size=1024, ffn_hidden_size=4096, num_attention_heads=16,
                    num_query_groups=4, kv_channels=64), 32, 128, 4096),
}
WINDOW = 4


def current_rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def worker(chunks: int, config_name: str, steps: int, dtype_name: str, threads: int | None) -> dict:
    from magi1.config import EngineConfig, MagiConfig, ModelConfig, RuntimeConfig
    from magi1.models.dit import MagiDiT
    from magi1.models.kv_cache import KVCache
    from magi1.runtime import parse_dtype
    from magi1.sampling.sampler import sample_chunks

    if threads:
        torch.set_num_threads(threads)
    overrides, latent, lc, ct = CONFIGS[config_name]
    dtype = parse_dtype(dtype_name)
    model_config = ModelConfig(caption_max_length=lc, caption_channels=ct, params_dtype=str(dtype), **overrides)
    config = MagiConfig(
        model_config=model_config,
        runtime_config=RuntimeConfig(cfg_number=3, num_steps=steps, window_size=WINDOW, num_frames=chunks * 24,
                                     video_size_h=8 * latent, video_size_w=8 * latent),
        engine_config=EngineConfig(),
    )
    config.validate()
    torch.manual_seed(0)
    model = MagiDiT(model_config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.apply_precision(dtype)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, chunks, lc, ct, generator=g)
    masks = torch.zeros(2, chunks, lc)
    masks[0, :, : lc // 2] = 1  # the prompt
    masks[1, :, :8] = 1  # the null caption
    cw = config.runtime_config.chunk_width
    ctn = cw * (latent // 2) ** 2
    cache = KVCache(chunks * ctn, num_layers=model_config.num_layers)
    kv_peak = [0]

    def watch_cache(step, latent_video) -> None:
        kv_peak[0] = max(kv_peak[0], cache.nbytes())

    rss_before = current_rss_mb()
    times = []
    start = time.perf_counter()
    for chunk in sample_chunks(model, config, y, masks, seed=1, kv_cache=cache, progress=False, callback=watch_cache):
        del chunk  # streamed: a real consumer writes it out and lets it go
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return dict(chunk_seconds=times, peak_rss_mb=peak_rss_mb(), rss_before_mb=rss_before,
                kv_peak_mb=kv_peak[0] / 2**20, tokens_per_chunk=ctn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8, 16, 19])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per chunk (a multiple of 4)")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.config, args.steps, args.dtype, args.threads)))
        return

    rows, results = [], {}
    for n in args.chunks:
        cmd = [__file__, "--worker", str(n), "--config", args.config, "--steps", str(args.steps), "--dtype", args.dtype,
               "--threads", str(args.threads)]
        r = results[n] = run_isolated(cmd)
        t = r["chunk_seconds"]
        last_full = max(1, n - WINDOW)  # index of the last chunk that finished in a full window
        second = t[1] if n > 1 else float("nan")
        rows.append([n, f"{sum(t):.2f}", f"{t[0]:.2f}", f"{second:.3f}", f"{t[last_full]:.3f} (#{last_full + 1})",
                     f"{t[last_full] / second:.2f}" if n > 1 else "-", f"{t[-1]:.3f}", f"{r['kv_peak_mb']:.1f}",
                     f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f}"])
        print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    longest = results[sizes[-1]]["chunk_seconds"] if (sizes := sorted(results)) else []
    body = (f"{machine_line()}\n\n`python benchmarks/cost_growth.py --config {args.config} --steps {args.steps} "
            f"--dtype {args.dtype} --threads {args.threads}`: random-weight DiT ({args.config}: "
            f"{', '.join(f'{k}={v}' for k, v in CONFIGS[args.config][0].items())}), "
            f"{CONFIGS[args.config][1]}x{CONFIGS[args.config][1]} latent, {args.steps} steps, cfg 3, streamed; "
            f"one process per row. Seconds are wall time between yielded chunks; chunk 1 includes filling the "
            f"window; the last {WINDOW - 1} chunks finish in shrinking windows.\n\n{markdown_table(HEADERS, rows)}"
            f"\n\nSeconds per chunk, {sizes[-1]}-chunk run: {', '.join(f'{x:.2f}' for x in longest)}.")
    if 4 in results and sizes[-1] > 4:
        body += (f"\n\nPeak RSS {sizes[-1]} chunks / 4 chunks: "
                 f"{results[sizes[-1]]['peak_rss_mb'] / results[4]['peak_rss_mb']:.3f}; "
                 f"growth over the pre-sampling RSS: {results[4]['peak_rss_mb'] - results[4]['rss_before_mb']:.0f} MB "
                 f"-> {results[sizes[-1]]['peak_rss_mb'] - results[sizes[-1]]['rss_before_mb']:.0f} MB.")
    print(body)
    if not args.no_save:
        save_section("Cost growth per chunk", body)


HEADERS = ["chunks", "total s", "chunk 1 s", "chunk 2 s", "last full-window chunk s", "ratio to chunk 2",
           "last chunk s", "KV cache peak MB", "peak RSS MB", "RSS growth MB"]

if __name__ == "__main__":
    sys.exit(main())
