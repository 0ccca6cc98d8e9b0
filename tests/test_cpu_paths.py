"""The CPU-dependent speed choices: made from what the CPU reports and a measured probe, logged once, and
overridable; tested with injected reports (AMX Xeon, AVX512 without bf16, AVX2 EPYC, ARM) and probes."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from magi1.ops import cpu_paths, half_math
from magi1.ops.cpu_paths import CpuReport, GemmProbe, decide_fp32_islands, decide_half_path, read_cpu_report

XEON_AMX = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags		: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 amx_bf16 amx_tile amx_int8
"""
SKYLAKE = """model name	: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags		: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl
"""
EPYC = """model name	: AMD EPYC
flags		: fpu sse2 avx f16c avx2 fma sha_ni
"""
GRAVITON3 = """processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes sha1 sha2 crc32 atomics fphp asimdhp sve svebf16 bf16 i8mm
CPU implementer	: 0x41
"""
TFLOP = 1e12


def test_reports_are_parsed_from_cpuinfo():
    amx = read_cpu_report(XEON_AMX)
    assert amx.model.startswith("Intel(R) Xeon(R) Platinum") and amx.half_units(torch.bfloat16) == ["amx_bf16", "avx512_bf16"]
    assert read_cpu_report(SKYLAKE).half_units(torch.bfloat16) == []
    epyc = read_cpu_report(EPYC)
    assert epyc.model == "AMD EPYC" and epyc.half_units(torch.bfloat16) == [] and "avx2" in epyc.flags
    assert read_cpu_report(GRAVITON3).half_units(torch.bfloat16) == ["bf16", "svebf16"]
    assert read_cpu_report("").model  # falls back to the platform's name
    assert read_cpu_report(EPYC).capability == torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("cpuinfo, native, widened, want", [
    (XEON_AMX, 1.0, 0.17, "native"),      # AMX: bf16 GEMMs several times faster than float32
    (XEON_AMX, 0.1, 0.17, "fp32"),        # reports units yet measures slower (e.g. a throttled VM): trust the probe
    (SKYLAKE, 0.05, 0.30, "fp32"),        # AVX512 without bf16 units: mkldnn says "bf16 supported", the probe says no
    (EPYC, 0.021, 0.135, "fp32"),         # this machine's figures: AVX2 only
    (EPYC, 0.15, 0.135, "fp32"),          # no units, only marginally faster: not enough to switch
    (EPYC, 0.40, 0.135, "native"),        # no units reported but clearly faster (an unknown flag spelling)
    (GRAVITON3, 0.5, 0.2, "native"),
])
def test_half_path_decision(cpuinfo, native, widened, want):
    report = read_cpu_report(cpuinfo)
    decision = decide_half_path(torch.bfloat16, report, GemmProbe(native * TFLOP, widened * TFLOP))
    assert decision.choice == want
    assert report.model in decision.reason and f"{native:.3f}" in decision.reason and f"{widened:.3f}" in decision.reason


def test_half_path_override_and_no_probe():
    report = read_cpu_report(EPYC)
    probe = GemmProbe(0.4 * TFLOP, 0.1 * TFLOP)
    assert decide_half_path(torch.bfloat16, report, probe, override="fp32").choice == "fp32"
    assert decide_half_path(torch.bfloat16, report, None, override="native").reason == "MAGI1_HALF_MATH=native"
    assert decide_half_path(torch.bfloat16, read_cpu_report(XEON_AMX), None).choice == "native"
    assert decide_half_path(torch.float16, read_cpu_report(XEON_AMX), None).choice == "fp32"  # no amx_fp16


@pytest.mark.parametrize("half, probe, want", [
    ("fp32", None, "fp32"),                                               # widened CPUs: fp32 is the fast kernel
    ("native", GemmProbe(0.9 * TFLOP, 0.17 * TFLOP, exact=True), "bf16-inputs"),
    ("native", GemmProbe(0.9 * TFLOP, 0.17 * TFLOP, exact=False), "fp32"),  # never trade exactness for speed
    ("native", GemmProbe(0.18 * TFLOP, 0.17 * TFLOP, exact=True), "fp32"),  # the switch had no effect
])
def test_fp32_island_decision(half, probe, want):
    decision = decide_fp32_islands(half, probe)
    assert decision.choice == want and decision.reason
    assert decide_fp32_islands(half, probe, override="bf16-inputs").choice == "bf16-inputs"


