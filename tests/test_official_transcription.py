"""The benchmark's plain-PyTorch transcription of the official layer math (benchmarks/official_dit.py) computes
what magi1 computes: float32 to rounding, bf16 in the same regime. It is the baseline of
`dit_step.py --side-by-side`, so a wrong transcription would make that comparison meaningless."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from magi1.config import ModelConfig
from magi1.models import MagiDiT
from magi1.ops import half_math

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from official_dit import official_forward  # noqa: E402

torch.set_num_threads(1)


def tiny_case():
    c = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                    kv_channels=16, caption_channels=32, caption_max_length=16, params_dtype="torch.float32")
    torch.manual_seed(0)
    model = MagiDiT(c)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
            p.copy_(p.bfloat16().float())  # bf16 values, as official checkpoints hold
    g = torch.Generator().manual_seed(1)
    chunks, ctn = 3, 8
    x = torch.randn(1, 16, chunks * 2, 4, 4, generator=g)
    t = torch.rand(1, chunks, generator=g)
    y = torch.randn(chunks, 1, 16, 32, generator=g)
    mask = torch.zeros(chunks, 1, 16)
    for r, n in enumerate([5, 9, 16]):
        mask[r, 0, :n] = 1
    kv = torch.tensor([[max(0, j - 1) * ctn, (j + 1) * ctn] for j in range(chunks)], dtype=torch.int32)
    return c, model, (x, t, y, mask, kv)


@pytest.mark.parametrize("null_adaln", [False, True])
def test_transcription_equals_magi1_in_float32(null_adaln):
    c, model, (x, t, y, mask, kv) = tiny_case()
    with torch.no_grad():
        ours = model(x, t, y, mask, kv, null_adaln=null_adaln)
        official = official_forward(dict(model.state_dict()), c, x, t, y, mask, kv, null_adaln, linear_proj="fp32")
    torch.testing.assert_close(official, ours, rtol=1e-5, atol=1e-5)


def test_transcription_bf16_readings_stay_near_magi1():
    c, model, (x, t, y, mask, kv) = tiny_case()
    low = copy.deepcopy(model).apply_precision("bf16")
    state = dict(low.state_dict())
    c16 = dataclasses.replace(c, params_dtype="torch.bfloat16")
    with torch.no_grad(), half_math.half_math("fp32"):
        ours = low(x, t, y, mask, kv, null_adaln=False)
        gpu_reading = official_forward(state, c16, x, t, y, mask, kv, False, linear_proj="fp32")
        cpu_reading = official_forward(state, c16, x, t, y, mask, kv, False, linear_proj="cpu")
        reference = model(x, t, y, mask, kv, null_adaln=False)
    scale = reference.norm()
    assert (gpu_reading - ours).norm() / scale < 0.02  # the same regime, kernels differ by rounding only
    assert (cpu_reading - reference).norm() / scale < 0.05
    assert not torch.equal(cpu_reading, gpu_reading)  # linear_proj's bf16 output is a real difference
