"""`--weights fp8`: a bf16 checkpoint stored in fp8 at load (half the bytes), close to the bf16 output."""

from __future__ import annotations

import numpy as np
import torch

from magi1.config import MagiConfig
from magi1.memory.offload import resident_bytes
from magi1.memory.planner import RunShape, plan_memory
from magi1.models.dit import MagiDiT
from magi1.ops.fp8_storage import Fp8StoredLinear, quantize_dit_weights
from magi1.pipeline import MagiPipeline
from magi1.testing import random_dit_state, tiny_config_dict


def test_fp8_storage_halves_the_layers_and_stays_close():
    data = tiny_config_dict()
    data["model_config"].update(num_layers=4, params_dtype="torch.bfloat16")
    config = MagiConfig.from_dict(data)
    model = MagiDiT(config.model_config)
    model.load_state_dict(random_dit_state(config.model_config, std=0.05))
    model.apply_precision(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 6, 4, 4, generator=gen)
    t = torch.full((1, 1), 0.4)
    y = torch.randn(1, 1, 64, 32, generator=gen)
    mask = torch.zeros(1, 1, 64, dtype=torch.long)
    mask[..., :7] = 1
    spans = torch.tensor([[0, 24]], dtype=torch.int32)
    reference = model(x, t, y, mask, spans, null_adaln=False)
    middle = model.videodit_blocks.layers[1]
    before = resident_bytes(middle)
    quantize_dit_weights(model)
    assert isinstance(middle.mlp.linear_fc1, Fp8StoredLinear)
    assert type(model.videodit_blocks.layers[0].mlp.linear_fc1) is torch.nn.Linear  # first/last stay bf16
    linears = sum(p.numel() for n, p in middle.named_parameters() if n.endswith("weight") and p.dim() == 2
                  and p.dtype == torch.float8_e4m3fn)
    assert linears > 0 and resident_bytes(middle) < before - linears + 8 * 8
    out = model(x, t, y, mask, spans, null_adaln=False)
    err = (out - reference).norm() / reference.norm()
    assert 0 < err < 0.05, err
    plan = plan_memory(config, RunShape(32, 32, 48, 2), dtype=torch.bfloat16, weights="fp8")
    assert plan.fp8 and plan.dit_total < plan_memory(config, RunShape(32, 32, 48, 2)).dit_total


def test_pipeline_loads_a_bf16_checkpoint_as_fp8(tiny_model):
    pipe = MagiPipeline.from_pretrained(str(tiny_model), device="cpu", weights="fp8")
    # The tiny model has two layers, first and last, which stay high precision; the run just works.
    video = pipe(prompt="a red ball", num_frames=48, seed=1, output_type="np").frames
    assert video.shape[1] == 48 and np.isfinite(video).all()
