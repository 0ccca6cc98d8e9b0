"""The Python API as a user probing it met it (docs/python-api.md, the embedded demo model): every argument
either does what the docs say or is one InputError in the argument's words, before any heavy work.

stream()'s output_type, one-element lists in stream(), numpy tensors, NaN inputs, export_to_video's frame
forms and ranges, the announced whole-chunk frame count, video arrays cut like files, seed with generator,
and the LoRA / save_pretrained path mistakes.
"""

from __future__ import annotations

import copy
import logging
import re

import numpy as np
import pytest
import torch

from magi1 import MagiPipeline
from magi1.errors import InputError
from magi1.preflight import PREFIX_FRAMES, check_run

PROMPT = "a red ball bounces on the floor"


@pytest.fixture(scope="module")
def demo():
    """The embedded base demo model (three guidance passes: negative prompts apply)."""
    return MagiPipeline.from_pretrained("demo", device="cpu")


@pytest.fixture(scope="module")
def distilled():
    """The embedded distilled demo model: 8 steps, one pass, the fast one."""
    return MagiPipeline.from_pretrained("demo_distill", device="cpu")


def _latents(pipe, **kwargs):
    prompt = kwargs.pop("prompt", PROMPT)
    return pipe(prompt, num_frames=24, output_type="latent", progress=False, **kwargs).latents


def _one_chunk(pipe, **kwargs):
    return next(pipe.stream(PROMPT, num_frames=24, seed=1, **kwargs))


def _refused_before_any_step(call, message: str) -> None:
    steps = []
    with pytest.raises(InputError, match=re.escape(message)):
        call(steps.append)
    assert steps == []  # refused at the door, not after the sampler ran


# ------------------------------------------------------------------ 1. stream() honours output_type
def test_stream_gives_each_chunk_in_the_output_type_asked_for(distilled):
    as_np = _one_chunk(distilled).frames
    assert as_np.dtype == np.uint8 and as_np.shape == (24, 64, 64, 3)  # the default stays the uint8 bytes
    as_pt = _one_chunk(distilled, output_type="pt").frames
    assert as_pt.dtype == torch.float32 and as_pt.shape == (24, 3, 64, 64)
    assert np.array_equal((as_pt * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), as_np)
    as_pil = _one_chunk(distilled, output_type="pil").frames
    assert len(as_pil) == 24 and as_pil[0].mode == "RGB" and np.array_equal(np.asarray(as_pil[5]), as_np[5])
    assert _one_chunk(distilled, output_type="latent").frames is None
    with pytest.raises(InputError, match="output_type must be one of"):
        _one_chunk(distilled, output_type="mp4")


# ------------------------------------------------------------------ 2. one-element lists in stream()
def test_stream_takes_a_list_of_one_negative_prompt_or_generator(demo):
    def latents(**kwargs):
        return next(demo.stream(PROMPT, num_frames=24, num_inference_steps=4, output_type="latent", **kwargs)).latents

    assert torch.equal(latents(negative_prompt=["a blue square"], seed=3),
                       latents(negative_prompt="a blue square", seed=3))  # was "unhashable type: 'list'"
    assert torch.equal(latents(generator=[torch.Generator().manual_seed(4)]),
                       latents(generator=torch.Generator().manual_seed(4)))
    for kwargs, message in ((dict(negative_prompt=["a", "b"]), "give one negative prompt, or one per prompt (1)"),
                            (dict(generator=[[torch.Generator()]]), "got list in the list"),
                            (dict(generator=[torch.Generator()] * 2), "a list of generators needs one per video (1), got 2")):
        with pytest.raises(InputError, match=re.escape(message)):
            latents(**kwargs)


# ------------------------------------------------------------------ 3. numpy wherever a tensor goes
def test_numpy_arrays_are_taken_wherever_a_tensor_is(distilled):
    noise = torch.randn(1, 16, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_latents(distilled, latents=noise.numpy()), _latents(distilled, latents=noise))
    embeds, mask = distilled.text_encoder.encode(PROMPT)
    text = dict(prompt_embeds=embeds, prompt_attention_mask=mask, seed=2, num_frames=24, output_type="latent")
    from_torch = distilled(**text, progress=False).latents
    from_numpy = distilled(**dict(text, prompt_embeds=embeds.numpy(), prompt_attention_mask=mask.numpy()),
                           progress=False).latents
    assert torch.equal(from_numpy, from_torch)
    image = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_latents(distilled, prefix_latents=image.numpy(), seed=2),
                       _latents(distilled, prefix_latents=image, seed=2))
    assert np.array_equal(distilled.latents_to_preview(noise.numpy(), scale=2),
                          distilled.latents_to_preview(noise, scale=2))
    with pytest.raises(InputError, match="latents must be a torch tensor or a numpy array, got list"):
        _latents(distilled, latents=noise.tolist())


