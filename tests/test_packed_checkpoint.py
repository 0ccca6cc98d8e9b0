"""A MAGI-1.1 packed checkpoint (all layers stacked in one tensor per kind) is named and refused up front.

The fake checkpoint is the embedded demo DiT rewritten in that layout: every per-layer tensor stacked on a
new leading layer axis, and q, qx, k, v fused into one `linear_qkv.weight` as the MAGI-1.1 names suggest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from magi1.checkpoint import CheckpointError, load_state_dict_into, read_state_dict
from magi1.config import load_config

SRC = str(Path(__file__).resolve().parents[1] / "src")
_LAYER = re.compile(r"^videodit_blocks\.layers\.(\d+)\.(.+)$")
_QKV = ("q", "qx", "k", "v")


def _packed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    per_kind: dict[str, dict[int, torch.Tensor]] = {}
    packed = {}
    for name, tensor in state.items():
        match = _LAYER.match(name)
        if match is None:
            packed[name] = tensor
        else:
            per_kind.setdefault(match[2], {})[int(match[1])] = tensor
    for kind, layers in per_kind.items():
        stacked = torch.stack([layers[i] for i in sorted(layers)])  # (layers, *per-layer shape)
        packed[f"videodit_blocks.layers.{kind}"] = stacked
    fused = [packed.pop(f"videodit_blocks.layers.self_attention.linear_qkv.{p}.weight") for p in _QKV]
    packed["videodit_blocks.layers.self_attention.linear_qkv.weight"] = torch.cat(fused, dim=1).contiguous()
    return packed


@pytest.fixture(scope="module")
def packed_root(tmp_path_factory) -> Path:
    config = load_config("demo")
    demo_weights = Path(config.resolve_path(config.runtime_config.load)) / "inference_weight"
    root = tmp_path_factory.mktemp("magi11")
    (root / "inference_weight").mkdir()
    save_file(_packed(read_state_dict(demo_weights)), str(root / "inference_weight" / "model.safetensors"))
    return root


def test_generate_names_the_packed_layout_before_loading(packed_root, tmp_path):
    out = tmp_path / "out" / "never.mp4"
    out.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "magi1.cli", "generate", "--set", f"runtime_config.load={packed_root}",
         "--output_path", str(out), "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("magi1 generate: error: "), done.stderr
    # demo: its layers stacked; fused rows = q 128 + qx 128 + k 64 + v 64 = 384; hidden 128
    layers = load_config("demo").model_config.num_layers
    assert "MAGI-1.1 packed checkpoint" in lines[0]
    assert f"videodit_blocks.layers.self_attention.linear_qkv.weight of shape ({layers}, 384, 128)" in lines[0]
    assert "missing keys" not in lines[0]
    assert not list(out.parent.iterdir())


def test_python_api_refuses_a_packed_state_dict(packed_root):
    from magi1.models.dit import MagiDiT

    config = load_config("demo")
    with torch.device("meta"):
        model = MagiDiT(config.model_config)
    packed = read_state_dict(packed_root / "inference_weight")
    layers = config.model_config.num_layers
    with pytest.raises(CheckpointError, match=rf"MAGI-1\.1 packed checkpoint: its {layers} transformer layers"):
        load_state_dict_into(model, packed)


def test_the_per_layer_layout_is_not_mistaken_for_packed():
    from magi1.checkpoint.packed_layout import packed_layer_keys

    names = ["videodit_blocks.layers.0.self_attention.linear_qkv.q.weight", "videodit_blocks.final_layernorm.weight",
             "videodit_blocks.layers.17.mlp.linear_fc1.weight"]
    assert packed_layer_keys(names) == []
    assert packed_layer_keys(["videodit_blocks.layers.mlp.linear_fc1.weight"]) == ["videodit_blocks.layers.mlp.linear_fc1.weight"]
