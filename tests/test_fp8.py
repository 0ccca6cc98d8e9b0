"""FP8 linears: the official quantize -> GEMM -> dequantize formula, its key names and shapes."""

import pytest
import torch

from magi1.ops.fp8 import (
    FP8_DTYPE,
    Fp8PerChannelLinear,
    Fp8PerTensorLinear,
    fp8_gemm_path,
    fp8_matmul,
    quantize_activation,
    quantize_linear_weight,
)


def reference_output(x, divide_by, weight_fp8, input_scale0, weight_scale0):
    """The formula of the spec, written out independently, with a float64 GEMM."""
    xq = (x.float() / divide_by.float()).clamp(-448, 448).to(torch.bfloat16).to(torch.float8_e4m3fn)
    acc = xq.double() @ weight_fp8[0].double().t()
    alpha = (input_scale0.float() * weight_scale0.float()).double()
    return (acc * alpha), xq


def random_fp8_layer(layer, gen):
    out_f, in_f = layer.out_features, layer.in_features
    wq, scale = quantize_linear_weight(torch.randn(out_f, in_f, generator=gen) * 0.05)
    layer.weight.data = wq
    layer.weight_scale.data = scale
    return layer


def assert_bf16_close_to(result, reference64):
    assert result.dtype == torch.bfloat16
    ref_bf16 = reference64.to(torch.bfloat16)
    # fp8 products are exact in float32; only the summation order differs from float64, which may
    # flip a bf16 rounding now and then, by one unit in the last place at most.
    ulp = ref_bf16.float().abs().clamp_min(1e-30) * 2**-7
    assert torch.all((result.float() - ref_bf16.float()).abs() <= ulp + 1e-30)
    assert (result == ref_bf16).float().mean() > 0.97


def test_activation_quantization_rounds_through_bf16_first():
    # 1 + 1/16 + 2^-12: straight to e4m3 it rounds up to 1.125; through bf16 it becomes the tie 1.0625,
    # which e4m3 rounds to even (1.0). The official code does the latter.
    x = torch.tensor([1 + 1 / 16 + 2**-12, 1000.0, -1000.0])
    q = quantize_activation(x, torch.tensor(1.0))
    assert q.dtype == FP8_DTYPE
    assert q.float().tolist() == [1.0, 448.0, -448.0]
    assert x[:1].to(FP8_DTYPE).float().item() == 1.125  # the single-rounding result we must not produce


def test_per_tensor_divides_by_vector_dequantizes_by_first_entry():
    gen = torch.Generator().manual_seed(0)
    layer = random_fp8_layer(Fp8PerTensorLinear(48, 32), gen)
    layer.input_scale.data = torch.rand(48, generator=gen) * 0.02 + 0.005  # deliberately not constant
    x = torch.randn(2, 5, 48, generator=gen).to(torch.bfloat16)
    y = layer(x)
    assert y.shape == (2, 5, 32)
    ref, _ = reference_output(x.reshape(-1, 48), layer.input_scale, layer.weight, layer.input_scale[0], layer.weight_scale[0])
    assert_bf16_close_to(y.reshape(-1, 32), ref)


def test_per_channel_divides_by_smooth_scale():
    gen = torch.Generator().manual_seed(1)
    layer = random_fp8_layer(Fp8PerChannelLinear(64, 16), gen)
    layer.smooth_scale.data = torch.rand(1, 64, generator=gen) * 0.05 + 0.01
    layer.input_scale.data = torch.tensor([0.7])
    x = torch.randn(7, 64, generator=gen)
    ref, _ = reference_output(x, layer.smooth_scale, layer.weight, layer.input_scale[0], layer.weight_scale[0])
    assert_bf16_close_to(layer(x), ref)


def test_emulation_is_deterministic_and_forced_path_agrees():
    gen = torch.Generator().manual_seed(2)
    wq, ws = quantize_linear_weight(torch.randn(32, 32, generator=gen))
    xq = quantize_activation(torch.randn(9, 32, generator=gen), torch.tensor(0.01))
    auto = fp8_matmul(xq, wq[0], torch.tensor([0.01]), ws)
    forced = fp8_matmul(xq, wq[0], torch.tensor([0.01]), ws, emulate=True)
    assert torch.equal(auto, forced)


def test_quantize_linear_weight_shapes_and_accuracy():
    w = torch.randn(24, 40) * 3
    wq, scale = quantize_linear_weight(w)
    assert wq.shape == (1, 24, 40) and wq.dtype == FP8_DTYPE
    assert scale.shape == (1,) and scale.dtype == torch.float32
    back = wq[0].float() * scale
    assert (back - w).abs().max() <= w.abs().max() * 2**-4  # 3 mantissa bits
    zero_q, zero_scale = quantize_linear_weight(torch.zeros(4, 4))
    assert zero_scale.item() == 1.0 and not zero_q.float().any()


