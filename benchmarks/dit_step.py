"""DiT forward for one window step at a medium config, against the machine's own roofline.

Medium config: hidden 1024, 8 layers, 16 heads / 4 KV groups of 64, ffn 4096; 4 chunks of 6 latent frames at
32x32 latent (6144 query tokens), 128 text tokens. The step is the steady state of a long video: the window's
chunks sit at steps 48, 32, 16, 0 of 64, so with noise2clean_kvrange [5, 4, 3, 2] they see 2, 3, 4 and 5 chunks
of keys, the older ones read from a KV cache holding 4 earlier clean chunks.

Roofline = matmul FLOPs / GEMM rate + attention FLOPs (only the key spans used) / SDPA rate, in the step's
dtype. The rates are measured in this run, interleaved with the step timings (the machine is shared: each
round times the GEMM, the SDPA and the step back to back, and the ratio is the median over rounds). For
bf16 the rate is the better of torch's native bf16 kernel and the float32 kernel on widened bf16 operands
(`magi1.ops.half_math`), the way the model itself runs on CPUs without bf16 units.

    python benchmarks/dit_step.py [--dtype bf16 fp32] [--layers 8] [--repeat 3] [--half-math auto native]
                                  [--compile]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from common import (clock, clock_name, dit_call_flops, gemm_rate, machine_line, markdown_table, median, save_section, sdpa_rate, sync,
                    use_cpu_clock)
from magi1.config import ModelConfig
from magi1.models.dit import MagiDiT
from magi1.models.kv_cache import KVCache
from magi1.ops.half_math import HALF_DTYPES, half_math
from magi1.runtime import parse_dtype, pick_device

CHUNKS, CHUNK_FRAMES, LATENT, TEXT = 4, 6, 32, 128
SPANS = [2, 3, 4, 5]          # chunks of keys per window chunk, oldest first
CACHED = 4                    # clean chunks already in the cache
CHUNK_TOKENS = CHUNK_FRAMES * (LATENT // 2) ** 2


def medium_config(dtype: str, layers: int = 8) -> ModelConfig:
    return ModelConfig(num_layers=layers, hidden_size=1024, ffn_hidden_size=4096, num_attention_heads=16,
                       num_query_groups=4, kv_channels=64, caption_channels=4096, caption_max_length=TEXT,
                       params_dtype=dtype)


def step_flops(c: ModelConfig) -> tuple[float, float]:
    """(matmul FLOPs, attention FLOPs) of one forward of the window step."""
    x, t, _, mask, kv_range = build_inputs(c, "cpu")
    return dit_call_flops(c, tuple(x.shape), t.shape[1], kv_range, mask)


def random_model(c: ModelConfig, dtype: torch.dtype, device) -> MagiDiT:
    torch.manual_seed(0)
    model = MagiDiT(c).to(device)
    with torch.no_grad():
        for p in model.parameters():  # small random weights, never zeros
            if p.is_floating_point():
                p.normal_(0, 0.02)
    return model.apply_precision(dtype)


def build_inputs(c: ModelConfig, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, CHUNKS * CHUNK_FRAMES, LATENT, LATENT, generator=g)
    t = torch.tensor([[0.6, 0.3, 0.1, 0.01]])
    y = torch.randn(CHUNKS, 1, TEXT, c.caption_channels, generator=g)
    mask = torch.ones(CHUNKS, 1, TEXT)
    ends = [(CACHED + j + 1) for j in range(CHUNKS)]
    kv_range = torch.tensor([[max(0, e - s) * CHUNK_TOKENS, e * CHUNK_TOKENS] for e, s in zip(ends, SPANS)],
                            dtype=torch.int32)
    return [v.to(device) for v in (x, t, y, mask, kv_range)]


def fill_cache(model: MagiDiT, c: ModelConfig, device) -> KVCache:
    """Write CACHED clean chunks (random latents) into a fresh cache, as the sampler's clean pass does."""
    cache = KVCache(max_tokens=(CACHED + CHUNKS) * CHUNK_TOKENS)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, CACHED * CHUNK_FRAMES, LATENT, LATENT, generator=g).to(device)
    t = torch.full((1, CACHED), 0.9999, device=device)
    y = torch.zeros(CACHED, 1, TEXT, c.caption_channels, device=device)
    mask = torch.zeros(CACHED, 1, TEXT, device=device)
    mask[:, :, :8] = 1
    kv_range = torch.tensor([[i * CHUNK_TOKENS, (i + 1) * CHUNK_TOKENS] for i in range(CACHED)], dtype=torch.int32,
                            device=device)
    with torch.inference_mode():
        model(x, t, y, mask, kv_range, null_adaln=True, kv_cache=cache, read_cache=True, write_cache=True)
    return cache


