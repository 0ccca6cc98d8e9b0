"""MagiDiT: official sizes, shapes, block causality, KV-cache equivalence, variants, precision."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from magi1.config import ModelConfig, load_config
from magi1.models import KVCache, MagiDiT, distill_step_size, high_precision_param, official_forward
from magi1.ops.attention import RangeAttention

torch.set_num_threads(1)

CW = 2  # latent frames per chunk in the tiny tests
H = W = 4  # latent size -> 2x2 tokens per frame, 8 tokens per chunk
CTN = CW * (H // 2) * (W // 2)


def tiny_config(**overrides) -> ModelConfig:
    base = dict(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
        kv_channels=16, caption_channels=32, caption_max_length=16, params_dtype="torch.float32",
    )
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> MagiDiT:
    torch.manual_seed(seed)
    model = MagiDiT(tiny_config(**{k: v for k, v in overrides.items() if k not in ("distill", "fp8_quant")}),
                    distill=overrides.get("distill", False), fp8_quant=overrides.get("fp8_quant", False))
    # Non-zero norm gains and biases so that every parameter matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def causal_ranges(chunks: int, span: int, first_chunk: int = 0) -> torch.Tensor:
    """[start, end) key tokens for chunks first_chunk.. of a call, each seeing `span` chunks ending at itself."""
    rows = []
    for j in range(chunks):
        end = first_chunk + j + 1
        rows.append([max(0, end - span) * CTN, end * CTN])
    return torch.tensor(rows, dtype=torch.int32)


def inputs(chunks: int, seed: int = 1, channels: int = 16, lc: int = 16, ct: int = 32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, chunks * CW, H, W, generator=g)
    t = torch.rand(1, chunks, generator=g)
    y = torch.randn(chunks, 1, lc, ct, generator=g)
    lengths = torch.randint(1, lc + 1, (chunks,), generator=g)
    mask = (torch.arange(lc)[None, :] < lengths[:, None]).float()[:, None, :]
    return x, t, y, mask


# ------------------------------------------------------------------------------------------ official sizes
@pytest.mark.parametrize(
    "preset, tensors, params",
    [("4.5B_base", 898, 4_459_898_128), ("24B_base", 1262, 23_899_281_936), ("4.5B_distill", 898, 4_459_898_128)],
)
def test_official_sizes_on_meta(preset, tensors, params):
    cfg = load_config(preset)
    with torch.device("meta"):
        model = MagiDiT(cfg.model_config, distill=cfg.engine_config.distill)
    state = model.state_dict()
    assert len(state) == tensors
    assert sum(v.numel() for v in state.values()) == params
    for key in ("x_embedder.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias",
                "y_embedder.y_proj_xattn.0.weight", "y_embedder.y_proj_adaln.0.bias",
                "y_embedder.null_caption_embedding", "rope.bands", "videodit_blocks.final_layernorm.weight",
                "final_linear.linear.weight", "videodit_blocks.layers.0.ada_modulate_layer.proj.0.weight",
                "videodit_blocks.layers.0.self_attention.linear_qkv.q.weight",
                "videodit_blocks.layers.0.self_attention.linear_qkv.layer_norm.bias",
                "videodit_blocks.layers.0.self_attention.linear_kv_xattn.weight",
                "videodit_blocks.layers.0.self_attention.k_layernorm_xattn.weight",
                "videodit_blocks.layers.0.mlp.linear_fc2.weight", "videodit_blocks.layers.0.mlp_post_norm.bias"):
        assert key in state, key
    assert state["rope.bands"].shape == (16,)


def test_fp8_variant_key_names_on_meta():
    pytest.importorskip("magi1.ops.fp8")
    cfg = load_config("4.5B_distill_quant")
    with torch.device("meta"):
        model = MagiDiT(cfg.model_config, distill=True, fp8_quant=True)
    state = model.state_dict()
    # 32 quantized layers, each: 5 per-tensor linears (+2 keys) and 2 per-channel linears (+3 keys)
    assert len(state) == 898 + 32 * (5 * 2 + 2 * 3)
    first, mid, last = "videodit_blocks.layers.0.", "videodit_blocks.layers.1.", "videodit_blocks.layers.33."
    for prefix in (first, last):
        assert state[prefix + "self_attention.linear_qkv.q.weight"].shape == (3072, 3072)
        assert prefix + "self_attention.linear_qkv.q.weight_scale" not in state
    assert state[mid + "self_attention.linear_qkv.q.weight"].shape == (1, 3072, 3072)
    assert state[mid + "self_attention.linear_qkv.q.weight"].dtype == torch.float8_e4m3fn
    assert state[mid + "self_attention.linear_qkv.q.input_scale"].shape == (3072,)
    assert state[mid + "mlp.linear_fc1.weight_scale"].shape == (1,)
    assert state[mid + "self_attention.linear_proj.smooth_scale"].shape == (1, 6144)
    assert state[mid + "mlp.linear_fc2.input_scale"].shape == (1,)
    assert state[mid + "self_attention.linear_kv_xattn.weight"].dtype == torch.bfloat16


def test_fp8_tiny_forward_runs():
    pytest.importorskip("magi1.ops.fp8")
    model = tiny_model(num_layers=3, params_dtype="torch.bfloat16", fp8_quant=True)
    x, t, y, mask = inputs(2)
    out = model(x, t, y, mask, causal_ranges(2, 2), null_adaln=False)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------ precision
def test_high_precision_param_names():
    promoted = ["x_embedder.weight", "y_embedder.null_caption_embedding", "y_embedder.y_proj_adaln.0.bias",
                "t_embedder.mlp.0.weight", "final_linear.linear.weight", "rope.bands",
                "videodit_blocks.layers.3.self_attention.q_layernorm.weight",
                "videodit_blocks.layers.3.self_attention.k_layernorm.bias",
                "videodit_blocks.layers.3.self_attn_post_norm.weight", "videodit_blocks.layers.3.mlp_post_norm.bias",
                "videodit_blocks.final_layernorm.weight"]
    kept = ["videodit_blocks.layers.3.self_attention.q_layernorm_xattn.weight",
            "videodit_blocks.layers.3.self_attention.k_layernorm_xattn.bias",
            "videodit_blocks.layers.3.self_attention.linear_kv_xattn.weight",
            "videodit_blocks.layers.3.self_attention.linear_qkv.layer_norm.weight",
            "videodit_blocks.layers.3.self_attention.linear_qkv.q.weight",
            "videodit_blocks.layers.3.self_attention.linear_proj.weight",
            "videodit_blocks.layers.3.ada_modulate_layer.proj.0.weight",
            "videodit_blocks.layers.3.mlp.layer_norm.weight", "videodit_blocks.layers.3.mlp.linear_fc1.weight"]
    assert all(high_precision_param(n) for n in promoted)
    assert not any(high_precision_param(n) for n in kept)


def test_apply_precision_promotes_islands():
    model = tiny_model().apply_precision(torch.bfloat16)
    assert model.compute_dtype == torch.bfloat16
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if high_precision_param(name) else torch.bfloat16), name


def test_bf16_forward_close_to_fp32():
    model = tiny_model()
    x, t, y, mask = inputs(3)
    kv = causal_ranges(3, 2)
    ref = model(x, t, y, mask, kv, null_adaln=False)
    low = copy.deepcopy(model).apply_precision("bf16")
    out = low(x, t, y, mask, kv, null_adaln=False)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    rel = (out - ref).norm() / ref.norm()
    assert 0 < rel < 0.05


# ------------------------------------------------------------------------------------------ forward behaviour
def test_output_shape_and_intermediates():
    model = tiny_model()
    x, t, y, mask = inputs(3)
    out, inter = model(x, t, y, mask, causal_ranges(3, 3), null_adaln=False, return_intermediates=True)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    s = 3 * CTN
    assert inter["pre.x_tokens"].shape == (s, 1, 64)
    assert inter["pre.condition"].shape == (1, 3, 16)
    assert inter["pre.condition_map"][:, 0].tolist() == [i // CTN for i in range(s)]
    assert inter["pre.rope"].shape == (s, 12)  # 2 bands x 3 axes, sin and cos
    assert inter["pre.y_xattn_flat"].shape == (int(mask.sum()), 64)
    assert inter["layer1.out"].shape == (s, 1, 64)
    assert inter["final_linear.out"].shape == (s, 1, 4 * 16)


def test_block_causality():
    model = tiny_model()
    x, t, y, mask = inputs(4)
    kv = causal_ranges(4, 3)
    out = model(x, t, y, mask, kv, null_adaln=False)
    x2, y2 = x.clone(), y.clone()
    x2[:, :, 3 * CW:] = torch.randn_like(x2[:, :, 3 * CW:])
    y2[3] = torch.randn_like(y2[3])
    t2 = t.clone()
    t2[0, 3] = 0.123
    out2 = model(x2, t2, y2, mask, kv, null_adaln=False)
    assert torch.equal(out[:, :, : 3 * CW], out2[:, :, : 3 * CW])
    assert not torch.allclose(out[:, :, 3 * CW:], out2[:, :, 3 * CW:])
    # a chunk outside a later chunk's window does not reach it (one layer: no multi-hop through chunks 1-2)
    one_layer = tiny_model(num_layers=1)
    out = one_layer(x, t, y, mask, kv, null_adaln=False)
    x3 = x.clone()
    x3[:, :, :CW] = torch.randn_like(x3[:, :, :CW])
    out3 = one_layer(x3, t, y, mask, kv, null_adaln=False)
    assert torch.equal(out[:, :, 3 * CW:], out3[:, :, 3 * CW:])
    assert not torch.allclose(out[:, :, 2 * CW : 3 * CW], out3[:, :, 2 * CW : 3 * CW])


def test_kv_cached_forward_matches_joint_recompute():
    """The official base_kvcache protocol on a random tiny model."""
    model = tiny_model()
    x, t, y, mask = inputs(4)
    t[0, :2] = 0.9999
    self_only = torch.tensor([[0, CTN], [CTN, 2 * CTN]], dtype=torch.int32)
    later = torch.tensor([[0, 3 * CTN], [CTN, 4 * CTN]], dtype=torch.int32)

    cache = KVCache(4 * CTN, num_layers=2)
    out_a = model(x[:, :, : 2 * CW], t[:, :2], y[:2], mask[:2], self_only, null_adaln=False,
                  kv_cache=cache, read_cache=True, write_cache=True)
    assert cache.layer(0).shape == (2 * CTN, 2, 32)
    out_b = model(x[:, :, 2 * CW:], t[:, 2:], y[2:], mask[2:], later, null_adaln=False,
                  kv_cache=cache, slice_point=2)
    joint = model(x, t, y, mask, torch.cat([self_only, later]), null_adaln=False)
    torch.testing.assert_close(out_a, joint[:, :, : 2 * CW], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_b, joint[:, :, 2 * CW:], atol=1e-5, rtol=1e-5)
    # B did not write (write_cache False); a joint pass that writes stores the same rows for chunks 0-1
    assert cache.written_end(0) == 2 * CTN
    cache2 = KVCache(4 * CTN, num_layers=2)
    model(x, t, y, mask, torch.cat([self_only, later]), null_adaln=False, kv_cache=cache2, read_cache=True,
          write_cache=True, skip_last_chunk_write=True)
    assert cache2.written_end(1) == 3 * CTN
    for layer in range(2):
        torch.testing.assert_close(cache2.read(layer, 0, 2 * CTN), cache.layer(layer), atol=1e-5, rtol=1e-5)


def test_cache_untouched_without_read_flag_or_slice_point():
    model = tiny_model()
    x, t, y, mask = inputs(2)
    cache = KVCache(2 * CTN)
    model(x, t, y, mask, causal_ranges(2, 2), null_adaln=False, kv_cache=cache, write_cache=True)
    assert cache.nbytes() == 0


def test_null_adaln_selects_learned_row():
    model = tiny_model()
    x, t, y, mask = inputs(2)
    kv = causal_ranges(2, 2)
    cond = model(x, t, y, mask, kv, null_adaln=False)
    uncond = model(x, t, y, mask, kv, null_adaln=torch.tensor([True]))
    assert not torch.allclose(cond, uncond)
    with torch.no_grad():
        model.y_embedder.null_caption_embedding[-1] = model.y_embedder.null_caption_embedding[-2]
    torch.testing.assert_close(model(x, t, y, mask, kv, null_adaln=True), cond)


def test_batched_unconditional_layout():
    """B = chunks, R = 1, batch-major self-only spans: each element equals its own single-chunk call."""
    model = tiny_model()
    x, t, y, mask = inputs(3)
    xb = x.reshape(1, 16, 3, CW, H, W).transpose(0, 2)[:, :, 0]  # (3, 16, CW, H, W)
    kv = torch.tensor([[b * CTN, (b + 1) * CTN] for b in range(3)], dtype=torch.int32)
    out = model(xb, t.reshape(3, 1), y, mask, kv, null_adaln=True)
    for b in range(3):
        single = model(xb[b : b + 1], t[:, b : b + 1], y[b : b + 1], mask[b : b + 1],
                       torch.tensor([[0, CTN]], dtype=torch.int32), null_adaln=True)
        torch.testing.assert_close(out[b : b + 1], single, atol=1e-5, rtol=1e-5)


def test_half_channel_rescale_and_swiglu():
    """24B-style: x * 0.1 duplicated to 32 channels; first 16 output channels kept, divided by 0.1."""
    half = tiny_model(in_channels=32, out_channels=32, half_channel_vae=True, x_rescale_factor=0.1,
                      gated_linear_unit=True)
    assert half.state_dict()["videodit_blocks.layers.0.mlp.linear_fc1.weight"].shape == (256, 64)
    plain = MagiDiT(dataclasses.replace(half.config, half_channel_vae=False, x_rescale_factor=1.0))
    plain.load_state_dict(half.state_dict())
    x, t, y, mask = inputs(2)
    kv = causal_ranges(2, 2)
    out = half(x, t, y, mask, kv, null_adaln=False)
    assert out.shape == x.shape and torch.isfinite(out).all()
    scaled = x * 0.1
    expected = plain(torch.cat([scaled, scaled], 1), t, y, mask, kv, null_adaln=False)[:, :16] / 0.1
    torch.testing.assert_close(out, expected)


def test_distill_step_size():
    assert distill_step_size(64) == 32 and distill_step_size(16) == 8 and distill_step_size(32) == 16
    assert distill_step_size(12, 1) == 8 and distill_step_size(12, 2) == 4
    model = tiny_model(distill=True)
    x, t, y, mask = inputs(2)
    kv = causal_ranges(2, 2)
    a = model(x, t, y, mask, kv, null_adaln=False, step_size=8.0)
    b = model(x, t, y, mask, kv, null_adaln=False, step_size=32.0)
    assert not torch.allclose(a, b)
    via = official_forward(model, x, t, y, torch.tensor([False]), mask, kv, None, slice_point=0, range_num=2,
                           denoising_range_num=2, fwd_extra_1st_chunk=False, extract_prefix_video_feature=False,
                           distill_nearly_clean_chunk=False, num_steps=64, distill_interval=1)
    torch.testing.assert_close(via, b, atol=0, rtol=0)
    with pytest.raises(ValueError):
        model(x, t, y, mask, kv, null_adaln=False)


def test_official_forward_maps_cache_flags():
    model = tiny_model()
    x, t, y, mask = inputs(2)
    kv = torch.tensor([[0, CTN], [CTN, 2 * CTN]], dtype=torch.int32)
    ours_cache, theirs_cache = KVCache(4 * CTN), KVCache(4 * CTN)
    theirs_cache.update_kv_cache = True
    ours = model(x, t, y, mask, kv, null_adaln=True, kv_cache=ours_cache, read_cache=True, write_cache=True,
                 skip_last_chunk_write=True)
    theirs = official_forward(model, x, t, y, torch.tensor([True]), mask, kv, theirs_cache, slice_point=0,
                              range_num=2, denoising_range_num=2, fwd_extra_1st_chunk=True,
                              extract_prefix_video_feature=False, distill_nearly_clean_chunk=True, num_steps=8,
                              distill_interval=1)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    assert ours_cache.written_end(0) == theirs_cache.written_end(0) == CTN
    torch.testing.assert_close(ours_cache.layer(1), theirs_cache.layer(1), atol=0, rtol=0)


# ------------------------------------------------------------------------------------------ attention op
def dense_reference(q, k, v, q_ranges, k_ranges):
    heads, kv_heads = q.shape[1], k.shape[1]
    kr = k.repeat_interleave(heads // kv_heads, dim=1)
    vr = v.repeat_interleave(heads // kv_heads, dim=1)
    out = torch.zeros_like(q)
    for (qs, qe), (ks, ke) in zip(q_ranges, k_ranges):
        if ke == ks:
            continue
        scores = torch.einsum("qhd,khd->hqk", q[qs:qe], kr[ks:ke]) / q.shape[-1] ** 0.5
        out[qs:qe] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vr[ks:ke])
    return out


@pytest.mark.parametrize("stack_limit", [1, 1 << 20])
def test_range_attention_matches_dense(stack_limit):
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(20, 6, 8, generator=g), torch.randn(30, 2, 8, generator=g), torch.randn(30, 2, 8, generator=g)
    q_ranges = [(0, 5), (5, 10), (10, 15), (15, 20)]
    k_ranges = [(0, 10), (10, 20), (3, 13), (20, 20)]  # two share a length (stacked), one is empty
    got = RangeAttention(q_ranges, k_ranges, max_stacked_elements=stack_limit)(q, k, v)
    torch.testing.assert_close(got, dense_reference(q, k, v, q_ranges, k_ranges), atol=1e-5, rtol=1e-5)
    assert torch.equal(got[15:], torch.zeros_like(got[15:]))
