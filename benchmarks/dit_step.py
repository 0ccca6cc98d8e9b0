"""DiT forward at a medium size against this machine's per-op roofline, alone or side by side with the
official layer math.

Both workloads use the medium config: hidden 1024, 8 layers, 16 heads / 4 KV groups of 64, ffn 4096, GELU;
4 chunks of 6 latent frames at 32x32 latent (6144 query tokens), 128 text tokens per chunk.

- `common` (default; the workload of issue 20): block-causal window of 4 with no cache, one forward: chunk j
  attends to chunks 0..j (1, 2, 3, 4 chunks of keys).
- `window`: the steady state of a long video: the window's chunks sit at steps 48, 32, 16, 0 of 64, so with
  noise2clean_kvrange [5, 4, 3, 2] they see 2, 3, 4 and 5 chunks of keys, the older ones read from a KV cache
  holding 4 earlier clean chunks.

Roofline (`roofline.py`): every GEMM at the rate this machine reaches on that GEMM shape alone, every
attention call at the SDPA rate on its (query, key) lengths, measured in this run between the timed steps;
for bf16 each op takes the better of the native and the via-float32 kernel. "rest" is the profiled share of
the step outside GEMM and attention kernels (copies, norms, GELU, rotary, gates).

`--side-by-side` (common workload) times magi1 against `official_dit.py`, a plain-PyTorch transcription of the
official layer math with SDPA attention, same weights and inputs, alternating (the order rotates every round);
it prints each system's time, the official/magi1 ratio (median of the per-round ratios), and time / roofline.
The transcription runs linear_proj as the official code does on a CPU (bf16, "official cpu") and as it does on
a GPU (float32 autocast, "official fp32 proj"; the same thing in float32).

    python benchmarks/dit_step.py [--workload common window] [--dtype bf16 fp32] [--layers 8] [--repeat 3]
                                  [--side-by-side] [--half-math auto native fp32] [--compile] [--no-save]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import torch

from common import clock, clock_name, machine_line, markdown_table, median, save_section, sync, use_cpu_clock
from official_dit import official_forward
from roofline import dit_ops, measure_roofline, rest_share
from magi1.config import ModelConfig
from magi1.models.dit import MagiDiT
from magi1.models.kv_cache import KVCache
from magi1.ops import cpu_paths
from magi1.ops.half_math import HALF_DTYPES, half_math
from magi1.runtime import parse_dtype, pick_device

CHUNKS, CHUNK_FRAMES, TEXT, LATENT = 4, 6, 128, 32
WINDOW_SPANS = [2, 3, 4, 5]  # `window`: chunks of keys per window chunk, oldest first
CACHED = 4                   # `window`: clean chunks already in the cache
COMMON_WINDOW = 4            # `common`: block-causal window in chunks


def medium_config(dtype: str, layers: int = 8) -> ModelConfig:
    return ModelConfig(num_layers=layers, hidden_size=1024, ffn_hidden_size=4096, num_attention_heads=16,
                       num_query_groups=4, kv_channels=64, caption_channels=4096, caption_max_length=TEXT,
                       params_dtype=dtype)


def chunk_tokens(latent: int) -> int:
    return CHUNK_FRAMES * (latent // 2) ** 2


def random_model(c: ModelConfig, device) -> MagiDiT:
    """Float32 model with random bf16-valued weights (as official checkpoints are), plain-LayerNorm gains near 1."""
    torch.manual_seed(0)
    model = MagiDiT(dataclasses.replace(c, params_dtype="torch.float32")).to(device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point():
                p.normal_(0, 0.02)
                if name.endswith("layer_norm.weight"):  # stored gains (no +1): keep the signal
                    p.add_(1)
                p.copy_(p.bfloat16().float())
    return model


def build_inputs(workload: str, c: ModelConfig, latent: int, device):
    ctn = chunk_tokens(latent)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, CHUNKS * CHUNK_FRAMES, latent, latent, generator=g)
    t = torch.tensor([[0.6, 0.3, 0.1, 0.01]])
    y = torch.randn(CHUNKS, 1, TEXT, c.caption_channels, generator=g)
    mask = torch.ones(CHUNKS, 1, TEXT)
    if workload == "common":
        spans = [(max(0, j + 1 - COMMON_WINDOW) * ctn, (j + 1) * ctn) for j in range(CHUNKS)]
    else:
        ends = [CACHED + j + 1 for j in range(CHUNKS)]
        spans = [(max(0, e - s) * ctn, e * ctn) for e, s in zip(ends, WINDOW_SPANS)]
    kv_range = torch.tensor(spans, dtype=torch.int32)
    return [v.to(device) for v in (x, t, y, mask, kv_range)]


def fill_cache(model: MagiDiT, c: ModelConfig, latent: int, device) -> KVCache:
    """Write CACHED clean chunks (random latents) into a fresh cache, as the sampler's clean pass does."""
    ctn = chunk_tokens(latent)
    cache = KVCache(max_tokens=(CACHED + CHUNKS) * ctn)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, CACHED * CHUNK_FRAMES, latent, latent, generator=g).to(device)
    t = torch.full((1, CACHED), 0.9999, device=device)
    y = torch.zeros(CACHED, 1, TEXT, c.caption_channels, device=device)
    mask = torch.zeros(CACHED, 1, TEXT, device=device)
    mask[:, :, :8] = 1
    kv_range = torch.tensor([[i * ctn, (i + 1) * ctn] for i in range(CACHED)], dtype=torch.int32, device=device)
    with torch.inference_mode():
        model(x, t, y, mask, kv_range, null_adaln=True, kv_cache=cache, read_cache=True, write_cache=True)
    return cache


