"""Which CPU kernels run half-precision math here: decided once per process, from what the CPU reports and
from a short measured probe, and logged once with the reason.

Two choices depend on the CPU:

1. Half GEMMs (bf16 / fp16 linears and attention): torch's native half kernels, or float32 kernels on the
   widened half values (`half_math`). With AMX / AVX512-BF16 units the native bf16 GEMM is several times faster
   than float32; without them torch falls back to a generic loop that is 5-15x slower than its float32 GEMM.
   `torch.ops.mkldnn._is_mkldnn_bf16_supported()` is no signal: it only asks for AVX512BW/VL/DQ, which CPUs
   without bf16 dot-product units have too. So: the CPU must report bf16 units (/proc/cpuinfo `amx_bf16` or
   `avx512_bf16`; `bf16` in an ARM `Features` line) AND a ~50 ms probe must find the native GEMM faster than
   the widened one. A CPU that reports none is still given the native path if the probe finds it clearly
   faster (a flag spelling this module does not know).
2. Float32 islands fed by bf16 values (the official `linear_proj`: bf16 inputs, float32 accumulation, float32
   output). CPU torch has no `mm(..., out_dtype=float32)` for bf16 operands (`aten::mm.dtype` is CUDA only),
   and every oneDNN linear entry point returns its input's dtype. The one CPU route to the bf16 units with a
   float32 result is oneDNN's reduced-precision float32 GEMM (`torch.backends.mkldnn.matmul.fp32_precision =
   "bf16"`, oneDNN fpmath mode bf16): it rounds float32 operands to bf16, multiplies on the bf16 units and
   accumulates and stores in float32. On operands that already hold bf16 values the rounding is exact, so it
   computes exactly the official product up to summation order. It is used when the half path is native and a
   probe finds it faster than the plain float32 GEMM and exact on bf16 values; otherwise the island runs as
   a plain float32 GEMM (on CPUs without bf16 units that IS the fastest kernel, the same one every widened
   GEMM uses).

Overrides: env `MAGI1_HALF_MATH` = auto | native | fp32 (see `half_math`), env `MAGI1_FP32_ISLANDS` =
auto | fp32 | bf16-inputs. Every decision is a pure function of (report, probe, override) so it is tested
with injected reports; `describe()` lists the decisions taken in this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

# Reported CPU features that mean native half-precision dot products, per dtype (x86 flags, ARM features).
HALF_UNIT_FLAGS = {
    torch.bfloat16: ("amx_bf16", "avx512_bf16", "bf16", "svebf16"),
    torch.float16: ("amx_fp16", "avx512_fp16"),
}
# Without a reported unit, the native path must measure this much faster to be trusted over the widened one.
UNREPORTED_NATIVE_MARGIN = 1.5
# The reduced-precision float32 GEMM must beat the plain one by this much to be worth a process-wide switch.
BF16_INPUT_GEMM_MARGIN = 1.2
# Relative error (to a float64 product) above which the reduced-precision GEMM is not float32 accumulation.
BF16_INPUT_GEMM_TOLERANCE = 1e-4
PROBE_SIZE = 512  # probe GEMMs are PROBE_SIZE^3: ~0.3 GFLOP, milliseconds on any CPU
PROBE_ROUNDS = 3


@dataclass(frozen=True)
class CpuReport:
    """What the CPU says about itself: model name, feature flags, and torch's vector capability."""

    model: str
    flags: frozenset[str] = field(default_factory=frozenset)
    capability: str = "unknown"

    def half_units(self, dtype: torch.dtype) -> list[str]:
        return [f for f in HALF_UNIT_FLAGS.get(dtype, ()) if f in self.flags]


@dataclass(frozen=True)
class GemmProbe:
    """Measured FLOP/s of two ways to run the same GEMM (the candidate and the baseline), and whether the
    candidate's values were right (None: not checked)."""

    candidate: float
    baseline: float
    exact: bool | None = None

    @property
    def speedup(self) -> float:
        return self.candidate / self.baseline if self.baseline > 0 else float("inf")


@dataclass(frozen=True)
class Decision:
    """One choice with its reason (a sentence a user can read in the log)."""

    choice: str
    reason: str


