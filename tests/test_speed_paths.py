"""The fast paths compute what the reference paths compute.

in-place rotary == out-of-place rotary (bit for bit); strided-view attention == gathered attention == a dense
reference; in-place gate/norm/residual == the out-of-place formula (bit for bit); the whole model without
autograd (fast paths) == with autograd (reference paths), bit for bit in float32 and bf16; half-precision
GEMMs and attention widened to float32 == the half-precision regime (bf16 in, fp32 accumulate, bf16 out).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from magi1.config import ModelConfig
from magi1.models import MagiDiT
from magi1.models.dit_layers import ZeroCenteredLayerNorm, gated_post_norm_residual, per_chunk_gate
from magi1.models.rope import apply_rotary, apply_rotary_
from magi1.ops import cpu_paths, half_math
from magi1.ops.attention import RangeAttention, attend, even_step, strided_ranges

torch.set_num_threads(1)


def tiny_model(dtype: str = "torch.float32") -> MagiDiT:
    config = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                         kv_channels=16, caption_channels=32, caption_max_length=16, params_dtype=dtype)
    torch.manual_seed(0)
    model = MagiDiT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-zero norm gains and biases: every parameter matters
    return model


def model_inputs(chunks: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, chunks * 2, 4, 4, generator=g)  # 2 frames of 2x2 tokens: 8 tokens per chunk
    t = torch.rand(1, chunks, generator=g)
    y = torch.randn(chunks, 1, 16, 32, generator=g)
    mask = torch.zeros(chunks, 1, 16)
    for r, n in enumerate([5, 9, 5, 16][:chunks]):  # two rows share a length: one stacked group, one not
        mask[r, 0, :n] = 1
    kv = torch.tensor([[max(0, j - 1) * 8, (j + 1) * 8] for j in range(chunks)], dtype=torch.int32)
    return x, t, y, mask, kv


# ------------------------------------------------------------------------------------------ rotary
@pytest.mark.parametrize("shape", [(10, 3, 16), (2, 10, 3, 16), (10, 3, 12)])
def test_in_place_rotary_equals_reference_bit_for_bit(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    angles = torch.randn(10, 6, generator=g) * 3
    want = apply_rotary(x, angles.sin(), angles.cos())
    got = apply_rotary_(x.clone(), angles.sin(), angles.cos())
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------ attention
def dense_reference(q, k, v, q_ranges, k_ranges):
    heads, kv_heads = q.shape[1], k.shape[1]
    kr = k.double().repeat_interleave(heads // kv_heads, dim=1)
    vr = v.double().repeat_interleave(heads // kv_heads, dim=1)
    out = torch.zeros(q.shape, dtype=torch.float64)
    for (qs, qe), (ks, ke) in zip(q_ranges, k_ranges):
        if ke > ks:
            scores = torch.einsum("qhd,khd->hqk", q[qs:qe].double(), kr[ks:ke]) / q.shape[-1] ** 0.5
            out[qs:qe] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vr[ks:ke])
    return out


def test_even_step_and_strided_ranges():
    assert even_step([7]) == 0 and even_step([0, 5, 10]) == 5
    assert even_step([0, 5, 9]) is None and even_step([5, 0]) is None
    x = torch.arange(40.0).reshape(20, 2)
    view = strided_ranges(x, 2, 3, 4, 5)  # rows [2, 7), [5, 10), [8, 13), [11, 16)
    assert view.shape == (4, 5, 2) and view.data_ptr() == x[2:].data_ptr()
    assert torch.equal(view, torch.stack([x[s : s + 5] for s in (2, 5, 8, 11)]))
    with pytest.raises(ValueError):
        strided_ranges(x, 10, 3, 4, 5)  # would read past the end


CASES = {
    # chunks of a call, each over its own spans: every group a single pair (views)
    "window": ([(0, 8), (8, 16), (16, 24)], [(0, 16), (0, 24), (8, 32)]),
    # cross attention with equal caption lengths: one evenly spaced group, returned without a copy
    "captions": ([(0, 8), (8, 16), (16, 24)], [(0, 5), (5, 10), (10, 15)]),
    # evenly spaced queries with gaps (written one by one) over overlapping evenly spaced keys
    "overlap": ([(0, 8), (12, 20), (24, 32)], [(0, 12), (4, 16), (8, 20)]),
    # the same pairs out of order: the gathered path
    "unordered": ([(16, 24), (0, 8), (8, 16)], [(0, 12), (4, 16), (8, 20)]),
    # irregular starts: the gathered path; plus an empty key range and an uncovered query block
    "gathered": ([(0, 8), (8, 16), (16, 24), (24, 32)], [(0, 10), (12, 22), (3, 13), (20, 20)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("stack_limit", [1, 1 << 20])
def test_range_attention_paths_match_dense(case, stack_limit):
    q_ranges, k_ranges = CASES[case]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(32, 4, 8, generator=g)
    kv = torch.randn(40, 2, 16, generator=g)  # packed [K | V] as the cache stores it: strided K and V views
    k, v = kv[..., :8], kv[..., 8:]
    got = RangeAttention(q_ranges, k_ranges, max_stacked_elements=stack_limit)(q, k, v)
    want = dense_reference(q, k, v, q_ranges, k_ranges)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_view_path_equals_one_call_per_pair_bit_for_bit():
    q_ranges, k_ranges = CASES["captions"]
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(24, 4, 8, generator=g), torch.randn(15, 2, 8, generator=g), torch.randn(15, 2, 8, generator=g)
    got = RangeAttention(q_ranges, k_ranges)(q, k, v)
    for (qs, qe), (ks, ke) in zip(q_ranges, k_ranges):
        assert torch.equal(got[qs:qe], attend(q[qs:qe][None], k[ks:ke][None], v[ks:ke][None])[0])


# ------------------------------------------------------------------------------------------ gate / norm / residual
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sharded", [False, True])
def test_in_place_gated_residual_equals_reference_bit_for_bit(dtype, sharded):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 12, 16, generator=g).to(dtype)
    x = torch.randn(2, 12, 16, generator=g)
    gate = torch.randn(2, 3, 16, generator=g).to(dtype)
    norm = ZeroCenteredLayerNorm(16, 1e-6)
    with torch.no_grad():
        norm.weight.normal_(0, 0.1)
        norm.bias.normal_(0, 0.1)
    chunks = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]) if sharded else None
    want = (h.float() + norm(per_chunk_gate(x.float(), gate.float(), chunks))).to(dtype)
    with torch.no_grad():
        got = gated_post_norm_residual(h, x.clone(), gate, norm, chunks)
    assert got.dtype == dtype and torch.equal(got, want)


# ------------------------------------------------------------------------------------------ the whole model
@pytest.mark.parametrize("dtype", ["torch.float32", "torch.bfloat16"])
def test_model_fast_paths_equal_reference_paths_bit_for_bit(dtype):
    model = tiny_model(dtype)
    inputs = model_inputs(3)
    with torch.no_grad():
        fast = model(*inputs, null_adaln=False)
    with torch.enable_grad():  # autograd on: every fast path falls back to its out-of-place reference
        reference = MagiDiT.forward.__wrapped__(model, *inputs, null_adaln=False)
    assert torch.equal(fast, reference.detach())


# ------------------------------------------------------------------------------------------ half math
def test_widened_half_linear_is_a_bf16_gemm_with_fp32_accumulation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g).bfloat16()
    w = torch.randn(32, 256, generator=g).bfloat16()
    with half_math.half_math("fp32"):
        widened = half_math.linear(x, w)
    exact = (x.double() @ w.double().t()).to(torch.bfloat16)  # the exact product, rounded once
    assert widened.dtype == torch.bfloat16
    # float32 accumulation may flip a rounding now and then, by one bf16 unit in the last place at most
    ulp = exact.float().abs() * 2**-7
    assert torch.all((widened.float() - exact.float()).abs() <= ulp + 1e-30)
    assert (widened == exact).float().mean() > 0.95
    with half_math.half_math("native"):
        native = half_math.linear(x, w)
    assert torch.all((native.float() - exact.float()).abs() <= ulp + 1e-30)


def test_half_math_modes():
    x32, x16 = torch.ones(2), torch.ones(2, dtype=torch.bfloat16)
    with half_math.half_math("fp32"):
        assert half_math.widen(x16) and not half_math.widen(x32)
    with half_math.half_math("native"):
        assert not half_math.widen(x16)
    with half_math.half_math("auto"):  # on a CPU: widen exactly when the process decided bf16 GEMMs run via fp32
        assert half_math.widen(x16) == (cpu_paths.half_path(torch.bfloat16).choice == "fp32")
    with pytest.raises(ValueError):
        with half_math.half_math("fast"):
            pass


def test_widened_attention_matches_native_regime():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 24, 4, 16, generator=g).bfloat16() for _ in range(3))
    with half_math.half_math("fp32"):
        widened = attend(q, k, v)
    exact = F.scaled_dot_product_attention(*(a.double().transpose(1, 2) for a in (q, k, v))).transpose(1, 2)
    assert widened.dtype == torch.bfloat16
    torch.testing.assert_close(widened.double(), exact, atol=1e-2, rtol=1e-2)


def test_bf16_model_widened_and_native_agree_and_stay_near_fp32():
    model = tiny_model()
    inputs = model_inputs(3)
    with torch.no_grad():
        reference = model(*inputs, null_adaln=False)
        low = copy.deepcopy(model).apply_precision("bf16")
        with half_math.half_math("native"):
            native = low(*inputs, null_adaln=False)
        with half_math.half_math("fp32"):
            widened = low(*inputs, null_adaln=False)
    scale = reference.norm()
    assert (native - reference).norm() / scale < 0.05
    assert (widened - reference).norm() / scale < 0.05
    assert (widened - native).norm() / scale < 0.05


# ---------------------------------------------------------------------------------- the benchmark scripts
BENCHMARKS = __import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(script: str, *argv: str, timeout: float = 120):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(BENCHMARKS / script), *argv], capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("argv", [["gpu.py"], ["gpu.py", "--device", "cpu"], ["gpu_memory.py"], ["gpu_multi.py"]])
def test_gpu_benchmarks_without_a_gpu_say_so_in_one_sentence(argv):
    # gpu_memory.py and gpu_multi.py built the 4.5B / 24B-wide model on the CPU (9 GB and climbing) and ran it
    # there for hours; gpu.py printed its usage block before the sentence
    done = _benchmark(*argv, timeout=60)
    assert done.returncode == 2 and not done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a GPU and torch sees none here" in lines[0], done.stderr


def test_benchmark_user_error_is_one_line():
    done = _benchmark("gpu.py", "--smoke", "--config", "no_such_preset", timeout=60)  # was a traceback
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "unknown preset 'no_such_preset'" in lines[0], done.stderr


def test_dit_step_quotes_the_command_that_reproduces_it_and_names_the_bf16_path():
    # the quoted command left out --latent (and --half-math, --compile), so it named a run 100x larger
    done = _benchmark("dit_step.py", "--layers", "1", "--latent", "8", "--repeat", "1", "--half-math", "native",
                      "--no-save")
    assert done.returncode == 0, done.stderr
    assert ("`python benchmarks/dit_step.py --workload common --dtype bf16 fp32 --layers 1 --latent 8 --repeat 1 "
            "--half-math native`") in done.stdout
    assert "bf16 GEMMs " in done.stdout and "linear_proj " in done.stdout  # the machine line's bf16 path


def test_parallel_step_no_save_leaves_the_results_page_alone():
    results = BENCHMARKS.parent / "docs" / "benchmarks.md"
    before = results.read_text() if results.exists() else None
    done = _benchmark("parallel_step.py", "--layouts", "1x1", "--layers", "1", "--repeat", "1", "--no-save")
    assert done.returncode == 0, done.stderr
    quoted = "`python benchmarks/parallel_step.py --layouts 1x1 --layers 1 --repeat 1 --dtype fp32`: medium config"
    assert quoted in done.stdout and "| 1x1 | 1 |" in done.stdout
    assert (results.read_text() if results.exists() else None) == before