def test_state_dict_names_shapes_and_dtypes():
    per_tensor = Fp8PerTensorLinear(16, 8).state_dict()
    assert {k: (tuple(v.shape), v.dtype) for k, v in per_tensor.items()} == {
        "weight": ((1, 8, 16), FP8_DTYPE),
        "weight_scale": ((1,), torch.float32),
        "input_scale": ((16,), torch.float32),
    }
    per_channel = Fp8PerChannelLinear(16, 8).state_dict()
    assert {k: (tuple(v.shape), v.dtype) for k, v in per_channel.items()} == {
        "weight": ((1, 8, 16), FP8_DTYPE),
        "weight_scale": ((1,), torch.float32),
        "input_scale": ((1,), torch.float32),
        "smooth_scale": ((1, 16), torch.float32),
    }
    with torch.device("meta"):
        assert Fp8PerTensorLinear(16, 8).weight.is_meta


def test_wrong_input_width_is_an_error():
    with pytest.raises(ValueError, match="last dim 16"):
        Fp8PerTensorLinear(16, 8)(torch.zeros(2, 15))


@pytest.mark.parametrize("capability, dims, expected", [
    ((8, 9), (64, 32), "scaled_mm"),   # Ada: native fp8 GEMM
    ((9, 0), (64, 32), "scaled_mm"),   # Hopper
    ((12, 0), (64, 32), "scaled_mm"),  # Blackwell
    ((8, 9), (64, 24), "bf16"),        # fp8 hardware, but cuBLASLt wants multiples of 16
    ((8, 6), (64, 32), "bf16"),        # RTX 3090 / A10: no fp8 tensor cores
    ((8, 0), (64, 32), "bf16"),        # A100
    ((7, 5), (64, 32), "bf16"),        # T4
])
def test_gemm_path_follows_the_devices_fp8_support(monkeypatch, capability, dims, expected):
    # The capability is mocked: no GPU needed to check the decision itself.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert fp8_gemm_path(torch.device("cuda", 0), *dims) == expected
    assert fp8_gemm_path(torch.device("cpu"), *dims) == "float32"


def test_a_native_gemm_that_failed_once_is_not_tried_again(monkeypatch):
    import magi1.ops.fp8 as fp8

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(fp8, "_scaled_mm_broken", True)
    assert fp8_gemm_path("cuda", 64, 32) == "bf16"


def dequantized_reference(x, layer, absolute=False):
    """The fp32 reference the fallbacks are held to: activation and weight quantised, then dequantised
    (e4m3 value times its scale) and multiplied in float32. absolute: the same sum of |terms|."""
    divide_by = layer.smooth_scale if isinstance(layer, Fp8PerChannelLinear) else layer.input_scale
    xq = quantize_activation(x, divide_by)
    x_deq = xq.float() * layer.input_scale.float()[:1]
    w_deq = layer.weight[0].float() * layer.weight_scale.float()
    return x_deq.abs() @ w_deq.abs().t() if absolute else x_deq @ w_deq.t()


@pytest.mark.parametrize("kind", [Fp8PerTensorLinear, Fp8PerChannelLinear])
def test_fallback_paths_stay_within_the_reference_tolerance(kind):
    # The native path (torch._scaled_mm) needs an SM 8.9+ GPU, so on the CPU both fallbacks are held to
    # the dequantised float32 reference instead: the float32 emulation within one bf16 unit (the native
    # GEMM's own rounding), the bf16 GEMM of a GPU without fp8 within two (it rounds once more).
    gen = torch.Generator().manual_seed(4)
    layer = random_fp8_layer(kind(96, 48), gen)
    if kind is Fp8PerChannelLinear:
        layer.smooth_scale.data = torch.rand(1, 96, generator=gen) * 0.05 + 0.01
    else:
        layer.input_scale.data = torch.full((96,), 0.02)
    x = torch.randn(33, 96, generator=gen)
    reference = dequantized_reference(x, layer)
    scale = layer.smooth_scale if kind is Fp8PerChannelLinear else layer.input_scale
    xq = quantize_activation(x, scale)
    # Where the sum cancels, float32 rounding of the terms (2^-24 each) is all the reference knows.
    noise = 2**-20 * (dequantized_reference(x, layer, absolute=True))
    for path, units in (("float32", 1), ("bf16", 2)):
        out = fp8_matmul(xq, layer.weight[0], layer.input_scale, layer.weight_scale, path=path)
        assert out.dtype == torch.bfloat16
        error = (out.float() - reference).abs()
        assert torch.all(error <= units * 2**-7 * reference.abs() + noise), (path, (error - units * 2**-7 * reference.abs()).max())
    assert torch.equal(layer(x), fp8_matmul(xq, layer.weight[0], layer.input_scale, layer.weight_scale,
                                            path="float32"))  # what the CPU runs
