"""Shared helpers for the benchmarks: timing, the machine's own GEMM / SDPA rates, and the results table.

Benchmarks measure and print; they never assert. Speed is quoted as a ratio to rates measured in the same
run, because the machines here are shared and noisy.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from magi1.ops import half_math
from magi1.runtime import accelerator_available, synchronize

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if accelerator_available() else "no GPU"
    return (f"{cpu} ({bf16_path_line()}), {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {gpu}, {datetime.date.today().isoformat()}")


def bf16_path_line() -> str:
    """This CPU's vector capability, reported bf16 units and the bf16 GEMM path magi1 chose at run time."""
    from magi1.ops import cpu_paths

    report = cpu_paths.cpu_report()
    units = ", ".join(report.half_units(torch.bfloat16)) or "no bf16 units"
    native = cpu_paths.half_path(torch.bfloat16).choice == "native"
    islands = cpu_paths.fp32_islands_path().choice
    # the capability is what the CPU reports; a cap on oneDNN's instruction set is named beside it, since the
    # bf16 path was then chosen under that cap
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"{report.capability}, {units}" + (f", oneDNN capped at {cap}" if cap else "") + "; bf16 GEMMs "
            + ("native" if native else "as float32 GEMMs (half_math)")
            + f", linear_proj {'bf16-input GEMM' if islands == 'bf16-inputs' else 'float32 GEMM'}")


def refuse(message: str) -> None:
    """End the benchmark with one sentence on stderr and exit 2, as magi1's own commands refuse an input."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def require_accelerator(device: torch.device, instead: str) -> None:
    """Refuse at once, before any model is built, when a GPU benchmark would run on the CPU.

    Its full size on a CPU would take hours and tens of GB (the 4.5B weights alone are 9 GB in bf16).
    """
    if device.type != "cuda":
        refuse(f"this benchmark needs a GPU and torch sees none here ({instead})")


def run_main(main) -> None:
    """Run a benchmark's main(): a user error magi1 raises on purpose (an unknown preset, a device without
    CUDA) is its one sentence and exit 2 instead of a traceback; the exit code is main()'s."""
    from magi1.errors import is_user_facing

    try:
        code = main()
    except Exception as err:  # noqa: BLE001 - only magi1's deliberate errors are turned into one line
        if not is_user_facing(err):
            raise
        refuse(str(err))
    sys.exit(code or 0)


def sync(device: torch.device) -> None:
    synchronize(device)


# The clock every benchmark reads. Wall time by default; `use_cpu_clock()` switches to this process's CPU
# time, which on a shared machine (other jobs on the same cores) still measures the work done, as long
# as torch runs one thread (idle OpenMP workers spin and would be counted).
_clock = time.perf_counter


def use_cpu_clock() -> None:
    global _clock
    torch.set_num_threads(1)
    _clock = time.process_time


def clock() -> float:
    return _clock()


def clock_name() -> str:
    return "CPU time, 1 thread" if _clock is time.process_time else f"wall time, {torch.get_num_threads()} threads"


def time_it(fn, *, device: torch.device, warmup: int = 1, repeat: int = 3) -> float:
    """Median seconds (see `clock`) of `fn()` after `warmup` calls (synchronised on accelerators)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        sync(device)
        times.append(clock() - start)
    return statistics.median(times)


def gemm_rate(dtype: torch.dtype, device: torch.device, n: int = 2048, repeat: int = 5, *,
              half_mode: str = "native") -> float:
    """FLOP/s of an n x n x n GEMM x @ W^T (the layout of every model linear) in `dtype`, random data.

    half_mode (bf16 / fp16 only): "native" times torch's own half GEMM, "fp32" the float32 GEMM on the
    widened half operands, conversions included (`magi1.ops.half_math`).
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with half_math.half_math(half_mode):
        seconds = time_it(lambda: half_math.linear(a, b), device=device, warmup=1, repeat=repeat)
    return 2 * n**3 / seconds


