"""End to end: the shipped demo model, text to an mp4 file, against the sampling alone, side by side.

Each round runs, each in a fresh process (cold caches), in turn:
- `dit`: `pipe.stream(output_type="latent")`: prompt encoding and the DiT chunk loop, no decode (DiT alone);
- `inline`: `pipe.generate_to_file` with each chunk decoded and encoded after it is clean (MAGI1_OVERLAP_DECODE=off);
- `overlap`: the same with decode + encode on the worker thread, overlapping later chunks (MAGI1_OVERLAP_DECODE=on).
The ratio total / DiT alone is taken within each round (the machine's load changes between rounds) and its
median reported; "first chunk" is the call to the first chunk in the file (for `dit`: the first latent chunk).
Loading the pipeline is timed apart. Every `--threads` value repeats the rounds with that many torch threads.

    python benchmarks/end_to_end.py [--prompt "..."] [--repeat 2] [--frames N] [--steps N] [--threads 2 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import machine_line, markdown_table, peak_rss_mb, run_isolated, save_section

DEFAULT_PROMPT = "a red ball falls and bounces"
MODES = ("dit", "inline", "overlap")
OVERLAP_SETTING = {"inline": "off", "overlap": "on"}


def worker(mode: str, prompt: str, frames: int | None, steps: int | None, device: str, seed: int) -> dict:
    import logging

    from magi1.chunk_output import overlap_for
    from magi1.pipeline import MagiPipeline

    logging.getLogger("magi1").setLevel(logging.WARNING)
    start = time.perf_counter()
    pipe = MagiPipeline.from_pretrained("demo", device=device)
    load = time.perf_counter() - start
    kwargs = dict(seed=seed, num_frames=frames, num_inference_steps=steps)
    if mode == "dit":
        start = time.perf_counter()
        first, chunks, out_frames = None, 0, None
        for _ in pipe.stream(prompt, output_type="latent", **kwargs):
            if first is None:
                first = time.perf_counter() - start
            chunks += 1
        total = time.perf_counter() - start
    else:
        with tempfile.TemporaryDirectory() as folder:
            report = pipe.generate_to_file(Path(folder) / "out.mp4", prompt=prompt, progress=False, **kwargs)
        first, total, chunks, out_frames = (report.seconds_to_first_chunk, report.seconds_total, report.num_chunks,
                                            report.num_frames)
    r = pipe.config.runtime_config
    return dict(load=load, first=first, total=total, chunks=chunks, frames=out_frames, peak_rss_mb=peak_rss_mb(),
                size=f"{r.video_size_h}x{r.video_size_w}", steps=steps or r.num_steps,
                auto=overlap_for(pipe, setting="auto", log=False).describe())


HEADERS = ["torch threads", "mode", "video", "frames", "chunks", "steps", "load s", "first chunk s", "total s",
           "total / DiT alone", "peak RSS MB"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--frames", type=int, default=None, help="default: the demo preset's")
    parser.add_argument("--steps", type=int, default=None, help="default: the demo preset's")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (each runs every mode once)")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="torch threads per process, one set of rounds each (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.prompt, args.frames, args.steps, args.device, args.seed)))
        return 0
    rows, notes = [], []
    for threads in args.threads:
        rounds = []
        for _ in range(args.repeat):
            runs = {}
            for mode in MODES:
                cmd = [__file__, "--worker", mode, "--prompt", args.prompt, "--device", args.device,
                       "--seed", str(args.seed)]
                cmd += ["--frames", str(args.frames)] if args.frames else []
                cmd += ["--steps", str(args.steps)] if args.steps else []
                try:
                    runs[mode] = run_isolated(cmd, env=_env(threads, OVERLAP_SETTING.get(mode)))
                except RuntimeError as err:  # most likely: the demo weights are not shipped (yet)
                    print(f"end-to-end benchmark could not run the demo pipeline:\n{err}", file=sys.stderr)
                    return 1
            rounds.append(runs)
        label = str(threads) if threads else "default"
        notes.append(f"{label} threads, `MAGI1_OVERLAP_DECODE=auto` picks: {rounds[0]['dit']['auto']}")
        for mode in MODES:
            med = {k: statistics.median(r[mode][k] for r in rounds) for k in ("load", "first", "total", "peak_rss_mb")}
            ratio = statistics.median(r[mode]["total"] / r["dit"]["total"] for r in rounds)
            r0 = rounds[0][mode]
            rows.append([label, mode, r0["size"], r0["frames"] or "-", r0["chunks"], r0["steps"], f"{med['load']:.2f}",
                         f"{med['first']:.2f}", f"{med['total']:.2f}", f"{ratio:.2f}x", f"{med['peak_rss_mb']:.0f}"])
    body = (f"{machine_line()}\n\n`python benchmarks/end_to_end.py --threads {' '.join(map(str, args.threads))} "
            f"--repeat {args.repeat}`: `MagiPipeline.from_pretrained(\"demo\")`, t2v \"{args.prompt}\", seed "
            f"{args.seed}; wall time, median of {args.repeat} rounds, each mode in a fresh process; the ratio is "
            f"taken within each round. dit = sampling alone (prompt encoding + DiT, no decode); inline / overlap "
            f"= `generate_to_file` with the chunk decode + mp4 encode after each chunk / on the worker thread. "
            f"\"first chunk\" = from the call to the first chunk in the file.\n\n"
            f"{markdown_table(HEADERS, rows)}\n\n" + "\n".join(f"- {n}" for n in notes))
    print(body)
    if not args.no_save:
        save_section("End to end (demo model)", body)
    return 0


def _env(threads: int, overlap: str | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if overlap is not None:
        env["MAGI1_OVERLAP_DECODE"] = overlap
    return env


if __name__ == "__main__":
    sys.exit(main())
