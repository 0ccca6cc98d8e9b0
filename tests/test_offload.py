"""Weight offload and KV offload: bit-identical outputs, and at most the planned bytes on the compute side."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from magi1.config import MagiConfig
from magi1.io.video import load_video
from magi1.memory.offload import LayerStreamer, ResidencyCounter, resident_bytes
from magi1.memory.planner import RunShape, plan_memory
from magi1.memory.sizes import dit_weights
from magi1.models.dit import MagiDiT
from magi1.pipeline import MagiPipeline
from magi1.sampling.sampler import sample_chunks
from magi1.testing import random_dit_state, tiny_config_dict


def four_layer_config(**kw) -> MagiConfig:
    data = tiny_config_dict(num_steps=2, **kw)
    data["model_config"]["num_layers"] = 4
    return MagiConfig.from_dict(data)


def run_chunks(model, config, seed: int = 0) -> torch.Tensor:
    m = config.model_config
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(2, 2, m.caption_max_length, m.caption_channels, generator=gen)
    masks = torch.zeros(2, 2, m.caption_max_length, dtype=torch.long)
    masks[:, :, :9] = 1
    noise = torch.randn(1, 16, 12, 4, 4, generator=gen)
    return torch.cat(list(sample_chunks(model, config, y, masks, noise, progress=False)), dim=2)


@pytest.mark.parametrize("k", [1, 2])
def test_block_offload_is_bit_identical_and_bounded_by_the_plan(k):
    config = four_layer_config()
    model = MagiDiT(config.model_config)
    model.load_state_dict(random_dit_state(config.model_config))
    reference = run_chunks(model, config)
    everything = resident_bytes(model)

    streamer = LayerStreamer(model.videodit_blocks.layers, torch.device("cpu"), blocks_on_device=k)
    counter = ResidencyCounter(model, model.videodit_blocks.layers)
    assert resident_bytes(model) < everything  # parked: the layers' tensors are placeholders now
    out = run_chunks(model, config)
    counter.remove()
    assert torch.equal(out, reference)
    plan = plan_memory(config, RunShape(32, 32, 48, 2), dtype=torch.float32, offload="blocks", blocks_on_device=k)
    assert counter.samples > 0
    assert counter.peak_bytes == plan.dit_resident  # exactly the planned k layers plus the rest of the DiT
    assert plan.dit_resident < plan.dit_total
    # Between calls (while T5 or the VAE runs) the layers prefetched for the next call stay: 0 .. k-2.
    weights = dit_weights(config, torch.float32)
    assert resident_bytes(model) == weights.other_bytes + sum(weights.layer_bytes[: k - 1])
    streamer.remove()
    assert resident_bytes(model) == everything
    assert torch.equal(run_chunks(model, config), reference)


def test_kv_offload_keeps_rows_on_the_host_and_changes_nothing():
    config = four_layer_config(distill=True)
    model = MagiDiT(config.model_config, distill=True)
    model.load_state_dict(random_dit_state(config.model_config, distill=True))
    reference = run_chunks(model, config)
    offloaded = config.replace(kv_offload=True)
    from magi1.sampling import sampler

    made = []
    original = sampler._new_cache

    def spy(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    sampler._new_cache = spy
    try:
        out = run_chunks(model, offloaded)
    finally:
        sampler._new_cache = original
    assert torch.equal(out, reference)
    assert made and made[0].offload_device == torch.device("cpu")


@pytest.fixture(scope="module")
def no_offload_frames(tiny_model):
    """The reference: a freshly loaded pipeline, nothing offloaded, as the README's Python example runs."""
    pipe = MagiPipeline.from_pretrained(str(tiny_model), device="cpu")
    return pipe(prompt="a red ball", num_frames=48, seed=3, output_type="np").frames


def test_loaded_weights_own_their_storage(tiny_model):
    # Views into the mmap'd safetensors file are 8-byte aligned; the CPU GEMMs round differently for them
    # than for the 64-byte aligned copies offload makes, so loading re-homes them (runtime.own_host_storage).
    pipe = MagiPipeline.from_pretrained(str(tiny_model), device="cpu")
    for module in (pipe.dit, pipe.vae):
        tensors = list(module.parameters()) + list(module.buffers())
        assert all(t.untyped_storage().resizable() and t.data_ptr() % 64 == 0 for t in tensors)


