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


@pytest.mark.parametrize("mode", ["model", "blocks"])
def test_pipeline_offload_modes_give_the_same_video(tiny_model, mode):
    pipe = MagiPipeline.from_pretrained(str(tiny_model), device="cpu")
    # Freshly loaded weights are views into the safetensors file; CPU GEMM kernels may pick another path
    # for their alignment, so the reference runs on weights copied once, as offloading copies them.
    for param in pipe.dit.parameters():
        param.data = param.data.clone()
    kwargs = dict(prompt="a red ball", num_frames=48, seed=3, output_type="np")
    reference = pipe(**kwargs).frames
    if mode == "model":
        pipe.enable_model_cpu_offload()
        assert resident_bytes(pipe.dit.videodit_blocks) == 0
    else:
        pipe.enable_block_offload(blocks_on_device=1)
    out = pipe(**kwargs).frames
    assert np.array_equal(out, reference)
    if mode == "blocks":  # after the run: one layer was prefetched for the next call, the rest parked
        assert resident_bytes(pipe.dit.videodit_blocks.layers[-1]) == 0
    pipe.enable_offload("none")
    assert np.array_equal(pipe(**kwargs).frames, reference)


def test_cli_block_offload_writes_the_same_video(tiny_model, tmp_path):
    reference = tmp_path / "none.mp4"
    pipe = MagiPipeline.from_pretrained(str(tiny_model), device="cpu")
    pipe.generate_to_file(reference, prompt="a red ball", num_frames=48, seed=5, progress=False)
    out = tmp_path / "blocks.mp4"
    run = subprocess.run([sys.executable, "-m", "magi1.cli", "generate", "--config_file", str(tiny_model),
                          "--prompt", "a red ball", "--num_frames", "48", "--seed", "5", "--device", "cpu",
                          "--offload", "blocks", "--blocks_on_device", "1", "--output_path", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "memory plan: offload blocks (k=1)" in run.stderr
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
    assert code == 2 and "does not fit" in err and "0.1 MiB free on the device" in err, err
    assert not out.exists()