@pytest.fixture
def fresh_decisions(monkeypatch, tmp_path):
    monkeypatch.setenv("MAGI1_CACHE", str(tmp_path / "cache"))  # no decision remembered from another test
    cpu_paths.reset()
    yield
    cpu_paths.reset()


def test_a_probed_decision_is_kept_for_the_next_run_on_this_machine(monkeypatch, caplog, fresh_decisions):
    """A probe near its margin must not flip between runs: the second process reuses the first one's choice
    (another choice rounds differently: another video for the same seed, a resume matching neither run)."""
    monkeypatch.setattr(cpu_paths, "read_cpu_report", lambda: read_cpu_report(XEON_AMX))
    monkeypatch.delenv("MAGI1_HALF_MATH", raising=False)
    monkeypatch.delenv("MAGI1_FP32_ISLANDS", raising=False)
    monkeypatch.setattr(cpu_paths, "probe_half_gemm", lambda *a, **k: GemmProbe(2.0 * TFLOP, 0.4 * TFLOP))
    monkeypatch.setattr(cpu_paths, "probe_bf16_input_gemm", lambda: GemmProbe(0.25 * TFLOP, 0.2 * TFLOP, exact=True))
    assert cpu_paths.fp32_islands_path().choice == "bf16-inputs"  # 1.25x: just past the margin
    cpu_paths.reset()  # a new process; this time the busy machine measures the other way
    monkeypatch.setattr(cpu_paths, "probe_bf16_input_gemm", lambda: GemmProbe(0.21 * TFLOP, 0.2 * TFLOP, exact=True))
    monkeypatch.setattr(cpu_paths, "probe_half_gemm", lambda *a, **k: pytest.fail("remembered: no probe"))
    with caplog.at_level(logging.INFO, logger="magi1.ops.cpu_paths"):
        again = cpu_paths.fp32_islands_path()
    assert again.choice == "bf16-inputs" and "earlier run on this machine" in again.reason
    assert "earlier run on this machine" in caplog.text
    # Capping oneDNN's ISA changes the kernels, so it is another machine as far as the choice goes.
    cpu_paths.reset()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    monkeypatch.setattr(cpu_paths, "probe_half_gemm", lambda *a, **k: GemmProbe(0.23 * TFLOP, 0.44 * TFLOP))
    assert cpu_paths.half_path(torch.bfloat16).choice == "fp32"
    assert cpu_paths.fp32_islands_path().choice == "fp32"


def test_an_unwritable_cache_only_means_deciding_afresh(monkeypatch, tmp_path, fresh_decisions):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MAGI1_CACHE", str(blocker / "cache"))  # below a file: cannot be created
    monkeypatch.setattr(cpu_paths, "read_cpu_report", lambda: read_cpu_report(XEON_AMX))
    monkeypatch.delenv("MAGI1_HALF_MATH", raising=False)
    monkeypatch.setattr(cpu_paths, "probe_half_gemm", lambda *a, **k: GemmProbe(2.0 * TFLOP, 0.4 * TFLOP))
    assert cpu_paths.half_path(torch.bfloat16).choice == "native"


