"""The attention kernels this machine offers at the window step's shape, timed side by side (issue 20).

Attention is about 60% of the common workload's roofline and magi1 and the official-math transcription call
the same SDPA kernel, so a faster step needs a faster attention kernel. This times the candidates on one
query chunk over a key span, grouped-query as the model runs it, alternating in one process:

    sdpa         torch SDPA in the input dtype (CPU flash kernel)
    sdpa fp32    the same on widened float32 operands, conversions included (magi1.ops.half_math)
    flex         torch.compile(flex_attention) (inductor's CPU template), compile time excluded

    python benchmarks/attention_kernels.py --spans 3072 6144 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from common import clock, machine_line, markdown_table, save_section


def _candidates(q, k, v):
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    return {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        "sdpa fp32": lambda: F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True),
        "flex": lambda: compiled(q, k, v, enable_gqa=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, nargs="+", default=[3072, 6144], help="key lengths")
    parser.add_argument("--q_len", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv_heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-save", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = []
    for span in args.spans:
        q = torch.randn(1, args.heads, args.q_len, args.head_dim).to(dtype)       # (B, H, Lq, D)
        k = torch.randn(1, args.kv_heads, span, args.head_dim).to(dtype)         # (B, G, Lk, D)
        v = torch.randn(1, args.kv_heads, span, args.head_dim).to(dtype)
        flops = 4 * args.heads * args.q_len * span * args.head_dim
        kernels = _candidates(q, k, v)
        reference = kernels["sdpa fp32"]().float()
        errors = {}
        for name, run in kernels.items():  # warm-up: compiles flex, and checks each against float32 SDPA
            errors[name] = ((run().float() - reference).norm() / reference.norm()).item()
        times = {name: [] for name in kernels}
        for _ in range(args.repeat):  # alternate, so machine load falls on every kernel alike
            for name, run in kernels.items():
                start = clock()
                run()
                times[name].append(clock() - start)
        base = statistics.median(times["sdpa"])
        for name in kernels:
            seconds = statistics.median(times[name])
            rows.append([f"{args.q_len}x{span}", name, round(seconds, 3), round(flops / seconds / 1e12, 3),
                         f"{seconds / base:.2f}x", f"{errors[name]:.1e}"])
    table = markdown_table(["query x keys", "kernel", "s", "TFLOP/s", "time / sdpa", "rel. error vs fp32 sdpa"],
                           rows)
    body = (f"{machine_line()}\n\n`python benchmarks/attention_kernels.py --spans {' '.join(map(str, args.spans))} "
            f"--repeat {args.repeat}`: {args.heads} query heads in {args.kv_heads} KV groups of {args.head_dim}, "
            f"{args.dtype}; medians of {args.repeat} alternating rounds.\n\n{table}")
    print(body)
    if not args.no_save:
        save_section("Attention kernels at the window step's shape", body)


if __name__ == "__main__":
    main()