def read_cpu_report(cpuinfo: str | None = None) -> CpuReport:
    """The report of this CPU (or of the given /proc/cpuinfo text)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old or exotic builds
        capability = "unknown"
    return CpuReport(model or platform.processor() or platform.machine(), frozenset(flags), capability)


# ---------------------------------------------------------------------------------------------- pure decisions
def decide_half_path(dtype: torch.dtype, report: CpuReport, probe: GemmProbe | None, override: str = "auto") -> Decision:
    """"native" or "fp32" (widened) for half GEMMs of `dtype`. probe: candidate = native, baseline = widened."""
    name = str(dtype).replace("torch.", "")
    if override in ("native", "fp32"):
        return Decision(override, f"MAGI1_HALF_MATH={override}")
    units = report.half_units(dtype)
    if probe is None:
        return Decision("native" if units else "fp32", f"{report.model}: reports {units or f'no {name} units'}; not probed")
    rates = (f"probe: native {name} GEMM {probe.candidate / 1e12:.3f} TFLOP/s, "
             f"via float32 {probe.baseline / 1e12:.3f} TFLOP/s")
    if units:
        if probe.speedup >= 1.0:
            return Decision("native", f"{report.model} reports {', '.join(units)}; {rates}")
        return Decision("fp32", f"{report.model} reports {', '.join(units)} but its native {name} GEMM measured "
                                f"slower; {rates}")
    if probe.speedup >= UNREPORTED_NATIVE_MARGIN:
        return Decision("native", f"{report.model} reports no {name} units, yet the native GEMM measured "
                                  f"{probe.speedup:.1f}x faster; {rates}")
    return Decision("fp32", f"{report.model} reports no {name} units (capability {report.capability}); {rates}")


def decide_fp32_islands(half_choice: str, probe: GemmProbe | None, override: str = "auto") -> Decision:
    """"bf16-inputs" (oneDNN reduced-precision float32 GEMM) or "fp32" for float32 GEMMs of bf16 values.

    probe: candidate = reduced-precision GEMM, baseline = plain float32 GEMM, exact = the candidate's error
    on bf16 values was float32-accumulation sized.
    """
    if override in ("fp32", "bf16-inputs"):
        return Decision(override, f"MAGI1_FP32_ISLANDS={override}")
    if half_choice != "native":
        return Decision("fp32", "bf16 GEMMs run via float32 here, so a float32 GEMM is already the fastest kernel")
    if probe is None:
        return Decision("fp32", "not probed")
    rates = (f"probe: bf16-input float32 GEMM {probe.candidate / 1e12:.3f} TFLOP/s, "
             f"float32 {probe.baseline / 1e12:.3f} TFLOP/s")
    if probe.exact is False:
        return Decision("fp32", f"oneDNN's reduced-precision float32 GEMM is not exact on bf16 values; {rates}")
    if probe.speedup >= BF16_INPUT_GEMM_MARGIN:
        return Decision("bf16-inputs", f"oneDNN bf16-input GEMM with float32 accumulation and output; {rates}")
    return Decision("fp32", f"oneDNN's reduced-precision float32 GEMM is no faster here; {rates}")


# ---------------------------------------------------------------------------------------------- probes
def _best_rate(fn: Callable[[], object], flops: float) -> float:
    best = float("inf")
    for _ in range(PROBE_ROUNDS):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / max(best, 1e-9)


def probe_half_gemm(dtype: torch.dtype, n: int = PROBE_SIZE) -> GemmProbe:
    """Native `dtype` GEMM against the float32 GEMM on widened operands (conversions included), alternating."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    w = torch.randn(n, n, generator=g).to(dtype)
    flops = 2.0 * n**3
    F.linear(a, w), F.linear(a.float(), w.float())  # warm-up (oneDNN primitive creation)
    native = _best_rate(lambda: F.linear(a, w), flops)
    widened = _best_rate(lambda: F.linear(a.float(), w.float()).to(dtype), flops)
    return GemmProbe(candidate=native, baseline=widened)


def probe_bf16_input_gemm(n: int = PROBE_SIZE) -> GemmProbe:
    """oneDNN's reduced-precision float32 GEMM on bf16 values against the plain float32 GEMM, plus exactness."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, 2 * n, generator=g).bfloat16().float()
    w = torch.randn(n, 2 * n, generator=g).bfloat16().float()
    flops = 4.0 * n**3
    F.linear(a, w)
    plain = _best_rate(lambda: F.linear(a, w), flops)
    with bf16_input_gemms():
        got = F.linear(a, w)
        reduced = _best_rate(lambda: F.linear(a, w), flops)
    want = a.double() @ w.double().t()
    error = ((got.double() - want).abs().max() / want.abs().max()).item()
    return GemmProbe(candidate=reduced, baseline=plain, exact=error <= BF16_INPUT_GEMM_TOLERANCE)


# ---------------------------------------------------------------------------------------------- process state
_lock = threading.RLock()
_half: dict[torch.dtype, Decision] = {}
_islands: Decision | None = None
_report: CpuReport | None = None


def cpu_report() -> CpuReport:
    global _report
    if _report is None:
        _report = read_cpu_report()
    return _report


def _env(name: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, "auto").strip().lower()
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _remembered(what: str, report: CpuReport, decide: Callable[[], tuple[str, str]]) -> Decision:
    """decide()'s Decision, or the one an earlier run on this machine took (cpu_path_memory: a probe near its
    margin must not give another video for the same seed on the next run)."""
    from . import cpu_path_memory

    key = cpu_path_memory.machine_key(report.model, report.flags, report.capability, what)
    choice, reason, remembered = cpu_path_memory.recall_or_decide(key, decide)
    if remembered:
        reason += f"; as decided on an earlier run on this machine (kept in {cpu_path_memory.cache_file()})"
    return Decision(choice, reason)


def half_path(dtype: torch.dtype, override: str | None = None) -> Decision:
    """The process's decision for CPU half GEMMs of `dtype` (probed and logged on first use)."""
    if override in ("native", "fp32"):
        return Decision(override, f"MAGI1_HALF_MATH={override}")
    decision = _half.get(dtype)
    if decision is not None:  # the common case: no lock on every GEMM
        return decision
    with _lock:
        decision = _half.get(dtype)
        if decision is None:
            report = cpu_report()
            name = str(dtype).replace("torch.", "")

            def decide() -> tuple[str, str]:
                fresh = decide_half_path(dtype, report, probe_half_gemm(dtype))
                return fresh.choice, fresh.reason

            decision = _remembered(f"half-{name}", report, decide)
            _half[dtype] = decision
            logger.info("magi1: CPU %s GEMMs run %s (%s)", str(dtype).replace("torch.", ""),
                        "natively" if decision.choice == "native" else "as float32 GEMMs on widened values",
                        decision.reason)
        return decision


