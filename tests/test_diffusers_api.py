"""The diffusers-style surface of MagiPipeline: .to(), save_pretrained, export_to_video, latent previews."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from magi1.errors import InputError
from magi1.io.video import load_video, probe_video


def test_save_pretrained_writes_the_official_layout_and_loads_back(tiny_pipeline, tmp_path):
    from magi1 import MagiPipeline

    root = tiny_pipeline.save_pretrained(tmp_path / "saved")
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert {"config.json", "ckpt/magi/model/inference_weight/model.safetensors", "ckpt/vae/config.json",
            "ckpt/vae/diffusion_pytorch_model.safetensors", "ckpt/t5/t5-v1_1-xxl/config.json"} <= files
    r = json.loads((root / "config.json").read_text())["runtime_config"]
    assert (r["load"], r["vae_pretrained"], r["t5_pretrained"]) == ("./ckpt/magi/model", "./ckpt/vae", "./ckpt/t5")
    again = MagiPipeline.from_pretrained(str(root), device="cpu")
    ours, theirs = tiny_pipeline.dit.state_dict(), again.dit.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    a = tiny_pipeline("a red ball", num_frames=24, seed=2, output_type="latent").frames
    b = again("a red ball", num_frames=24, seed=2, output_type="latent").frames
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_to_changes_dtype_and_keeps_the_float32_islands(tiny_model):
    from magi1 import MagiPipeline

    pipe = MagiPipeline.from_pretrained(str(tiny_model), torch_dtype=torch.float32)
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    pipe.to(torch.bfloat16)
    assert pipe.dit.compute_dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    assert pipe.dit.t_embedder.mlp[0].weight.dtype == torch.float32  # an official fp32 island
    out = pipe("a red ball", num_frames=24, output_type="latent").frames
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="device_map"):
        MagiPipeline.from_pretrained(str(tiny_model), device_map="balanced")


def test_diffusers_placement_spellings_to_0_and_sequential_offload(tiny_model):
    from magi1 import MagiPipeline

    pipe = MagiPipeline.from_pretrained(str(tiny_model), torch_dtype=torch.float32)
    assert pipe.dtype == torch.float32
    if not torch.cuda.is_available():  # torch's .to(0) means GPU 0: one sentence, not torch's RuntimeError
        with pytest.raises(InputError, match="'cuda:0' was asked for but torch sees no CUDA device"):
            pipe.to(0)
    before = pipe("a red ball", num_frames=24, seed=3, output_type="latent").latents
    assert pipe.enable_sequential_cpu_offload() is pipe and pipe.blocks_on_device == 1  # was an AttributeError
    assert torch.equal(pipe("a red ball", num_frames=24, seed=3, output_type="latent").latents, before)


def test_export_to_video_takes_every_frame_form(tmp_path):
    from PIL import Image

    from magi1.utils import export_to_video

    video = np.zeros((8, 32, 48, 3), np.uint8)
    video[:, :, :24] = 255
    for form in (video, video / 255.0, torch.from_numpy(video).permute(0, 3, 1, 2) / 255.0,
                 [Image.fromarray(f) for f in video]):
        path = export_to_video(form, str(tmp_path / "out.mp4"), fps=8)
        assert probe_video(path)[:1] == (8,)
        frames = load_video(path, 32, 48, 8)
        assert frames[:, :, :20].mean() > 240 and frames[:, :, 28:].mean() < 15
    with pytest.raises(ValueError, match="frames\\[0\\]"):
        export_to_video(video[None], str(tmp_path / "batch.mp4"))


def test_preview_map_is_recovered_by_the_fit_and_cached_per_vae(tiny_pipeline, tmp_path, monkeypatch):
    from magi1.preview import fit_preview_map, preview_for

    # A decoder that is exactly linear per cell: the fit must find its map.
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3, 16, generator=gen) * 0.05, torch.tensor([0.5, 0.4, 0.6])
    pairs = []
    for _ in range(3):
        z = torch.randn(1, 16, 2, 4, 4, generator=gen)
        cells = (torch.einsum("oc,cthw->thwo", weight, z[0]) + bias).clamp(0, 1)
        frames = (cells * 255).round().to(torch.uint8)
        frames = frames.repeat_interleave(4, 0).repeat_interleave(8, 1).repeat_interleave(8, 2).numpy()
        pairs.append((z, frames))
    fitted = fit_preview_map(pairs)
    assert (fitted.weight - weight).abs().max() < 0.01 and (fitted.bias - bias).abs().max() < 0.01
    error = np.abs(fitted(pairs[0][0])[0].astype(int) - pairs[0][1][::4, ::8, ::8].astype(int))
    assert error.mean() < 2 and error.max() <= 8  # out of 255; the ridge term shrinks weights a little

    # The pipeline's map: fitted once for these VAE weights, then read from the cache.
    monkeypatch.setenv("MAGI1_CACHE", str(tmp_path / "cache"))
    folder = tiny_pipeline.config.resolve_path(tiny_pipeline.config.runtime_config.vae_pretrained)
    first = preview_for(tiny_pipeline.vae, folder)
    assert list((tmp_path / "cache" / "previews").glob("*.json"))
    monkeypatch.setattr("magi1.preview.fit_latent_preview", lambda *a, **k: pytest.fail("refitted"))
    assert torch.equal(preview_for(tiny_pipeline.vae, folder).weight, first.weight)
    latents = torch.randn(2, 16, 3, 4, 4)
    assert tiny_pipeline.latents_to_preview(latents, scale=8).shape == (2, 3, 32, 32, 3)
    for bad, message in (((latents, 0), "scale must be"), ((latents, 2.5), "scale must be"),
                         ((latents[:, :3], 1), "latents must be"), ((latents[0].numpy(), 1), "latents must be"),
                         ((latents * float("nan"), 1), "latents holds 1536 NaN")):
        with pytest.raises(InputError, match=message):  # was a silent scale 1, a repeat_interleave or einsum error
            tiny_pipeline.latents_to_preview(*bad)


def test_dir_of_the_package_lists_its_lazy_names():
    import magi1

    assert {"MagiPipeline", "MagiPipelineOutput", "export_to_video"} <= set(dir(magi1))  # was none: tab completion


def test_the_output_indexes_as_a_diffusers_output_does(tiny_pipeline):
    output = tiny_pipeline("a red ball", num_frames=24, seed=1, progress=False)
    assert output[0] is output.frames and output["latents"] is output.latents  # was "not subscriptable"
    frames, latents = output.to_tuple()
    assert frames is output.frames and latents is output.latents
    with pytest.raises(KeyError):
        output["images"]
