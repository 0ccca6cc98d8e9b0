"""Official checkpoint folders: write, read back bit-exact, assign to meta models, and fail clearly."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from magi1.checkpoint import (
    CheckpointError,
    is_high_precision,
    load_state_dict_into,
    promote_high_precision,
    read_state_dict,
    save_official,
    select_pipeline_stage,
    weight_dir,
)
from magi1.ops.fp8 import Fp8PerTensorLinear, quantize_linear_weight


# ----------------------------------------------------------------------------------------- a stand-in model
class Norm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))
        self.bias = nn.Parameter(torch.zeros(n))


class Attention(nn.Module):
    def __init__(self, d, quantized):
        super().__init__()
        self.linear_qkv = nn.Module()
        self.linear_qkv.layer_norm = nn.LayerNorm(d)
        self.linear_qkv.q = Fp8PerTensorLinear(d, d) if quantized else nn.Linear(d, d, bias=False)
        self.q_layernorm = Norm(4)
        self.q_layernorm_xattn = Norm(4)


class Layer(nn.Module):
    def __init__(self, d, quantized=False):
        super().__init__()
        self.self_attention = Attention(d, quantized)
        self.self_attn_post_norm = Norm(d)
        self.mlp = nn.Module()
        self.mlp.linear_fc1 = nn.Linear(d, 2 * d, bias=False)


class TinyDiT(nn.Module):
    """The official key structure in miniature; layer 1 is fp8 when `fp8` (as layers 1..L-2 are)."""

    def __init__(self, num_layers=4, d=8, fp8=False):
        super().__init__()
        self.x_embedder = nn.Conv3d(2, d, kernel_size=(1, 2, 2), bias=False)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(6, d), nn.SiLU(), nn.Linear(d, d))
        self.y_embedder = nn.Module()
        self.y_embedder.null_caption_embedding = nn.Parameter(torch.zeros(3, 5))
        self.y_embedder.y_proj_xattn = nn.Sequential(nn.Linear(5, d), nn.SiLU())
        self.rope = nn.Module()
        self.rope.bands = nn.Parameter(torch.ones(2))
        self.videodit_blocks = nn.Module()
        self.videodit_blocks.layers = nn.ModuleList(Layer(d, fp8 and i == 1) for i in range(num_layers))
        self.videodit_blocks.final_layernorm = Norm(d)
        self.final_linear = nn.Module()
        self.final_linear.linear = nn.Linear(d, 4, bias=False)


def random_state_dict(model, seed=0, dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        if t.dtype == torch.float8_e4m3fn:
            out[name] = quantize_linear_weight(torch.randn(t.shape[1:], generator=gen))[0]
        elif name.endswith(("_scale",)):
            out[name] = torch.rand(t.shape, generator=gen) + 0.5
        else:
            out[name] = torch.randn(t.shape, generator=gen).to(dtype)
    return out


def assert_same(a, b):
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name  # bitwise


@pytest.fixture
def state():
    return random_state_dict(TinyDiT(fp8=True))


# ----------------------------------------------------------------------------------------- writing / reading
@pytest.mark.parametrize(
    "shard_bytes, zst",
    [(None, False), (None, True), (300, False), (300, True)],
    ids=["single", "single-zst", "sharded", "sharded-zst"],
)
def test_save_and_read_back_bit_exact(tmp_path, state, shard_bytes, zst):
    written = save_official(state, tmp_path, max_shard_bytes=shard_bytes, compress_zst=zst)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in written) == names
    if shard_bytes is None:
        assert names == ["model.safetensors" + (".zst" if zst else "")]
    else:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(state)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
        shards = set(index["weight_map"].values())
        assert len(shards) > 1
        suffix = ".zst" if zst else ""
        assert {s + suffix for s in shards} | {"model.safetensors.index.json"} == set(names)
    assert_same(read_state_dict(tmp_path), state)


def test_only_names_listed_for_a_shard_are_taken_from_it(tmp_path, state):
    save_official(state, tmp_path, max_shard_bytes=300)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    dropped = next(iter(index["weight_map"]))
    del index["weight_map"][dropped]
    index_path.write_text(json.dumps(index))
    assert dropped not in read_state_dict(tmp_path)


def test_resaving_replaces_previous_layout(tmp_path, state):
    save_official(state, tmp_path, max_shard_bytes=300, compress_zst=True)
    save_official(state, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


# ----------------------------------------------------------------------------------------- assigning
def test_load_into_meta_model_assigns_and_promotes(tmp_path, state):
    save_official(state, tmp_path, max_shard_bytes=400, compress_zst=True)
    with torch.device("meta"):
        model = TinyDiT(fp8=True)
    report = load_state_dict_into(model, tmp_path)
    assert report.ok and set(report.loaded) == set(state)
    loaded = model.state_dict()
    for name, stored in state.items():
        got = loaded[name]
        assert not got.is_meta
        if stored.dtype == torch.float8_e4m3fn:
            assert got.dtype == stored.dtype and torch.equal(got.view(torch.uint8), stored.view(torch.uint8))
            continue
        want_dtype = torch.float32 if is_high_precision(name) or name.endswith("_scale") else torch.bfloat16
        assert got.dtype == want_dtype, name
        assert torch.equal(got, stored.to(want_dtype)), name  # upcasting is exact
    assert model.rope.bands.dtype == torch.float32
    assert model.videodit_blocks.layers[0].self_attention.q_layernorm_xattn.weight.dtype == torch.bfloat16
    assert model.videodit_blocks.layers[0].self_attention.q_layernorm.weight.dtype == torch.float32
    # parameters stay parameters, with their requires_grad
    assert isinstance(model.final_linear.linear.weight, nn.Parameter)
    assert not model.videodit_blocks.layers[1].self_attention.linear_qkv.q.weight.requires_grad


def test_runtime_dtype_casts_ordinary_tensors_only(state):
    with torch.device("meta"):
        model = TinyDiT(fp8=True)
    load_state_dict_into(model, state, dtype=torch.float16)
    layer1 = model.videodit_blocks.layers[1]
    assert model.videodit_blocks.layers[0].mlp.linear_fc1.weight.dtype == torch.float16
    assert layer1.self_attention.linear_qkv.q.weight.dtype == torch.float8_e4m3fn
    assert layer1.self_attention.linear_qkv.q.input_scale.dtype == torch.float32
    assert model.x_embedder.weight.dtype == torch.float32


def test_high_precision_predicate():
    promoted = [
        "x_embedder.weight", "t_embedder.mlp.0.bias", "y_embedder.null_caption_embedding",
        "y_embedder.y_proj_xattn.0.weight", "y_embedder.y_proj_adaln.0.weight", "rope.bands",
        "final_linear.linear.weight", "videodit_blocks.final_layernorm.weight",
        "videodit_blocks.layers.3.self_attention.q_layernorm.weight",
        "videodit_blocks.layers.3.self_attention.k_layernorm.bias",
        "videodit_blocks.layers.0.self_attn_post_norm.weight", "videodit_blocks.layers.0.mlp_post_norm.bias",
    ]
    kept = [
        "videodit_blocks.layers.3.self_attention.q_layernorm_xattn.weight",
        "videodit_blocks.layers.3.self_attention.k_layernorm_xattn.bias",
        "videodit_blocks.layers.3.self_attention.linear_qkv.layer_norm.weight",
        "videodit_blocks.layers.3.self_attention.linear_qkv.q.weight",
        "videodit_blocks.layers.3.self_attention.linear_kv_xattn.weight",
        "videodit_blocks.layers.3.self_attention.linear_proj.weight",
        "videodit_blocks.layers.3.ada_modulate_layer.proj.0.weight",
        "videodit_blocks.layers.3.mlp.layer_norm.weight", "videodit_blocks.layers.3.mlp.linear_fc2.weight",
    ]
    assert all(is_high_precision(n) for n in promoted)
    assert not any(is_high_precision(n) for n in kept)


def test_promote_high_precision_in_place():
    model = TinyDiT(fp8=True).to(torch.bfloat16)
    promote_high_precision(model)
    assert model.x_embedder.weight.dtype == torch.float32
    assert isinstance(model.rope.bands, nn.Parameter) and model.rope.bands.dtype == torch.float32
    assert model.videodit_blocks.layers[0].mlp.linear_fc1.weight.dtype == torch.bfloat16
    assert model.videodit_blocks.layers[0].self_attention.q_layernorm_xattn.weight.dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------- pipeline parallel
def test_select_pipeline_stage_renumbers_layers():
    keys = ["x_embedder.weight"] + [f"videodit_blocks.layers.{i}.mlp.w" for i in range(6)]
    stage = select_pipeline_stage(keys, num_layers=6, pp_size=3, rank=1)
    assert stage == {
        "x_embedder.weight": "x_embedder.weight",
        "videodit_blocks.layers.0.mlp.w": "videodit_blocks.layers.2.mlp.w",
        "videodit_blocks.layers.1.mlp.w": "videodit_blocks.layers.3.mlp.w",
    }
    with pytest.raises(ValueError):
        select_pipeline_stage(keys, num_layers=6, pp_size=3, rank=3)


def test_load_pipeline_stage(state):
    with torch.device("meta"):
        stage = TinyDiT(num_layers=2)
    del stage.videodit_blocks.final_layernorm  # a stage may lack a non-layer module: that key is skipped
    full = random_state_dict(TinyDiT(num_layers=4))
    load_state_dict_into(stage, full, keep_layers=[2, 3])
    got = stage.videodit_blocks.layers[1].mlp.linear_fc1.weight
    assert torch.equal(got, full["videodit_blocks.layers.3.mlp.linear_fc1.weight"])


# ----------------------------------------------------------------------------------------- broken checkpoints
def test_one_error_lists_missing_unexpected_and_shape_mismatch(tmp_path, state):
    broken = dict(state)
    del broken["videodit_blocks.layers.2.mlp.linear_fc1.weight"]
    broken["videodit_blocks.layers.9.mlp.extra"] = torch.zeros(2)
    broken["final_linear.linear.weight"] = torch.zeros(5, 8, dtype=torch.bfloat16)
    save_official(broken, tmp_path, max_shard_bytes=500)
    with torch.device("meta"):
        model = TinyDiT(fp8=True)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_into(model, tmp_path)
    message = str(info.value)
    assert "1 missing keys" in message and "videodit_blocks.layers.2.mlp.linear_fc1.weight" in message
    assert "1 unexpected keys" in message and "videodit_blocks.layers.9.mlp.extra" in message
    assert "final_linear.linear.weight: checkpoint (5, 8) bfloat16, model (4, 8) float32" in message


def test_bf16_weights_for_an_fp8_model_are_a_mismatch(state):
    with torch.device("meta"):
        fp8_model = TinyDiT(fp8=True)
    plain = random_state_dict(TinyDiT(fp8=False))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_state_dict_into(fp8_model, plain)


def test_non_strict_reports_instead_of_raising(state):
    del state["rope.bands"]
    with torch.device("meta"):
        model = TinyDiT(fp8=True)
    report = load_state_dict_into(model, state, strict=False)
    assert report.missing == ["rope.bands"] and model.rope.bands.is_meta
    with torch.device("meta"):
        model = TinyDiT(fp8=True)
    load_state_dict_into(model, state, defaults={"rope.bands": lambda: torch.tensor([3.0, 4.0])})
    assert model.rope.bands.tolist() == [3.0, 4.0]


@pytest.mark.parametrize("zst", [False, True])
def test_truncated_file_names_the_file(tmp_path, state, zst):
    save_official(state, tmp_path, compress_zst=zst)
    path = tmp_path / ("model.safetensors.zst" if zst else "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match="truncated") as info:
        read_state_dict(tmp_path)
    assert str(path) in str(info.value)


def test_garbage_file_is_a_clear_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x05" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_state_dict(tmp_path)


def test_index_errors(tmp_path, state):
    save_official(state, tmp_path, max_shard_bytes=300)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first_shard = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["ghost.weight"] = first_shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="ghost.weight"):
        read_state_dict(tmp_path)
    (tmp_path / first_shard).unlink()
    with pytest.raises(CheckpointError, match="not in the folder"):
        read_state_dict(tmp_path)
    index_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="index"):
        read_state_dict(tmp_path)


def test_weight_dir_names_and_errors(tmp_path, state):
    with pytest.raises(CheckpointError, match="does not exist"):
        weight_dir(tmp_path / "nowhere", distill=False, fp8_quant=False)
    (tmp_path / "inference_weight").mkdir()
    with pytest.raises(CheckpointError, match="no weights in .*inference_weight") as info:
        weight_dir(tmp_path, distill=False, fp8_quant=False)
    assert "no inference_weight* folder with weights" in str(info.value)

    save_official(state, tmp_path / "inference_weight.distill")
    save_official(state, tmp_path / "inference_weight.fp8.distill", compress_zst=True)
    assert weight_dir(tmp_path, distill=True, fp8_quant=False).name == "inference_weight.distill"
    assert weight_dir(tmp_path, distill=True, fp8_quant=True).name == "inference_weight.fp8.distill"
    with pytest.raises(CheckpointError) as info:
        weight_dir(tmp_path, distill=False, fp8_quant=False)
    message = str(info.value)
    assert "the folder must be inference_weight;" in message or "must be inference_weight " in message
    assert "inference_weight.distill (distill=True, fp8_quant=False)" in message
    assert "inference_weight.fp8.distill (distill=True, fp8_quant=True)" in message


# ----------------------------------------------------------------------------------------- no pickle
def test_pickle_formats_are_not_read(tmp_path):
    torch_file = tmp_path / "pytorch_model.bin"
    torch_file.write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="expected model.safetensors.index.json or model.safetensors"):
        read_state_dict(tmp_path)


def test_loading_never_unpickles(tmp_path, state, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for target, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(target, name, forbidden)
    for sub, kwargs in (("a", {}), ("b", {"max_shard_bytes": 300, "compress_zst": True})):
        save_official(state, tmp_path / sub, **kwargs)
        with torch.device("meta"):
            model = TinyDiT(fp8=True)
        load_state_dict_into(model, tmp_path / sub)
    source = "".join(p.read_text() for p in Path(__import__("magi1.checkpoint").checkpoint.__file__).parent.glob("*.py"))
    assert "torch.load" not in source and "import pickle" not in source


# ----------------------------------------------------------------------------------------- load_dit (real model)
def tiny_config(fp8=True, distill=True, **extra):
    from magi1.config import load_config

    preset = {(True, True): "4.5B_distill_quant", (False, True): "4.5B_distill", (False, False): "4.5B_base"}
    overrides = {
        "model_config.num_layers": 4, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
        "num_query_groups": 2, "kv_channels": 16, "caption_channels": 32, "caption_max_length": 8,
        "in_channels": 4, "out_channels": 4,
    }
    return load_config(preset[(fp8, distill)]).replace(**overrides, **extra)


def official_file_state(model, seed=0):
    """Random weights as the official files hold them: bf16 floats, fp8 weights, fp32 scales."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        if t.dtype == torch.float8_e4m3fn:
            out[name] = quantize_linear_weight(torch.randn(t.shape[1:], generator=gen) * 0.1)[0]
        elif name.endswith("_scale"):
            out[name] = torch.rand(t.shape, generator=gen) * 0.01 + 0.01
        else:
            out[name] = (torch.randn(t.shape, generator=gen) * 0.1).to(torch.bfloat16)
    return out


