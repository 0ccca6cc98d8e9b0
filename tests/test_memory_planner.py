"""The memory planner: exact weight and KV counts, activations against the CPU allocator, `magi1 plan`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from magi1.config import MagiConfig, load_config
from magi1.errors import InputError
from magi1.memory.measure import measure_denoising
from magi1.memory.planner import (
    GIB,
    MemoryPlanError,
    RunShape,
    choose_plan,
    parse_memory,
    plan_every_mode,
    plan_memory,
)
from magi1.memory.sizes import dit_weights, kv_row_bytes, window_shape
from magi1.models.dit import MagiDiT
from magi1.testing import random_dit_state, tiny_config_dict


def tiny_config(**kw) -> MagiConfig:
    return MagiConfig.from_dict(tiny_config_dict(**kw))


def tiny_dit(config: MagiConfig) -> MagiDiT:
    distill = config.engine_config.distill
    model = MagiDiT(config.model_config, distill=distill)
    model.load_state_dict(random_dit_state(config.model_config, distill=distill))
    return model


def conditioning(config: MagiConfig, chunks: int):
    m = config.model_config
    y = torch.randn(2, chunks, m.caption_max_length, m.caption_channels, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, chunks, m.caption_max_length, dtype=torch.long)
    masks[:, :, :12] = 1
    return y, masks


def test_weight_bytes_are_the_loaded_models_bytes():
    config = tiny_config()
    model = tiny_dit(config)
    counted = dit_weights(config, torch.float32)
    real = sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
    assert counted.total == real
    layer0 = model.videodit_blocks.layers[0]
    assert counted.layer_bytes[0] == sum(p.numel() * p.element_size() for p in layer0.parameters())
    # The official 4.5B: 4.460e9 parameters (reference notes), bf16 with float32 islands.
    big = load_config("4.5B_base")
    weights = dit_weights(big, torch.bfloat16)
    assert 2 * 4.45e9 < weights.total < 2 * 4.47e9 + 0.2e9
    quant = dit_weights(load_config("4.5B_distill_quant"), torch.bfloat16)
    assert quant.total < 0.6 * weights.total  # fp8 layers 1..L-2 halve the storage
    assert quant.layer_bytes[0] == weights.layer_bytes[0]  # the first layer stays high precision


def test_kv_cache_per_clean_chunk_matches_the_official_sizes():
    for name, gib in (("4.5B_base", 1.58), ("24B_base", 2.22)):
        config = load_config(name)
        ctn = window_shape(config, height=720, width=720, num_frames=96, window_size=4).tokens_per_chunk
        per_chunk = ctn * kv_row_bytes(config, torch.bfloat16) * config.model_config.num_layers
        assert per_chunk / GIB == pytest.approx(gib, abs=0.01)


def test_kv_exact_and_activations_within_20_percent_of_the_cpu_allocator():
    config = tiny_config(height=64, width=64, num_frames=72, num_steps=2, window_size=2, distill=True)
    model = tiny_dit(config)
    shape = RunShape(64, 64, 72, 2)
    chunks = window_shape(config, height=64, width=64, num_frames=72, window_size=2).num_chunks
    y, masks = conditioning(config, chunks)
    noise = torch.randn(1, 16, chunks * 6, 8, 8, generator=torch.Generator().manual_seed(1))
    measured = measure_denoising(model, config, y, masks, noise=noise)
    plan = plan_memory(config, shape, dtype=torch.float32, kv_offload=False, accelerator=False)
    assert plan.kv_cache == measured["kv_peak_bytes"] > 0
    predicted = plan.kv_cache + plan.dit_activations + plan.latents
    assert abs(predicted - measured["peak_bytes"]) <= 0.2 * measured["peak_bytes"], (predicted, measured)


def test_modes_order_and_auto_choice():
    config = load_config("4.5B_distill_quant")
    plans = plan_every_mode(config)
    assert [p.label for p in plans] == ["none", "model", "blocks (k=2)", "blocks (k=1)"]
    peaks = [p.peak_device for p in plans]
    assert peaks == sorted(peaks, reverse=True)
    assert plans[2].dit_resident < plans[1].dit_resident
    assert all(p.kv_offload for p in plans)  # the official config asks for it
    assert choose_plan(config, free_device=40 * GIB).mode == "none"
    # 4.5B keeps T5 on the CPU, so model offload saves the VAE while the DiT denoises (the peak), no more;
    # the 24B T5 runs on the GPU and leaves it too.
    assert peaks[0] - peaks[1] == plans[0].vae_weights > 0
    assert plans[1].phases["denoise"] == plans[1].peak_device
    big = plan_every_mode(load_config("24B_distill"))
    assert big[1].peak_device < big[0].peak_device
    assert choose_plan(load_config("24B_distill"), free_device=big[1].peak_device).mode == "model"
    small = choose_plan(config, free_device=plans[2].peak_device + 1)
    assert small.mode == "blocks" and small.blocks_on_device >= 2
    # --offload auto --blocks_on_device 1: the most layers block offload may keep (it was ignored)
    capped = choose_plan(config, free_device=plans[2].peak_device + 1, max_blocks_on_device=1)
    assert capped.mode == "blocks" and capped.blocks_on_device == 1
    with pytest.raises(MemoryPlanError, match=r"GiB.*1\.00 GiB free on the device"):
        choose_plan(config, free_device=1 * GIB)


def test_kv_offload_moves_the_cache_to_the_host():
    config = load_config("4.5B_distill")
    on = plan_memory(config, kv_offload=True)
    off = plan_memory(config, kv_offload=False)
    assert off.peak_device - on.peak_device == on.kv_cache
    assert on.peak_host - off.peak_host == on.kv_cache


def test_parse_memory():
    assert parse_memory("12GB") == 12 * GIB
    assert parse_memory("1.5 GiB") == int(1.5 * GIB)
    assert parse_memory("800MB") == 800 * 1024**2
    with pytest.raises(InputError, match="12GB"):
        parse_memory("twelve")


def test_magi1_plan_prints_every_mode_without_loading(tmp_path):
    out = subprocess.run([sys.executable, "-m", "magi1.cli", "plan", "--config_file", "4.5B_distill_quant",
                          "--memory", "12GB"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for label in ("none", "model", "blocks (k=2)", "blocks (k=1)", "--offload auto picks"):
        assert label in out.stdout



def test_magi1_plan_refuses_a_bad_amount_and_says_when_nothing_fits(capsys):
    from magi1.cli import main

    assert main(["plan", "--memory", "lots"]) == 2
    assert "cannot read 'lots'" in capsys.readouterr().err
    assert main(["plan", "--config_file", "24B_distill_quant", "--memory", "4GB"]) == 0
    out = capsys.readouterr().out
    assert "--offload auto: this run does not fit" in out and "4.00 GiB free on the device" in out


def _plan(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magi1.cli", "plan", *argv], capture_output=True, text=True,
                          timeout=120)


def test_magi1_plan_odd_amounts_and_flags_the_plan_would_ignore_are_one_sentence():
    refused = {
        ("--memory", "0"): "memory '0' is no memory at all; give the free amount, e.g. 12GB",  # was "write 0GB"
        ("--memory", ""): "cannot read '' as an amount of memory; write e.g. 12GB or 800MB",  # was "not given"
        ("--train", "lora", "--host_memory", "1MB"):
            "--host_memory is read only when planning a generation, not by --train lora: drop it",
        ("--train", "full", "--lora_rank", "8"): "--lora_rank is read only by --train lora, not by --train full: drop it",
        ("--lora_rank", "8"): "--lora_rank is read only by --train lora: drop it or add --train lora",
    }
    accepted = [("--memory", "1KB"), ("--config_file", "4.5B_distill", "--memory", "4GB", "--host_memory", "16GB"),
                ("--train", "lora", "--lora_rank", "4")]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # independent runs: two at a time keeps the suite short
        runs = list(pool.map(lambda argv: _plan(*argv), [*refused, *accepted]))
    for expected, run in zip(refused.values(), runs):
        assert run.returncode == 2 and run.stderr.splitlines() == [f"magi1 plan: error: {expected}"], run.stderr
    tiny, host, trained = runs[len(refused):]
    assert tiny.returncode == 0 and "there is 1.0 KiB free on the device" in tiny.stdout  # was "0.0 MiB"
    # Host memory short, the device not: the advice is about host memory, not the window.
    assert "host memory is what is short: free some, or use fp8 weights" in host.stdout
    assert "window_size 1" not in host.stdout
    assert trained.returncode == 0 and "rank 4 on attn,mlp" in trained.stdout


def test_bf16_weights_asked_of_an_fp8_checkpoint_are_refused_not_ignored():
    from magi1.pipeline import MagiPipeline

    run = _plan("--config_file", "4.5B_distill_quant", "--weights", "bf16")
    assert run.returncode == 2 and run.stderr.splitlines() == [
        "magi1 plan: error: weights bf16 asks for bf16 weights, but this config's checkpoint is stored in fp8 "
        "(engine_config.fp8_quant): use the variant without _quant, or weights auto"], run.stderr
    with pytest.raises(InputError, match="checkpoint is stored in fp8"):  # before any weights are looked for
        MagiPipeline.from_pretrained(load_config("4.5B_distill_quant"), weights="bf16")
    assert _plan("--config_file", "4.5B_distill_quant", "--weights", "fp8").returncode == 0