def build_step(dtype: torch.dtype, layers: int, device, compile_layers: bool = False):
    """(model config, a callable running the window step once) for a random medium model."""
    c = medium_config(str(dtype), layers)
    model = random_model(c, dtype, device)
    if compile_layers:
        from magi1.models.dit_layers import compile_layers as compile_them

        compile_them(model.videodit_blocks)
    cache = fill_cache(model, c, device)
    x, t, y, mask, kv_range = build_inputs(c, device)

    def step():
        with torch.inference_mode():
            model(x, t, y, mask, kv_range, null_adaln=False, kv_cache=cache, slice_point=CACHED)

    return c, step


def measure(dtype_name: str, half_mode: str, layers: int, repeat: int, device, compile_layers: bool) -> list:
    dtype = parse_dtype(dtype_name)
    half = dtype in HALF_DTYPES
    with half_math(half_mode):
        c, step = build_step(dtype, layers, device, compile_layers)
        step()  # warm-up (and compilation)
    matmul, attn = step_flops(c)
    sdpa_shape = dict(heads=c.num_attention_heads, kv_heads=c.num_query_groups, head_dim=c.kv_channels,
                      q_len=CHUNK_TOKENS, k_len=int(CHUNK_TOKENS * sum(SPANS) / len(SPANS)), repeat=1)
    rounds = []
    for _ in range(repeat):
        gemm = {"native": gemm_rate(dtype, device, repeat=1, half_mode="native")}
        sdpa = {"native": sdpa_rate(dtype, device, half_mode="native", **sdpa_shape)}
        if half:
            gemm["fp32"] = gemm_rate(dtype, device, repeat=1, half_mode="fp32")
            sdpa["fp32"] = sdpa_rate(dtype, device, half_mode="fp32", **sdpa_shape)
        with half_math(half_mode):
            start = clock()
            step()
            sync(device)
            seconds = clock() - start
        roofline = matmul / max(gemm.values()) + attn / max(sdpa.values())
        rounds.append(dict(seconds=seconds, gemm=gemm, sdpa=sdpa, roofline=roofline, ratio=seconds / roofline))
    seconds = median(r["seconds"] for r in rounds)

    def rate(kind: str, mode: str) -> str:
        values = [r[kind][mode] for r in rounds if mode in r[kind]]
        return f"{median(values) / 1e12:.3f}" if values else "-"

    name = dtype_name + (" +compile" if compile_layers else "")
    return [name, half_mode if half else "-", layers, f"{seconds:.2f}", f"{(matmul + attn) / seconds / 1e12:.3f}",
            rate("gemm", "native"), rate("gemm", "fp32"), rate("sdpa", "native"), rate("sdpa", "fp32"),
            f"{median(r['roofline'] for r in rounds):.2f}", f"{median(r['ratio'] for r in rounds):.2f}x"]


HEADERS = ["dtype", "half math", "layers", "step s", "achieved TFLOP/s", "GEMM native", "GEMM via fp32",
           "SDPA native", "SDPA via fp32", "roofline s", "time / roofline"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--half-math", nargs="+", default=["auto"], choices=["auto", "native", "fp32"],
                        help="how bf16 GEMMs / attention run (magi1.ops.half_math); several = side by side")
    parser.add_argument("--layers", type=int, default=8, help="transformer layers (8 = the medium config)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd layers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="one thread, timed by process CPU time: robust on a machine shared with other jobs")
    parser.add_argument("--no-save", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = parser.parse_args()
    device = pick_device(args.device)
    if args.cpu_clock:
        use_cpu_clock()
    rows = []
    for name in args.dtype:
        modes = args.half_math if parse_dtype(name) in HALF_DTYPES else ["auto"]
        for mode in modes:
            for compiled in ([False, True] if args.compile else [False]):
                rows.append(measure(name, mode, args.layers, args.repeat, device, compiled))
                print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    c = dataclasses.replace(medium_config("float32"), num_layers=args.layers)
    matmul, attn = step_flops(c)
    table = markdown_table(HEADERS, rows)
    body = (f"{machine_line()}\n\n`python benchmarks/dit_step.py --layers {args.layers} --repeat {args.repeat}{' --cpu-clock' if args.cpu_clock else ''}`: "
            f"one forward, {matmul / 1e12:.3f} TFLOP of matmuls + {attn / 1e12:.3f} TFLOP of attention (key spans "
            f"{SPANS} chunks of {CHUNK_TOKENS} tokens, {CACHED} chunks cached). {clock_name()}; rates in TFLOP/s, "
            f"medians of {args.repeat} rounds; the roofline takes the better of the native and via-fp32 rates.\n\n{table}")
    print(body)
    if not args.no_save:
        title = "DiT window step (medium config" + (", CPU clock)" if args.cpu_clock else ")")
        save_section(title, body)


if __name__ == "__main__":
    main()
