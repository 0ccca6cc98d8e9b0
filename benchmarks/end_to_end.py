"""End to end: the shipped demo model, text to video, time to first chunk and total time.

Everything a user waits for after the pipeline is built: T5 prompt encoding, the chunk sampler, the VAE
decode of each chunk as it is yielded. Loading the pipeline is timed separately. Runs in a fresh process
per repeat (cold caches), reporting the median.

    python benchmarks/end_to_end.py [--prompt "..."] [--repeat 2] [--frames N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from common import machine_line, markdown_table, peak_rss_mb, run_isolated, save_section

DEFAULT_PROMPT = "a red ball falls and bounces"


def worker(prompt: str, frames: int | None, steps: int | None, device: str, seed: int) -> dict:
    from magi1.pipeline import MagiPipeline

    start = time.perf_counter()
    pipe = MagiPipeline.from_pretrained("demo", device=device)
    load = time.perf_counter() - start
    start = time.perf_counter()
    first, chunks, out_frames = None, 0, 0
    for chunk in pipe.stream(prompt, seed=seed, num_frames=frames, num_inference_steps=steps):
        if first is None:
            first = time.perf_counter() - start
        chunks += 1
        out_frames += len(chunk.frames)
    total = time.perf_counter() - start
    r = pipe.config.runtime_config
    return dict(load=load, first=first, total=total, chunks=chunks, frames=out_frames, peak_rss_mb=peak_rss_mb(),
                size=f"{r.video_size_h}x{r.video_size_w}", steps=steps or r.num_steps)


HEADERS = ["video", "frames", "chunks", "steps", "load s", "first chunk s", "total s", "frames/s", "peak RSS MB"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--frames", type=int, default=None, help="default: the demo preset's")
    parser.add_argument("--steps", type=int, default=None, help="default: the demo preset's")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.prompt, args.frames, args.steps, args.device, args.seed)))
        return
    cmd = [__file__, "--worker", "--prompt", args.prompt, "--device", args.device, "--seed", str(args.seed)]
    cmd += ["--frames", str(args.frames)] if args.frames else []
    cmd += ["--steps", str(args.steps)] if args.steps else []
    try:
        runs = [run_isolated(cmd) for _ in range(args.repeat)]
    except RuntimeError as err:  # most likely: the demo weights are not shipped (yet)
        print(f"end-to-end benchmark could not run the demo pipeline:\n{err}", file=sys.stderr)
        return 1
    med = {k: statistics.median(r[k] for r in runs) for k in ("load", "first", "total", "peak_rss_mb")}
    r0 = runs[0]
    row = [r0["size"], r0["frames"], r0["chunks"], r0["steps"], f"{med['load']:.2f}", f"{med['first']:.2f}",
           f"{med['total']:.2f}", f"{r0['frames'] / med['total']:.1f}", f"{med['peak_rss_mb']:.0f}"]
    body = (f"{machine_line()}\n\n`python benchmarks/end_to_end.py`: `MagiPipeline.from_pretrained(\"demo\")`, t2v "
            f"\"{args.prompt}\", seed {args.seed}, streamed with `pipe.stream`; wall time, median of {args.repeat} "
            f"fresh processes. \"first chunk\" = from the call to the first decoded chunk (prompt encoding, "
            f"sampling, decode).\n\n{markdown_table(HEADERS, [row])}")
    print(body)
    if not args.no_save:
        save_section("End to end (demo model)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
