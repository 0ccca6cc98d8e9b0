"""The training memory planner: its arithmetic, its prediction against the CPU allocator, `magi1 plan --train`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from magi1.config import MagiConfig, load_config
from magi1.errors import InputError
from magi1.memory.planner import GIB
from magi1.memory.sizes import dit_weights
from magi1.memory.training import (
    TrainShape,
    adapter_parameter_count,
    backward_working_bytes,
    dit_parameter_count,
    layer_saved_bytes,
    plan_training,
)
from magi1.testing import random_dit_state, tiny_config_dict

# A tiny DiT wide enough that its activations, not its bookkeeping, fill the peak.
TINY_MODEL = dict(hidden_size=128, ffn_hidden_size=512, num_attention_heads=8, num_query_groups=2, kv_channels=16,
                  num_layers=3)


def tiny_config() -> MagiConfig:
    data = tiny_config_dict(height=64, width=64)
    data["model_config"].update(TINY_MODEL)
    return MagiConfig.from_dict(data)


def tiny_dit(config: MagiConfig):
    from magi1.models.dit import MagiDiT

    model = MagiDiT(config.model_config)
    model.load_state_dict(random_dit_state(config.model_config))
    return model


# ------------------------------------------------------------------------------------------ arithmetic
def test_trained_state_is_16_bytes_an_adapter_parameter_and_12_a_fully_trained_one():
    from magi1.lora.adapters import LoraSettings, add_lora

    config = tiny_config()
    model = tiny_dit(config)
    params = add_lora(model, LoraSettings(rank=4), "default")
    assert adapter_parameter_count(config, 4, "attn,mlp") == sum(p.numel() for p in params)
    shape = TrainShape(64, 64, 2)
    lora = plan_training(config, shape, mode="lora", rank=4, weight_dtype=torch.float32,
                         compute_dtype=torch.float32)
    assert lora.trained_state == 16 * sum(p.numel() for p in params)
    assert lora.weights == dit_weights(config, torch.float32).total
    full = plan_training(config, shape, mode="full", weight_dtype=torch.bfloat16)
    assert full.trained_parameters == dit_parameter_count(config) == sum(p.numel() for p in tiny_dit(config).parameters())
    assert full.trained_state == 12 * full.trained_parameters  # grad + 2 moments; the masters are the weights
    assert full.weights == dit_weights(config, torch.float32).total  # float32 masters whatever the base dtype


def test_checkpointing_keeps_one_input_a_layer_and_recomputes_one_layer():
    config = tiny_config()
    m = config.model_config
    shape = TrainShape(64, 64, 3, batch=2)
    tokens = 2 * 3 * 6 * (64 // 8 // 2) ** 2
    assert shape.tokens(config) == tokens
    one = layer_saved_bytes(config, tokens, torch.bfloat16)
    working = backward_working_bytes(config, tokens, torch.bfloat16)
    on = plan_training(config, shape, checkpointing=True)
    off = plan_training(config, shape, checkpointing=False)
    assert on.activations == m.num_layers * tokens * m.hidden_size * 2 + one + working
    assert off.activations == m.num_layers * one + working
    for plan in (on, off):
        assert plan.peak_bytes == sum(b for _, b in plan.rows)
        assert plan.overhead == int(0.10 * (plan.peak_bytes - plan.overhead))
    cpu = plan_training(config, shape, accelerator=False)
    assert cpu.overhead == 0 and "allocator" not in " ".join(name for name, _ in cpu.rows)
    assert layer_saved_bytes(config, tokens, torch.bfloat16, mode="full") > one  # the gates train too


def test_the_4_5b_model_trains_a_lora_on_one_80_gb_gpu_only_with_checkpointing():
    config = load_config("4.5B_base")
    shape = TrainShape(720, 720, 5)
    assert shape.tokens(config) == 5 * 6 * 45 * 45
    plans = {(mode, ck): plan_training(config, shape, mode=mode, rank=16, checkpointing=ck)
             for mode in ("lora", "full") for ck in (True, False)}
    peaks = {key: plan.peak_bytes / GIB for key, plan in plans.items()}
    assert 30 < peaks["lora", True] < 48
    assert 80 < peaks["full", True] < 120
    assert peaks["lora", False] > 250 and peaks["full", False] > peaks["lora", False]
    assert plans["lora", True].weights / GIB == pytest.approx(8.35, abs=0.05)  # bf16 with float32 islands
    assert 30e6 < plans["lora", True].trained_parameters < 40e6  # rank 16 on 34 layers' attention and MLP
    with pytest.raises(InputError, match="rank"):
        plan_training(config, shape, rank=0)
    with pytest.raises(InputError, match="multiple of 16"):
        plan_training(config, TrainShape(720, 700, 5))


# ------------------------------------------------------------------------------------------ measured
def _trainer(config, mode: str, checkpointing: bool, chunks: int, batch: int):
    from magi1.lora.adapters import LoraSettings, add_lora
    from magi1.lora.trainer import CaptionTable, MagiObjectiveTrainer, ObjectiveSettings
    from magi1.train.batch import TaskMix
    from magi1.train.data import LatentClips

    model = tiny_dit(config)
    if mode == "lora":
        add_lora(model, LoraSettings(rank=8), "default")
    else:
        model.requires_grad_(True)
    if checkpointing:
        model.enable_gradient_checkpointing()
    gen = torch.Generator().manual_seed(0)
    captions = ["a red ball", "a blue square"]
    table = {}
    for caption in captions:
        mask = torch.zeros(1, 64, dtype=torch.long)
        mask[:, :9] = 1
        table[caption] = (torch.randn(1, 1, 64, 32, generator=gen), mask)
    clips = LatentClips(torch.randn(2, 16, 6 * chunks, 8, 8, generator=gen), captions,
                        torch.randn(2, 16, 1, 8, 8, generator=gen))
    # Every sample exactly `chunks` chunks, `batch` of them, so the step has the planned shape.
    mix = TaskMix(chunk_weights=(0.0,) * (chunks - 1) + (1.0,), dropout=0.0)
    settings = ObjectiveSettings(steps=3, lr=1e-3, warmup=1, tokens_per_step=batch * chunks * 6 * 16,
                                 max_chunks=chunks, mix=mix)
    return MagiObjectiveTrainer(model, config, [clips], CaptionTable(table, 64), settings, device="cpu",
                                full=mode == "full")


@pytest.mark.parametrize("mode,checkpointing", [("lora", True), ("lora", False), ("full", True), ("full", False)])
def test_the_prediction_is_within_20_percent_of_the_cpu_allocators_peak(mode, checkpointing):
    """One optimizer step after the first (AdamW's moments exist, as in every step but the first): the peak
    above what was allocated before is the activations, inputs and gradients the plan predicts."""
    from magi1.memory.measure import peak_bytes_during

    config = tiny_config()
    chunks, batch = 3, 2
    trainer = _trainer(config, mode, checkpointing, chunks, batch)
    trainer.train_step(0)
    _, measured = peak_bytes_during(lambda: trainer.train_step(1), torch.device("cpu"))
    plan = plan_training(config, TrainShape(64, 64, chunks, batch), mode=mode, rank=8, weight_dtype=torch.float32,
                         compute_dtype=torch.float32, checkpointing=checkpointing, accelerator=False)
    gradients = 4 * plan.trained_parameters
    predicted = plan.activations + plan.inputs_and_head + gradients
    assert abs(predicted - measured) <= 0.20 * measured, (predicted, measured, predicted / measured)


# ------------------------------------------------------------------------------------------ the command
def test_magi1_plan_train_prints_the_plan_and_the_other_settings():
    out = subprocess.run([sys.executable, "-m", "magi1.cli", "plan", "--config_file", "4.5B_base", "--train", "lora",
                          "--height", "720", "--width", "720", "--memory", "24GB"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "train lora rank 16 on attn,mlp, with gradient checkpointing" in text
    assert "training memory plan" in text and "gradient checkpointing" in text and "total" in text
    assert "60750 tokens a step" in text
    for line in ("lora without checkpointing:", "full with checkpointing:", "full without checkpointing:"):
        assert line in text
    assert "does not fit in 24.00 GiB of device memory" in text
    bad = subprocess.run([sys.executable, "-m", "magi1.cli", "plan", "--train", "lora", "--lora_rank", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "rank must be a whole number >= 1" in bad.stderr


def test_magi1_plan_train_full_counts_a_small_model_in_millions():
    out = subprocess.run([sys.executable, "-m", "magi1.cli", "plan", "--config_file", "demo", "--train", "full"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "all weights: 2.0 M params" in out.stdout and "0.00 B" not in out.stdout  # was "0.00 B params"