def sdpa_rate(dtype: torch.dtype, device: torch.device, *, heads: int = 16, kv_heads: int | None = None,
              head_dim: int = 64, q_len: int = 1536, k_len: int = 6144, repeat: int = 3,
              half_mode: str = "native") -> float:
    """FLOP/s of torch SDPA for one query chunk over a long key span (the shape a window step has).

    kv_heads < heads: grouped-query attention as the model runs it. half_mode as in `gemm_rate`.
    """
    from magi1.ops.attention import attend

    kv_heads = kv_heads or heads
    q = torch.randn(1, q_len, heads, head_dim, device=device).to(dtype)
    k = torch.randn(1, k_len, kv_heads, head_dim, device=device).to(dtype)
    v = torch.randn(1, k_len, kv_heads, head_dim, device=device).to(dtype)
    with half_math.half_math(half_mode):
        seconds = time_it(lambda: attend(q, k, v), device=device, warmup=1, repeat=repeat)
    return 4 * heads * q_len * k_len * head_dim / seconds


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def save_section(title: str, body: str) -> None:
    """Replace (or append) one `## title` section of docs/benchmarks.md."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n\nWritten by `make bench` (benchmarks/*.py).\n"
    marker = f"## {title}\n"
    section = f"{marker}\n{body.strip()}\n\n"
    if marker in text:
        head, _, rest = text.partition(marker)
        nxt = rest.find("\n## ")
        text = head + section + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


def run_isolated(args: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Run `python <args>` in a fresh process that prints one JSON object as its last stdout line.

    Peak RSS is per process, so each size of a memory benchmark runs in its own process. env: the
    process's environment (default: this one's).
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).resolve().parent), env.get("PYTHONPATH")] if p)
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode:
        raise RuntimeError(f"{args} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values) -> float:
    return statistics.median(values)


def dit_call_flops(c, x_shape, chunks: int, kv_range: torch.Tensor, xattn_mask: torch.Tensor) -> tuple[float, float]:
    """(matmul FLOPs, attention FLOPs) of one MagiDiT call, from its arguments.

    x_shape (B, C, T, h, w), `chunks` = t.shape[1], kv_range (B*R, 2) key spans, xattn_mask (B*R, 1, Lc).
    Attention counts only the key spans each chunk reads (2 * 2 * q * k * head_dim per head: scores and the
    weighted sum). Matmuls count every linear of the layers plus the patch embedding, caption projection and
    final linear; elementwise work is not counted.
    """
    batch, _, frames, height, width = x_shape
    tokens_per_row = (frames // chunks // c.t_patch_size) * (height // c.patch_size) * (width // c.patch_size)
    tokens = batch * chunks * tokens_per_row
    d, qd, kvd = c.hidden_size, c.num_attention_heads * c.kv_channels, c.num_query_groups * c.kv_channels
    fc1 = 2 * c.ffn_hidden_size if c.gated_linear_unit else c.ffn_hidden_size
    # q, qx (d -> qd), k, v (d -> kvd), linear_proj (2 qd -> d), fc1, fc2
    per_token = 2 * d * (2 * qd + 2 * kvd) + 2 * (2 * qd) * d + 2 * d * fc1 + 2 * c.ffn_hidden_size * d
    caption_lengths = xattn_mask.reshape(batch * chunks, -1).bool().sum(dim=1).tolist()
    captions = sum(caption_lengths)
    text_kv = 2 * captions * c.xattn_hidden_size * 2 * kvd
    patch = c.in_channels * c.patch_size**2 * c.t_patch_size
    outer = 2 * tokens * patch * d + 2 * captions * c.caption_channels * c.xattn_hidden_size + 2 * tokens * d * patch
    matmul = c.num_layers * (tokens * per_token + text_kv) + outer
    keys = sum(int(e) - int(s) for s, e in kv_range.reshape(-1, 2).tolist())
    attn = c.num_layers * 4 * qd * tokens_per_row * (keys + captions)
    return float(matmul), float(attn)


class FlopCountingModel:
    """Wraps a MagiDiT: counts (matmul, attention) FLOPs of every call from its arguments, then runs it."""

    def __init__(self, model) -> None:
        self.model = model
        self.config = model.config
        self.distill = getattr(model, "distill", False)
        self.matmul = 0.0
        self.attention = 0.0

    def __call__(self, x, t, y, xattn_mask, kv_range, **kwargs):
        matmul, attn = dit_call_flops(self.config, tuple(x.shape), t.shape[1], kv_range, xattn_mask)
        self.matmul += matmul
        self.attention += attn
        return self.model(x, t, y, xattn_mask, kv_range, **kwargs)
