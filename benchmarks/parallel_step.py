"""The medium-config DiT window step (see dit_step.py) on 1, 2 and 4 CPU processes (gloo on loopback).

Each layout launches its processes the way torchrun does and times one forward of the steady-state window
step (4 chunks, key spans [2, 3, 4, 5] chunks, 4 chunks cached) on rank 0, between barriers. The cores
are split between the processes (torch threads = cores // processes), so on a small machine more
processes mainly add communication: the numbers are reported as measured. The outputs of every layout are
compared with the single-process output (max abs difference).

    python benchmarks/parallel_step.py [--layouts 1x1 2x1 1x2 4x1 2x2] [--repeat 2] [--dtype fp32]
    python benchmarks/parallel_step.py --layouts 2x1 --layers 1 --repeat 1 --no-save   # a check in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import machine_line, markdown_table, save_section
from dit_step import CACHED, CHUNK_FRAMES, CHUNKS, LATENT, WINDOW_SPANS, build_inputs, fill_cache, medium_config

HERE = Path(__file__).resolve()
NOTE = ("Read with care: on a machine with few cores every extra process only takes threads from the others, and "
        "pipeline stages run one after another for a single video, so no speed-up is expected; differences of a few "
        "tens of percent on a shared machine are load noise. Every layout must give the single-process output.")


# ---------------------------------------------------------------------------------------------- one rank
def run_rank(args) -> None:
    import torch.distributed as dist

    from magi1.config import EngineConfig, MagiConfig
    from magi1.models.dit import MagiDiT
    from magi1.parallel import parallelize_dit, setup_from_env, teardown
    from magi1.runtime import parse_dtype

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    cp, pp = (int(n) for n in args.layout.split("x"))
    dtype = parse_dtype(args.dtype)
    model_config = medium_config(str(dtype), args.layers)
    config = MagiConfig(model_config=model_config, engine_config=EngineConfig(
        distributed_backend="gloo", cp_size=cp, pp_size=pp, cp_strategy="cp_ulysses" if cp > 1 else "none"))
    ctx = setup_from_env(config, timeout=600)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = MagiDiT(model_config)
    with torch.no_grad():
        for p in model.parameters():  # the same small random weights on every rank
            if p.is_floating_point():
                p.normal_(0, 0.02)
    model.apply_precision(dtype)
    parallelize_dit(model, ctx)
    cache = fill_cache(model, model_config, LATENT, device)
    x, t, y, mask, kv_range = build_inputs("window", model_config, LATENT, device)

    def step():
        with torch.inference_mode():
            return model(x, t, y, mask, kv_range, null_adaln=False, kv_cache=cache, slice_point=CACHED)

    def barrier():
        if ctx is not None:
            dist.barrier()

    out = step()  # warm-up
    times = []
    for _ in range(args.repeat):
        barrier()
        start = time.perf_counter()
        out = step()
        barrier()
        times.append(time.perf_counter() - start)
    if ctx is None or ctx.rank == 0:
        torch.save(out, Path(args.out) / f"{args.layout}.pt")
        info = {"times": times, "threads": torch.get_num_threads()}
        (Path(args.out) / f"{args.layout}.json").write_text(json.dumps(info))
    teardown(ctx)


# ---------------------------------------------------------------------------------------------- launcher
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(layout: str, out: str, repeat: int, dtype: str, layers: int) -> None:
    cp, pp = (int(n) for n in layout.split("x"))
    world, port = cp * pp, free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        cmd = [sys.executable, str(HERE), "--rank-of", layout, "--out", out, "--repeat", str(repeat),
               "--dtype", dtype, "--layers", str(layers)]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"layout {layout}: ranks exited with {codes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["1x1", "2x1", "1x2", "4x1", "2x2"],
                        help="CPxPP (cp_size x pp_size); 1x1 is the single-process reference and runs first")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--layers", type=int, default=8, help="transformer layers (8 = the medium config)")
    parser.add_argument("--no-save", action="store_true", help="print only, leave docs/benchmarks.md alone")
    parser.add_argument("--rank-of", dest="layout", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.layout is not None:
        run_rank(args)
        return
    layouts = ["1x1"] + [x for x in args.layouts if x != "1x1"]
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for layout in layouts:
            launch(layout, out, args.repeat, args.dtype, args.layers)
            info = json.loads((Path(out) / f"{layout}.json").read_text())
            diff = (torch.load(Path(out) / f"{layout}.pt") - torch.load(Path(out) / "1x1.pt")).abs().max().item()
            cp, pp = (int(n) for n in layout.split("x"))
            best = min(info["times"])
            mean = sum(info["times"]) / len(info["times"])
            rows.append([layout, cp * pp, info["threads"], f"{best:.2f}", f"{mean:.2f}",
                         f"{diff:.1e}"])
            print(rows[-1], flush=True)
    base = float(rows[0][3])
    for row in rows:
        row.append(f"{base / float(row[3]):.2f}x")
    table = markdown_table(["cp x pp", "processes", "threads each", "best step s", "mean step s",
                            "max |out - 1 process|", "speed-up"], rows)
    tokens = CHUNKS * CHUNK_FRAMES * (LATENT // 2) ** 2
    command = (f"python benchmarks/parallel_step.py --layouts {' '.join(layouts)} --layers {args.layers} "
               f"--repeat {args.repeat} --dtype {args.dtype}")
    body = (f"{machine_line()}\n\n`{command}`: medium config ({args.layers} layers, hidden 1024), "
            f"{args.dtype}, one window step of {tokens} query tokens (key spans {WINDOW_SPANS} chunks, {CACHED} cached), "
            f"gloo on loopback, {args.repeat} timed repeats after a warm-up, timed on rank 0 between barriers.\n\n"
            f"{table}\n\n{NOTE}")
    print(body)
    if args.no_save:
        return
    save_section("DiT window step across CPU processes (medium config)", body)


if __name__ == "__main__":
    main()