# ------------------------------------------------------------------ 4. non-finite values are refused
def test_nan_inputs_are_refused_before_any_step(distilled):
    noise = torch.randn(1, 16, 6, 8, 8)
    noise[0, 3, 2, 1, 1] = float("nan")
    _refused_before_any_step(lambda seen: list(distilled.stream(PROMPT, num_frames=24, latents=noise,
                                                                callback=seen)),
                             "latents holds 1 NaN or infinite value")
    embeds, mask = distilled.text_encoder.encode(PROMPT)
    embeds = embeds.clone()
    embeds[..., 0] = float("inf")
    _refused_before_any_step(lambda seen: list(distilled.stream(prompt_embeds=embeds, prompt_attention_mask=mask,
                                                                num_frames=24, callback=seen)),
                             "prompt_embeds holds")


@pytest.fixture(scope="module")
def demo_lora(distilled, tmp_path_factory):
    """A LoRA folder made for the demo DiT, as `magi1 train lora` writes one."""
    from magi1.lora.adapters import LoraSettings, add_lora, save_lora

    donor = copy.deepcopy(distilled.dit)
    add_lora(donor, LoraSettings(rank=2), "default")
    return save_lora(donor, tmp_path_factory.mktemp("lora") / "demo_lora", model_name="demo")


def test_lora_scales_must_be_finite(demo_lora):
    pipe = MagiPipeline.from_pretrained("demo_distill", device="cpu")  # its own: LoRAs change the model
    with pytest.raises(InputError, match="the LoRA scale must be a finite number, got nan"):
        pipe.load_lora(demo_lora, scale=float("nan"))
    name = pipe.load_lora(demo_lora, scale=0.5)
    for bad in (float("nan"), float("inf"), "1"):
        with pytest.raises(InputError, match="must be a finite number"):  # NaN made an all-black video
            pipe.set_lora_scale(bad)
    with pytest.raises(InputError, match="lora_scale must be a finite number"):
        pipe.fuse_lora(lora_scale=float("nan"))
    assert pipe.lora_scales == {name: 0.5}


# ------------------------------------------------------------------ 5. export_to_video's frame forms and ranges
def test_export_to_video_takes_any_pil_mode_and_refuses_floats_outside_0_1(tmp_path):
    from PIL import Image

    from magi1.io.video import load_video
    from magi1.utils import export_to_video

    grey = np.full((4, 32, 32), 200, np.uint8)
    for mode in ("L", "RGBA", "P"):  # were refused with a shape error
        frames = [Image.fromarray(g).convert(mode) for g in grey]
        written = load_video(export_to_video(frames, str(tmp_path / f"{mode}.mp4"), fps=8), 32, 32, 8)
        assert written.shape == (4, 32, 32, 3) and abs(float(written.mean()) - 200) < 6
    video = np.full((4, 32, 32, 3), 0.5, np.float32)
    export_to_video(video + 1e-4, str(tmp_path / "rounding.mp4"), fps=8)  # a hair above 1 rounds, no refusal
    cases = ((video * 255, "got values from 127.5 to 127.5; divide [0, 255] frames by 255"),  # came out white
             (video * 2 - 1.5, "got values from -0.5 to -0.5"),
             (np.where(np.arange(32)[:, None] < 16, -1.0, 1.0) * np.ones((4, 32, 32, 3)), "(x + 1) / 2"),
             (np.full_like(video, np.nan), "NaN or infinite"))                   # came out black
    for frames, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            export_to_video(frames, str(tmp_path / "never.mp4"), fps=8)
    assert not (tmp_path / "never.mp4").exists()


# ------------------------------------------------------------------ 6. whole chunks: announced, not changed
def _frame_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "num_frames" in r.getMessage() and r.levelno == logging.WARNING]