class Systems:
    """The models of one run (shared weights) and a callable per (system, dtype) returning the output."""

    def __init__(self, workload: str, layers: int, latent: int, device, compile_layers: bool = False):
        self.workload, self.latent, self.device = workload, latent, device
        self.config = medium_config("torch.float32", layers)
        self.reference = random_model(self.config, device)
        self.inputs = build_inputs(workload, self.config, latent, device)
        self.models = {torch.float32: self.reference}
        self.compile_layers = compile_layers
        self.caches = {}

    def model(self, dtype: torch.dtype) -> MagiDiT:
        if dtype not in self.models:
            self.models[dtype] = copy.deepcopy(self.reference).apply_precision(dtype)
        model = self.models[dtype]
        if self.compile_layers and not getattr(model, "_compiled", False):
            from magi1.models.dit_layers import compile_layers

            compile_layers(model.videodit_blocks)
            model._compiled = True
        return model

    def magi1(self, dtype: torch.dtype):
        model = self.model(dtype)
        x, t, y, mask, kv_range = self.inputs
        if self.workload == "window":
            cache = self.caches.get(dtype) or fill_cache(model, self.config, self.latent, self.device)
            self.caches[dtype] = cache
            kwargs = dict(kv_cache=cache, slice_point=CACHED)
        else:
            kwargs = {}

        def run():
            with torch.inference_mode():
                return model(x, t, y, mask, kv_range, null_adaln=False, **kwargs)

        return run

    def official(self, dtype: torch.dtype, linear_proj: str):
        state = dict(self.model(dtype).state_dict())
        x, t, y, mask, kv_range = self.inputs
        c = dataclasses.replace(self.config, params_dtype=str(dtype))

        def run():
            with torch.inference_mode():
                return official_forward(state, c, x, t, y, mask, kv_range, False, linear_proj=linear_proj)

        return run


def timed(fn, device) -> float:
    start = clock()
    fn()
    sync(device)
    return clock() - start