def run_tiny(model, config):
    from magi1.models.dit import distill_step_size

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 2, 4, 4, generator=gen)
    y = torch.randn(1, 1, 8, 32, generator=gen)
    mask = torch.ones(1, 1, 8, dtype=torch.bool)
    step = distill_step_size(config.runtime_config.num_steps) if model.distill else None
    return model(x, torch.tensor([[0.3]]), y, mask, torch.tensor([[0, 8]]), null_adaln=False, step_size=step)


@pytest.mark.parametrize("fp8, distill", [(True, True), (False, False)], ids=["distill-fp8", "base"])
def test_load_dit_matches_source_model(tmp_path, fp8, distill):
    dit = pytest.importorskip("magi1.models.dit")  # skips cleanly while the DiT cannot be imported
    from magi1.checkpoint import load_dit

    config = tiny_config(fp8=fp8, distill=distill, load=str(tmp_path))
    source = dit.MagiDiT(config.model_config, distill=distill, fp8_quant=fp8)
    file_state = official_file_state(source)
    source.load_state_dict(file_state)  # copies into the source's own dtypes (bf16 -> fp32 is exact)
    folder = "inference_weight" + (".fp8" if fp8 else "") + (".distill" if distill else "")
    save_official(file_state, tmp_path / folder, max_shard_bytes=20_000, compress_zst=fp8)

    model = load_dit(config, device="cpu")
    assert not model.training
    assert_same(model.state_dict(), source.state_dict())  # same values and the same fp32 islands
    assert torch.equal(run_tiny(model, config), run_tiny(source, config))

    with pytest.raises(CheckpointError, match="distill=True"):
        load_dit(tiny_config(fp8=not fp8, distill=not distill), load_root=tmp_path)