@pytest.mark.parametrize("num_frames, inputs, made, why", [
    (24, {}, 24, None),                                             # exact: not a word
    (30, {}, 48, "whole chunks of 24 frames"),
    (4, {}, 24, "ask for a multiple of 24"),
    (24, {"image": "grey"}, 48, "the image counts as the first latent frame"),
    (48, {"video": "grey"}, 61, "prefix video's 8 latent frames come first"),
])
def test_frame_rounding_is_announced_once_with_the_frames_made(distilled, caplog, num_frames, inputs, made, why):
    pictures = {"image": np.full((64, 64, 3), 90, np.uint8), "video": np.full((40, 64, 64, 3), 90, np.uint8)}
    inputs = {key: pictures[key] for key in inputs}
    caplog.set_level(logging.WARNING, logger="magi1")
    frames = distilled(PROMPT, num_frames=num_frames, num_inference_steps=4, progress=False, **inputs).frames
    assert frames.shape[1] == made  # the arithmetic is the official one, unchanged
    messages = _frame_warnings(caplog)
    if why is None:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith(f"magi1: num_frames {num_frames} gives {made} frames")
        assert why in messages[0]


def test_magi1_generate_announces_the_rounding_too(tmp_path, caplog):
    from magi1.cli import main

    caplog.set_level(logging.WARNING, logger="magi1")
    out = tmp_path / "ball.mp4"
    assert main(["generate", "--config_file", "demo_distill", "--prompt", PROMPT, "--num_frames", "30",
                 "--steps", "4", "--device", "cpu", "--output_path", str(out), "--quiet"]) == 0
    assert _frame_warnings(caplog) == ["magi1: num_frames 30 gives 48 frames: a video is made of whole chunks of 24 "
                                       "frames (as the official code does), 2 here; ask for a multiple of 24 to get "
                                       "exactly that many"]


# ------------------------------------------------------------------ 7. a video array is cut like a file
def test_a_video_array_gives_its_first_or_last_32_frames_as_a_file_does(distilled, demo):
    clip = np.zeros((80, 64, 64, 3), np.uint8)
    clip[:40], clip[40:] = 30, 220  # dark, then bright
    config = demo.config
    start = check_run(config, prompt=PROMPT, video=clip).video
    end = check_run(config, prompt=PROMPT, video=clip, prefix_from="end").video
    assert len(start) == len(end) == PREFIX_FRAMES and start.max() == 30 and end.min() == 220
    assert len(check_run(config, prompt=PROMPT, video=clip[:8]).video) == 8  # a shorter clip is kept whole

    def continuation(video, **kwargs):
        return _latents(distilled, video=video, seed=1, num_inference_steps=4, **kwargs)

    assert torch.equal(continuation(clip), continuation(clip[:PREFIX_FRAMES]))  # was all 80 frames
    assert torch.equal(continuation(clip, prefix_from="end"), continuation(clip[-PREFIX_FRAMES:]))
    with pytest.raises(InputError, match="prefix_from must be start or end"):
        continuation(clip, prefix_from="middle")


# ------------------------------------------------------------------ 8. seed or generator
def test_seed_and_generator_together_are_refused(distilled):
    message = "give seed or generator, not both"
    _refused_before_any_step(lambda seen: list(distilled.stream(PROMPT, num_frames=24, seed=1, callback=seen,
                                                                generator=torch.Generator().manual_seed(1))),
                             message)
    with pytest.raises(InputError, match=message):
        _latents(distilled, seed=1, generator=[torch.Generator()])


# ------------------------------------------------------------------ 9. paths that are files
def test_load_lora_of_a_file_and_save_pretrained_onto_a_file_say_what_is_wrong(distilled, tmp_path):
    script = tmp_path / "somefile.py"
    script.write_text("print('not a LoRA')\n")
    with pytest.raises(InputError, match=re.escape(f"{script} is a file, not a LoRA: give the LoRA's folder")):
        distilled.load_lora(script)
    with pytest.raises(InputError, match="does not exist"):
        distilled.load_lora(tmp_path / "missing")
    for target in (script, script / "inside"):  # was a raw FileExistsError / NotADirectoryError
        with pytest.raises(InputError, match="is a file or lies under one"):
            distilled.save_pretrained(target)
    assert script.read_text() == "print('not a LoRA')\n"