@pytest.mark.parametrize("mode", ["model", "blocks"])
def test_pipeline_offload_modes_give_the_same_video(tiny_model, no_offload_frames, mode):
    # A new pipeline per mode, loaded exactly as the no-offload one: nothing is copied by hand first.
    pipe = MagiPipeline.from_pretrained(str(tiny_model), device="cpu")
    kwargs = dict(prompt="a red ball", num_frames=48, seed=3, output_type="np")
    if mode == "model":
        pipe.enable_model_cpu_offload()
        assert resident_bytes(pipe.dit.videodit_blocks) == 0
    else:
        pipe.enable_block_offload(blocks_on_device=1)
    assert resident_bytes(pipe.vae) == 0  # the VAE waits in host memory until it decodes

    # What is on the compute side while each component runs (hooks registered after the offload's own).
    seen = {"dit": [], "vae": []}
    layers = pipe.dit.videodit_blocks
    pipe.dit.register_forward_pre_hook(lambda *_: seen["dit"].append(resident_bytes(pipe.vae)))
    pipe.vae.decoder.register_forward_pre_hook(lambda *_: seen["vae"].append(
        (resident_bytes(pipe.vae), resident_bytes(layers))))
    out = pipe(**kwargs).frames
    assert np.array_equal(out, no_offload_frames)
    assert seen["dit"] and set(seen["dit"]) == {0}  # the VAE is parked whenever the DiT runs
    vae_bytes = sum(p.numel() * p.element_size() for p in pipe.vae.parameters())
    assert seen["vae"] and all(vae == vae_bytes for vae, _ in seen["vae"])
    if mode == "model":  # the DiT's layers are parked whenever the VAE decodes
        assert all(dit == 0 for _, dit in seen["vae"])
    else:  # after the run: k=1, so nothing was prefetched for the next call and every layer is parked
        assert resident_bytes(pipe.dit.videodit_blocks.layers[-1]) == 0
    pipe.enable_offload("none")
    assert resident_bytes(pipe.vae) == vae_bytes
    assert np.array_equal(pipe(**kwargs).frames, no_offload_frames)


def generate_cli(config: str, out, *flags: str) -> str:
    """`magi1 generate` as a user runs it; returns its stderr."""
    run = subprocess.run([sys.executable, "-m", "magi1.cli", "generate", "--config_file", config,
                          "--prompt", "a red ball", "--num_frames", "48", "--seed", "5", "--device", "cpu",
                          "--output_path", str(out), "--quiet", *flags],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stderr


def test_cli_block_offload_writes_the_same_video(tiny_model, tmp_path):
    reference, out = tmp_path / "none.mp4", tmp_path / "blocks.mp4"
    generate_cli(str(tiny_model), reference, "--offload", "none")
    err = generate_cli(str(tiny_model), out, "--offload", "blocks", "--blocks_on_device", "1")
    assert "memory plan: offload blocks (k=1)" in err
    a, b = (load_video(path, 32, 32, 24, max_frames=None) for path in (reference, out))
    assert len(a) == len(b) == 48 and np.array_equal(a, b)


def test_gpu_memory_benchmark_runs_its_tiny_configuration():
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_memory.py"
    run = subprocess.run([sys.executable, str(script), "--tiny", "--device", "cpu"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith(("none", "blocks"))]
    assert len(rows) == 3 and all(row[-1] == "yes" for row in rows)  # every mode: the same chunks


def test_generate_offload_auto_refuses_up_front_when_nothing_fits(tiny_model, tmp_path, monkeypatch, capsys):
    import magi1.runtime
    from magi1.cli import main

    monkeypatch.setattr(magi1.runtime, "free_memory_bytes", lambda device: 64 * 1024)  # a 64 KiB "GPU"
    out = tmp_path / "never.mp4"
    code = main(["generate", "--config_file", str(tiny_model), "--num_frames", "48", "--device", "cpu",
                 "--offload", "auto", "--output_path", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "does not fit" in err and "64.0 KiB free on the device" in err, err
    assert not out.exists()


@pytest.mark.parametrize("offload", ["none", "model"])
def test_cli_refuses_blocks_on_device_that_would_do_nothing(tiny_model, tmp_path, offload):
    out = tmp_path / "never.mp4"
    run = subprocess.run([sys.executable, "-m", "magi1.cli", "generate", "--config_file", str(tiny_model),
                          "--prompt", "a red ball", "--num_frames", "24", "--device", "cpu", "--output_path",
                          str(out), "--offload", offload, "--blocks_on_device", "3"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"magi1 generate: error: blocks_on_device 3 only applies to block offload (offload blocks, or auto when "
        f"it picks blocks), and offload is {offload}: drop it or offload blocks"]
    assert not out.exists()


def test_from_pretrained_refuses_blocks_on_device_without_block_offload(tiny_model):
    from magi1.errors import InputError

    with pytest.raises(InputError, match="blocks_on_device 3 only applies to block offload"):
        MagiPipeline.from_pretrained(str(tiny_model), offload="none", blocks_on_device=3)


def test_enable_block_offload_refuses_a_bad_count_before_changing_anything(tiny_model):
    from magi1.errors import InputError

    pipe = MagiPipeline.from_pretrained(str(tiny_model), device="cpu")
    pipe.enable_block_offload(blocks_on_device=1)
    for bad in (True, "2", 2.5, 0):
        with pytest.raises(InputError, match="blocks_on_device must be a whole number >= 1"):
            pipe.enable_block_offload(blocks_on_device=bad)
        assert pipe.offload_mode == "blocks" and pipe.blocks_on_device == 1  # the working offload stays