def test_decided_once_from_report_and_probe_and_logged_once(monkeypatch, caplog, fresh_decisions):
    calls = []

    def fake_probe(dtype, n=cpu_paths.PROBE_SIZE):
        calls.append(dtype)
        return GemmProbe(1.0 * TFLOP, 0.17 * TFLOP)

    monkeypatch.setattr(cpu_paths, "read_cpu_report", lambda: read_cpu_report(XEON_AMX))
    monkeypatch.setattr(cpu_paths, "probe_half_gemm", fake_probe)
    monkeypatch.setattr(cpu_paths, "probe_bf16_input_gemm", lambda: GemmProbe(0.9 * TFLOP, 0.17 * TFLOP, exact=True))
    monkeypatch.delenv("MAGI1_HALF_MATH", raising=False)
    monkeypatch.delenv("MAGI1_FP32_ISLANDS", raising=False)
    x16 = torch.ones(2, dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="magi1.ops.cpu_paths"), half_math.half_math("auto"):
        for _ in range(3):
            assert not half_math.widen(x16)  # the injected AMX report + probe: native bf16
        assert cpu_paths.fp32_islands_path().choice == "bf16-inputs"
        cpu_paths.fp32_islands_path()
    assert calls == [torch.bfloat16]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "amx_bf16" in messages[0] and "natively" in messages[0]
    assert "bf16-input" in messages[1]
    described = cpu_paths.describe()
    assert "Platinum" in described["cpu"] and described["bfloat16 GEMMs"].startswith("native")


def test_environment_overrides(monkeypatch, fresh_decisions):
    monkeypatch.setattr(cpu_paths, "probe_half_gemm", lambda *a, **k: pytest.fail("an override must not probe"))
    monkeypatch.setattr(cpu_paths, "probe_bf16_input_gemm", lambda: pytest.fail("an override must not probe"))
    monkeypatch.setenv("MAGI1_HALF_MATH", "fp32")
    monkeypatch.setenv("MAGI1_FP32_ISLANDS", "auto")
    assert cpu_paths.fp32_islands_path().choice == "fp32"
    cpu_paths.reset()
    monkeypatch.setenv("MAGI1_FP32_ISLANDS", "wrong")
    with pytest.raises(ValueError, match="MAGI1_FP32_ISLANDS"):
        cpu_paths.fp32_islands_path()


def test_real_probes_measure_and_check_exactness():
    half = cpu_paths.probe_half_gemm(torch.bfloat16, n=128)
    assert half.candidate > 0 and half.baseline > 0
    islands = cpu_paths.probe_bf16_input_gemm(n=128)
    assert islands.exact  # on bf16 values oneDNN's bf16 fpmath (where it acts at all) is float32 accumulation


def test_bf16_input_island_equals_float32_product_and_restores_the_switch(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 512, generator=g).bfloat16()
    w = torch.randn(48, 512, generator=g).bfloat16()
    want = x.double() @ w.double().t()
    before = torch.backends.mkldnn.matmul.fp32_precision
    monkeypatch.setattr(cpu_paths, "fp32_islands_path", lambda: cpu_paths.Decision("bf16-inputs", "test"))
    with half_math.half_math("auto"):
        for operand in (x, x.float()):  # bf16 values, as bf16 or widened
            got = half_math.float32_linear_of(operand, w)
            assert got.dtype == torch.float32
            assert ((got.double() - want).abs().max() / want.abs().max()).item() < 1e-6
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    # float32 operands that are not bf16 values never take the bf16-input path
    xf = torch.randn(64, 512, generator=g)
    torch.testing.assert_close(half_math.float32_linear_of(xf, w.float()), F.linear(xf, w.float()), rtol=0, atol=0)


def test_a_shielded_thread_computes_float32_while_another_holds_the_switch(monkeypatch):
    """Without the shield a float32 GEMM on another thread takes the switch's bf16 rounding (where oneDNN has
    bf16 at all); with it, the thread waits and computes the plain float32 bits."""
    import threading

    monkeypatch.setattr(cpu_paths, "_islands", cpu_paths.Decision("bf16-inputs", "test"))
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(32, 512, generator=g), torch.randn(128, 512, generator=g)
    want = F.linear(x, w)
    got = {}

    def other_thread():
        with cpu_paths.shielded_from_bf16_input_gemms("cpu"):
            got["y"] = F.linear(x, w)

    with cpu_paths.bf16_input_gemms():
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()  # blocked until the island ends
    thread.join(5)
    assert torch.equal(got["y"], want)
    # decided "fp32": the switch is never used, so shielded calls take no lock at all
    monkeypatch.setattr(cpu_paths, "_islands", cpu_paths.Decision("fp32", "test"))
    with cpu_paths.bf16_input_gemms():
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(5)
        assert not thread.is_alive()