# ------------------------------------------------------------------ 10. images and videos in diffusers' forms
def test_images_and_videos_in_every_documented_form_give_the_same_continuation(distilled):
    from PIL import Image

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    as_float = picture.astype(np.float32) / 255

    def i2v(image):
        return _latents(distilled, image=image, seed=1, num_inference_steps=4)

    reference = i2v(Image.fromarray(picture))
    for image in (picture, as_float, torch.from_numpy(as_float).permute(2, 0, 1),          # (3, H, W) float
                  torch.from_numpy(as_float).permute(2, 0, 1)[None], torch.from_numpy(picture)):  # (1,3,H,W), uint8
        assert torch.equal(i2v(image), reference)
    # a [0, 255] float image was clipped to [0, 1]: a white page, without a word
    _refused_before_any_step(lambda seen: list(distilled.stream(PROMPT, image=picture.astype(np.float32),
                                                                num_frames=24, callback=seen)),
                             "float image pixels must be in [0, 1], got values from")

    clip = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)

    def v2v(video):
        return _latents(distilled, video=video, seed=1, num_inference_steps=4)

    reference = v2v(clip)
    for video in ([Image.fromarray(frame) for frame in clip], list(clip), clip / 255.0,
                  torch.from_numpy(clip).permute(0, 3, 1, 2)):  # diffusers' list of PIL images; (T, 3, H, W)
        assert torch.equal(v2v(video), reference)
    with pytest.raises(InputError, match="float frames must be in"):
        v2v(clip.astype(np.float32))
    long_clip = rng.integers(0, 256, (PREFIX_FRAMES + 8, 64, 64, 3), dtype=np.uint8)
    frames = [Image.fromarray(frame) for frame in long_clip]
    for end in ("start", "end"):  # a list is cut like an array: the first or the last PREFIX_FRAMES
        assert torch.equal(_latents(distilled, video=frames, prefix_from=end, seed=1, num_inference_steps=4),
                           _latents(distilled, video=long_clip, prefix_from=end, seed=1, num_inference_steps=4))
    with pytest.raises(InputError, match="must all be one size, got 2 sizes"):  # was numpy's np.stack ValueError
        v2v([Image.fromarray(clip[0]), Image.fromarray(clip[1]).resize((32, 32))])


# ------------------------------------------------------------------ 11. the progress bar, diffusers' way
def test_set_progress_bar_config_passes_its_options_to_the_bar(capsys, tmp_path):
    pipe = MagiPipeline.from_pretrained("demo_distill", device="cpu")
    capsys.readouterr()
    pipe.set_progress_bar_config(desc="my video", leave=False)
    pipe(PROMPT, num_frames=24, output_type="latent")
    shown = capsys.readouterr().err
    assert "my video:" in shown and "denoising" not in shown and not shown.endswith("\n")  # leave=False clears it
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPT, num_frames=24, output_type="latent")
    pipe.generate_to_file(tmp_path / "quiet.mp4", prompt=PROMPT, num_frames=24)  # the file's bar obeys it too
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ 12. what a callback may hand back
def test_a_callback_handing_back_nan_latents_or_a_tensor_inputs_string_is_refused(distilled):
    def poison(pipe, step, t, callback_kwargs):
        return {"latents": callback_kwargs["latents"] * float("nan")}

    with pytest.raises(InputError, match="the latents callback_on_step_end returned holds .* NaN"):
        _latents(distilled, callback_on_step_end=poison)
    with pytest.raises(InputError, match=re.escape("must be a list of names, e.g. ['latents']")):
        _latents(distilled, callback_on_step_end=lambda *args: None, callback_on_step_end_tensor_inputs="latents")


# ------------------------------------------------------------------ 13. from_pretrained's own options
def test_from_pretrained_refuses_unknown_options_before_loading_and_says_its_dtype(monkeypatch, tmp_path):
    import magi1.checkpoint.loader as loader

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the options were checked")

    with monkeypatch.context() as patched:
        patched.setattr(loader, "load_dit", no_loading)
        for kwargs, message in ((dict(offload="bogus"), "offload must be one of none, model, blocks, auto"),
                                (dict(weights="fp4"), "weights must be one of auto, bf16, fp8"),  # was taken
                                (dict(blocks_on_device=0), "blocks_on_device must be a whole number >= 1")):
            with pytest.raises(InputError, match=re.escape(message)):
                MagiPipeline.from_pretrained("demo", **kwargs)
        with pytest.raises(InputError, match="must be a preset name, a folder"):
            MagiPipeline.from_pretrained(None)
        script = tmp_path / "notes.txt"
        script.write_text("not a config\n")
        for source, message in (  # were "looks like a hub repository: give variant=", "config file not found"
                ("./no_such_model", "./no_such_model does not exist; from_pretrained takes a preset name"),
                (tmp_path, f"the folder {tmp_path} has no config.json (save_pretrained writes one)"),
                (script, f"{script} is not a config JSON"), ("", "the name or path is empty")):
            with pytest.raises(InputError, match=re.escape(message)):
                MagiPipeline.from_pretrained(source)
    # docs/python-api.md: left out, the DiT keeps the checkpoint's bfloat16 and the VAE is float32 on a CPU
    default = MagiPipeline.from_pretrained("demo", device="cpu")
    assert default.dtype == torch.bfloat16 and next(default.vae.parameters()).dtype == torch.float32
    assert MagiPipeline.from_pretrained("demo", device="cpu", torch_dtype="float32").dtype == torch.float32