def fp32_islands_path() -> Decision:
    """The process's decision for float32 GEMMs of bf16 values (probed and logged on first use)."""
    global _islands
    if _islands is not None:
        return _islands
    with _lock:
        if _islands is None:
            override = _env("MAGI1_FP32_ISLANDS", ("auto", "fp32", "bf16-inputs"))
            half = half_path(torch.bfloat16, override=_env("MAGI1_HALF_MATH", ("auto", "native", "fp32")))
            if override == "auto" and half.choice == "native":
                def decide() -> tuple[str, str]:
                    fresh = decide_fp32_islands(half.choice, probe_bf16_input_gemm(), override)
                    return fresh.choice, fresh.reason

                _islands = _remembered("fp32-islands", cpu_report(), decide)
            else:
                _islands = decide_fp32_islands(half.choice, None, override)
            logger.info("magi1: float32 islands on bf16 values (linear_proj) run as %s (%s)",
                        "bf16-input GEMMs" if _islands.choice == "bf16-inputs" else "float32 GEMMs", _islands.reason)
        return _islands


class bf16_input_gemms:
    """Within this block, CPU float32 GEMMs round their operands to bf16 and run on the bf16 units (oneDNN
    fpmath mode), accumulating and returning float32. Exact only for operands that hold bf16 values.

    The switch is process-wide: torch reads it from global state, not per thread. It is held under a lock for
    the duration of one GEMM; a float32 GEMM that another thread runs meanwhile would also round its operands
    to bf16 (seen: the chunk decode worker's float32 VAE, on the CPU, gave another frame now and then). So a
    thread that runs torch math beside the sampler runs it under `shielded_from_bf16_input_gemms`, which
    takes the same lock around each of its torch calls. Without oneDNN bf16 support the switch has no effect.
    """

    def __enter__(self):
        _lock.acquire()
        self._previous = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        return self

    def __exit__(self, *exc):
        try:
            torch.backends.mkldnn.matmul.fp32_precision = self._previous
        finally:
            _lock.release()
        return False


class _OneTorchCallAtATime(TorchFunctionMode):
    """Holds the switch's lock around every torch call of the thread it is entered on (modes are per thread)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _islands is not None and _islands.choice != "bf16-inputs":  # decided: the switch is never used
            return func(*args, **kwargs)
        with _lock:
            return func(*args, **kwargs)


@contextlib.contextmanager
def shielded_from_bf16_input_gemms(device: torch.device | str | None = None) -> Iterator[None]:
    """Within this block, the calling thread's torch calls never run while another thread holds
    `bf16_input_gemms`, so its float32 GEMMs keep float32 operands and give the same bits every run.

    For threads other than the sampler's (the chunk decode worker, a preview fit): each torch call waits for
    at most one island GEMM, and an island GEMM for at most one call. device: the device the thread computes
    on; an accelerator's kernels do not read the CPU switch, so there it is a no-op.
    """
    from ..runtime import is_accelerator

    if device is not None and is_accelerator(torch.device(device)):
        yield
        return
    with _OneTorchCallAtATime():
        yield


def describe() -> dict[str, str]:
    """The decisions taken so far in this process, for benchmarks and docs: {what: 'choice (reason)'}."""
    with _lock:
        out = {"cpu": f"{cpu_report().model} ({cpu_report().capability}; half units: "
                      f"{', '.join(cpu_report().half_units(torch.bfloat16)) or 'none'})"}
        for dtype, d in _half.items():
            out[f"{str(dtype).replace('torch.', '')} GEMMs"] = f"{d.choice} ({d.reason})"
        if _islands is not None:
            out["fp32 islands"] = f"{_islands.choice} ({_islands.reason})"
        return out


def reset() -> None:
    """Forget the decisions (tests; a process never needs it)."""
    global _islands, _report
    with _lock:
        _half.clear()
        _islands = None
        _report = None