def test_load_dit_pipeline_stage_and_default_rope(tmp_path):
    dit = pytest.importorskip("magi1.models.dit")  # skips cleanly while the DiT cannot be imported
    from magi1.checkpoint import load_dit

    config = tiny_config(**{"engine_config.pp_size": 2})
    full = dit.MagiDiT(config.model_config, distill=True, fp8_quant=True)
    file_state = official_file_state(full)
    del file_state["rope.bands"]  # not every release need store it; the default is computed
    save_official(file_state, tmp_path / "inference_weight.fp8.distill")

    stage = load_dit(config, load_root=tmp_path, device="cpu", pp_rank=1)
    layers = stage.videodit_blocks.layers
    assert [layer.layer_number for layer in layers] == [2, 3]
    # global numbering decides fp8: layer 2 (of 0..3) is quantized, the last one is not
    assert layers[0].mlp.linear_fc1.weight.dtype == torch.float8_e4m3fn
    assert layers[1].mlp.linear_fc1.weight.dtype == torch.bfloat16
    assert torch.equal(layers[1].mlp.linear_fc2.weight, file_state["videodit_blocks.layers.3.mlp.linear_fc2.weight"])
    assert torch.equal(stage.rope.bands, full.rope.bands)


def test_a_checkpoint_of_another_width_is_one_short_error_from_the_cli(tmp_path):
    # Every tensor mismatches: the message counts them and lists a few, not 156 lines.
    import subprocess
    import sys

    widen = ["model_config.hidden_size=192", "model_config.ffn_hidden_size=768",
             "model_config.num_attention_heads=6", "model_config.num_query_groups=3"]
    done = subprocess.run([sys.executable, "-m", "magi1.cli", "generate", "--config_file", "demo", "--prompt", "a ball",
                           "--num_frames", "24", "--output_path", str(tmp_path / "x.mp4"), "--threads", "1",
                           *[arg for item in widen for arg in ("--set", item)]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x.mp4").exists()
    lines = done.stderr.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if "does not fit the model" in line)
    assert lines[start + 1].strip().endswith("shape/dtype mismatches:")
    assert lines[-1].strip().startswith("... and ") and len(lines) - start <= 13