def test_generate_to_file_says_output_type_does_not_apply(distilled, tmp_path):
    with pytest.raises(InputError, match="output_type does not apply"):  # was stream()'s "multiple values" TypeError
        distilled.generate_to_file(tmp_path / "ball.mp4", prompt=PROMPT, output_type="np")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 14. prompt_embeds, numpy scales, stray keywords
def test_prompt_embeds_of_the_wrong_shape_and_stray_keywords_are_named(demo):
    embeds, masks = demo.encode_prompts([PROMPT])
    assert torch.equal(_latents(demo, prompt=None, prompt_embeds=embeds[0], prompt_attention_mask=masks[0], seed=1),
                       _latents(demo, seed=1))
    for bad_embeds, bad_mask, message in (
            (embeds[0][..., :32], masks[0], "prompt_embeds must end in (caption length 64, T5 channels 64)"),
            (embeds[0], masks[0][:, :7], "prompt_attention_mask must hold one row of 64")):  # were deep errors
        with pytest.raises(InputError, match=re.escape(message)):
            _latents(demo, prompt=None, prompt_embeds=bad_embeds, prompt_attention_mask=bad_mask)
    # a guidance sweep over np.linspace(..., dtype=np.float32) was refused as "not a number"
    assert torch.equal(_latents(demo, seed=1, guidance_scale=np.float32(2.0)),
                       _latents(demo, seed=1, guidance_scale=2.0))
    with pytest.raises(TypeError, match=re.escape("pipe() got an unexpected keyword argument 'eta'")):
        _latents(demo, eta=0.0)  # said stream_batch(), a method the caller never called


# ------------------------------------------------------------------ 15. an offloaded pipeline
@pytest.mark.parametrize("offload", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_an_offloaded_pipeline_saves_its_real_weights_and_refuses_what_it_cannot_do(offload, demo_lora, tmp_path):
    pipe = MagiPipeline.from_pretrained("demo_distill", device="cpu", torch_dtype=torch.float32)
    before = pipe(PROMPT, num_frames=24, seed=1, progress=False).frames
    getattr(pipe, offload)()
    pipe(PROMPT, num_frames=24, seed=1, progress=False)  # some weights parked, some in place
    saved = pipe.save_pretrained(tmp_path / "saved")  # wrote the parked layers' empty placeholders
    again = MagiPipeline.from_pretrained(saved, device="cpu", torch_dtype=torch.float32)
    assert np.array_equal(again(PROMPT, num_frames=24, seed=1, progress=False).frames, before)
    assert np.array_equal(pipe(PROMPT, num_frames=24, seed=1, progress=False).frames, before)  # still offloaded
    with pytest.raises(InputError, match=r"the pipeline is offloaded \(\w+\): call .to\(\) before"):
        pipe.to(torch.bfloat16)  # the next run failed: host copies kept float32, placeholders said bfloat16
    pipe.load_lora(demo_lora)
    with pytest.raises(InputError, match="fuse_lora rewrites the DiT's weights"):
        pipe.fuse_lora()  # was a RuntimeError about a size-0 tensor


# ------------------------------------------------------------------ 16. a prompt longer than the captions
def test_a_prompt_cut_off_at_the_caption_length_is_announced(distilled, caplog):
    with caplog.at_level(logging.WARNING, logger="magi1"):
        _latents(distilled, prompt="a red ball bounces " * 40)
    cut = [r.getMessage() for r in caplog.records if "caption tokens" in r.getMessage()]
    assert len(cut) == 1 and "fills all 64 caption tokens of this model; words past them are cut off" in cut[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="magi1"):
        _latents(distilled)
    assert not [r for r in caplog.records if "caption tokens" in r.getMessage()]  # said only when it happens


def test_from_pretrained_refuses_a_special_tokens_file_that_is_not_one_before_loading(tmp_path, monkeypatch):
    import magi1.pipeline as pipeline_module
    from magi1 import MagiPipeline
    from magi1.errors import InputError

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were read before the special tokens were checked")

    monkeypatch.setattr(pipeline_module, "check_weights_present", no_loading, raising=False)
    text = tmp_path / "tokens.npz"
    text.write_text("not a zip")
    for bad, says in ((text, "is not an .npz file"), (tmp_path / "missing.npz", "no such file")):
        with pytest.raises(InputError, match=says) as refused:
            MagiPipeline.from_pretrained("demo", special_tokens_path=str(bad))
        assert str(refused.value).startswith("special_tokens_path ")