def relative_error(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(norm-relative, max-abs / max |want|) error of got against want."""
    diff = (got.double() - want.double())
    return (diff.norm() / want.double().norm()).item(), (diff.abs().max() / want.double().abs().max()).item()


def run_dtype(systems: Systems, dtype_name: str, half_mode: str, repeat: int, side_by_side: bool,
              official_modes: list[str], reference_out: torch.Tensor | None) -> dict:
    """Time magi1 (and the transcriptions) in one dtype, alternating, with a roofline measured every round."""
    dtype, device = parse_dtype(dtype_name), systems.device
    c = systems.config
    x, t, _, mask, kv_range = systems.inputs
    gemms, attns = dit_ops(c, tuple(x.shape), t.shape[1], kv_range, mask)
    with half_math(half_mode):
        runs = {"magi1": systems.magi1(dtype)}
        if side_by_side:
            for mode in (official_modes if dtype in HALF_DTYPES else official_modes[:1]):
                label = "official" if dtype not in HALF_DTYPES else ("official cpu" if mode == "cpu" else "official fp32 proj")
                runs[label] = systems.official(dtype, mode)
        outputs = {name: fn() for name, fn in runs.items()}  # warm-up, and the outputs to compare
        names = list(runs)
        rounds = []
        for r in range(repeat):
            roof = measure_roofline(c, gemms, attns, dtype, device)
            order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
            seconds = {name: timed(runs[name], device) for name in order}
            rounds.append((roof, seconds))
        share, top, kinds = rest_share(runs["magi1"])
    result = {"dtype": dtype_name, "half": half_mode if dtype in HALF_DTYPES else "-", "rounds": rounds,
              "rest": share, "rest_top": top, "kinds": kinds, "outputs": outputs, "names": names}
    if side_by_side and dtype == torch.float32:
        official = next(v for k, v in outputs.items() if k != "magi1")
        result["transcription_error"] = relative_error(outputs["magi1"], official)
    if reference_out is not None and dtype in HALF_DTYPES:
        result["error_vs_fp32"] = relative_error(outputs["magi1"], reference_out)
    return result


def rows_of(result: dict) -> list[list]:
    rounds = result["rounds"]
    roof = median(r.seconds for r, _ in rounds)
    rows = []
    for name in result["names"]:
        secs = median(s[name] for _, s in rounds)
        vs = "1.00x" if name == "magi1" else f"{median(s[name] / s['magi1'] for _, s in rounds):.2f}x"
        flops = rounds[0][0].matmul_flops + rounds[0][0].attention_flops
        rows.append([result["dtype"], name, result["half"], f"{secs:.2f}", vs, f"{flops / secs / 1e12:.3f}",
                     f"{roof:.2f}", f"{median(s[name] / r.seconds for r, s in rounds):.2f}x"])
    return rows


HEADERS = ["dtype", "system", "half math", "step s", "time / magi1", "achieved TFLOP/s", "roofline s",
           "time / roofline"]


def command_options(args) -> list[str]:
    """The options that reproduce this run, for the section's quoted command (every one that changes it)."""
    options = [f"--workload {args.workload}", f"--dtype {' '.join(args.dtype)}", f"--layers {args.layers}"]
    if args.latent != LATENT:
        options.append(f"--latent {args.latent}")
    options.append(f"--repeat {args.repeat}")
    if args.half_math != ["auto"]:
        options.append(f"--half-math {' '.join(args.half_math)}")
    if args.side_by_side:
        options.append("--side-by-side")
        if args.official != ["cpu", "fp32"]:
            options.append(f"--official {' '.join(args.official)}")
    options += [flag for flag, on in (("--compile", args.compile), ("--cpu-clock", args.cpu_clock)) if on]
    if args.device != "cpu":
        options.append(f"--device {args.device}")
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--workload", choices=["common", "window"], default="common")
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--half-math", nargs="+", default=["auto"], choices=["auto", "native", "fp32"],
                        help="how magi1 runs bf16 GEMMs / attention (magi1.ops.half_math); several = one row each")
    parser.add_argument("--layers", type=int, default=8, help="transformer layers (8 = the medium config)")
    parser.add_argument("--latent", type=int, default=LATENT, help="latent height = width (32 = the medium config)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (medians)")
    parser.add_argument("--side-by-side", action="store_true", help="also time the official-math transcription")
    parser.add_argument("--official", nargs="+", choices=["cpu", "fp32"], default=["cpu", "fp32"],
                        help="transcription variants in bf16: linear_proj as on a CPU (bf16) / as on a GPU (fp32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the layer MLPs (opt-in path)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="one thread, timed by process CPU time: robust on a machine shared with other jobs")
    parser.add_argument("--no-save", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if args.side_by_side and args.workload != "common":
        parser.error("--side-by-side runs the common workload (the transcription has no KV cache)")
    device = pick_device(args.device)
    if args.cpu_clock:
        use_cpu_clock()
    systems = Systems(args.workload, args.layers, args.latent, device, args.compile)
    x, t, _, mask, kv_range = systems.inputs
    reference = None
    if any(parse_dtype(d) in HALF_DTYPES for d in args.dtype):  # the float32 output bf16 is judged against
        reference = systems.magi1(torch.float32)()
    results, notes = [], []
    for name in args.dtype:
        for mode in (args.half_math if parse_dtype(name) in HALF_DTYPES else ["auto"]):
            result = run_dtype(systems, name, mode, args.repeat, args.side_by_side, args.official, reference)
            results.append(result)
            for row in rows_of(result):
                print(markdown_table(HEADERS, [row]).splitlines()[-1], flush=True)
            top = ", ".join(f"{k.replace('aten::', '')} {v:.1%}" for k, v in result["rest_top"][:4])
            notes.append(f"- {name} ({result['half']}): rest of the magi1 step {result['rest']:.1%} (largest: {top})")
            last = result["rounds"][-1][0]
            k = result["kinds"]
            notes.append(f"- {name} magi1 profile: GEMM kernels {k['GEMM']:.2f} s (roofline {last.gemm_seconds:.2f} s), "
                         f"attention kernels {k['attention']:.2f} s (roofline {last.attention_seconds:.2f} s), "
                         f"rest {k['rest']:.2f} s")
            if "error_vs_fp32" in result:
                norm, peak = result["error_vs_fp32"]
                notes.append(f"- {name} magi1 output vs the float32 reference: {norm:.2e} relative (norm), "
                             f"{peak:.2e} max abs / max |ref|")
            if "transcription_error" in result:
                norm, peak = result["transcription_error"]
                notes.append(f"- float32 magi1 vs the official-math transcription: {norm:.2e} relative, {peak:.2e} max")
    roof_rows = [[r[0], f"{r[1]:.1f}", f"{r[2]:.3f}", r[3], f"{r[4]:.3f}"] for r in results[0]["rounds"][-1][0].rows]
    gemms, attns = dit_ops(systems.config, tuple(x.shape), t.shape[1], kv_range, mask)
    matmul = sum(op.flops for op in gemms)
    attention = sum(op.flops(systems.config.num_attention_heads, systems.config.kv_channels) for op in attns)
    cpu_paths.half_path(torch.bfloat16), cpu_paths.fp32_islands_path()  # every table names the bf16 path
    decided = cpu_paths.describe()
    paths = "; ".join(f"{k}: {v}" for k, v in decided.items())
    command = "python benchmarks/dit_step.py " + " ".join(command_options(args))
    table = markdown_table(HEADERS, [row for r in results for row in rows_of(r)])
    body = (f"{machine_line()}\n\nCPU paths chosen at run time: {paths}.\n\n`{command}`: one forward, "
            f"{matmul / 1e12:.3f} TFLOP of matmuls + {attention / 1e12:.3f} TFLOP of attention, "
            f"{CHUNKS} chunks of {chunk_tokens(args.latent)} tokens, {args.workload} workload. {clock_name()}; "
            f"medians of {args.repeat} rounds, systems alternating; 'time / magi1' is the median of the per-round "
            f"ratios.\n\n{table}\n\n" + "\n".join(notes)
            + f"\n\nPer-op roofline ({results[0]['dtype']}, last round):\n\n"
            + markdown_table(["op", "GFLOP", "TFLOP/s", "path", "s"], roof_rows))
    print(body)
    if not args.no_save:
        title = (f"DiT step, {args.workload} workload" + (", side by side" if args.side_by_side else "")
                 + (", compiled MLPs" if args.compile else ""))  # a --compile run keeps the plain section
        save_section(title + (" (CPU clock)" if args.cpu_clock else ""), body)


if __name__ == "__main__":
    main()
