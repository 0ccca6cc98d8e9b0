"""pipe(...) as a diffusers user calls it: the README's snippet, batches, callbacks, guidance, negative prompts."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from magi1.errors import InputError
from magi1.io.video import load_video, probe_video

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    """The first python block under the README's 'Python, diffusers style' heading, as it stands."""
    text = README.read_text()
    section = text[text.index("## Python, diffusers style"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_runs_as_written(tmp_path):
    (tmp_path / "snippet.py").write_text(readme_snippet())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(README.parent / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    videos = [load_video(tmp_path / f"video_{i}.mp4", 64, 64, 24) for i in range(2)]
    assert [probe_video(tmp_path / f"video_{i}.mp4").num_frames for i in range(2)] == [48, 48]
    assert not np.array_equal(videos[0], videos[1])  # two prompts, two generators: two videos
    from PIL import Image

    assert Image.open(tmp_path / "preview.png").size == (64, 64)  # the callback's preview, 8 x the latent


def test_a_batch_of_three_prompts_equals_the_three_single_runs(tiny_pipeline):
    prompts = ["a red ball bounces on the floor", "a blue square falls and slides to the left",
               "two balls roll apart on the ground"]
    batch = tiny_pipeline(prompts, num_frames=48, generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)],
                          progress=False)
    assert batch.frames.shape == (3, 48, 32, 32, 3) and batch.latents.shape == (3, 16, 12, 4, 4)
    for index, prompt in enumerate(prompts):
        single = tiny_pipeline(prompt, num_frames=48, generator=torch.Generator().manual_seed(index + 1),
                               progress=False)
        # fp32: equal up to the rounding of GEMMs of another shape; decoded bytes within one level
        torch.testing.assert_close(batch.latents[index : index + 1], single.latents, atol=1e-5, rtol=1e-5)
        assert np.abs(batch.frames[index] - single.frames[0]).max() <= 1.5 / 255
    assert not torch.allclose(batch.latents[0], batch.latents[1])
    # num_videos_per_prompt and seeds: video b of seed s is the single run of seed s + b
    two = tiny_pipeline("a red ball bounces on the floor", num_videos_per_prompt=2, seed=7, num_frames=24,
                        output_type="latent", progress=False).frames
    second = tiny_pipeline("a red ball bounces on the floor", seed=8, num_frames=24, output_type="latent",
                           progress=False).frames
    assert two.shape[0] == 2
    torch.testing.assert_close(two[1:], second, atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="one per video"):
        tiny_pipeline(prompts, num_frames=24, generator=[torch.Generator()])


def test_an_empty_prompt_in_a_list_is_the_empty_caption_as_alone(tiny_pipeline):
    """pipe("") runs on the empty caption; in a list it must too, not be refused."""
    batch = tiny_pipeline(["a red ball bounces on the floor", ""], num_frames=24, output_type="latent",
                          generator=[torch.Generator().manual_seed(s) for s in (1, 2)], progress=False).frames
    alone = tiny_pipeline("", num_frames=24, output_type="latent", generator=torch.Generator().manual_seed(2),
                          progress=False).frames
    torch.testing.assert_close(batch[1:], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="must be text, got int 3"):
        tiny_pipeline(["a red ball", 3], num_frames=24, progress=False)


def test_callback_on_step_end_edits_latents_and_interrupts(tiny_pipeline):
    from magi1.models.vae_helpers import decode_chunk

    common = dict(num_frames=72, seed=3, progress=False)
    plain = tiny_pipeline("a red ball", **common)
    steps = []

    def zero_chunk_one(pipe, step, t, callback_kwargs):
        steps.append((step, t.tolist()))
        callback_kwargs["latents"][:, :, 6:12] = 0  # latent frames of chunk 1
        return callback_kwargs

    edited = tiny_pipeline("a red ball", callback_on_step_end=zero_chunk_one, **common)
    assert [s for s, _ in steps] == list(range(len(steps))) and all(0 <= x <= 1 for _, t in steps for x in t)
    assert torch.equal(edited.latents[:, :, :6], plain.latents[:, :, :6])  # chunk 0 sees nothing later
    assert torch.equal(edited.latents[:, :, 6:12], torch.zeros_like(edited.latents[:, :, 6:12]))
    zeros = decode_chunk(tiny_pipeline.vae, torch.zeros(1, 16, 6, 4, 4), out_device="cpu").numpy()
    assert np.array_equal((edited.frames[0, 24:48] * 255).round().astype(np.uint8), zeros)  # visible in the video
    assert not np.array_equal(edited.frames[0, 48:], plain.frames[0, 48:])  # later chunks saw the edit

    def stop_early(pipe, step, t, callback_kwargs):
        if step == len(steps) - 3:  # a few steps before the end: the last chunk is not finished yet
            pipe._interrupt = True
        return callback_kwargs

    stopped = tiny_pipeline("a red ball", callback_on_step_end=stop_early, **common)
    assert 0 < stopped.frames.shape[1] < 72 and stopped.frames.shape[1] % 24 == 0
    np.testing.assert_array_equal(stopped.frames[0], plain.frames[0, : stopped.frames.shape[1]])
    assert tiny_pipeline("a red ball", num_frames=24, progress=False).frames.shape[1] == 24  # reset next call
    with pytest.raises(InputError, match="tensor_inputs"):
        tiny_pipeline("a", callback_on_step_end=stop_early, callback_on_step_end_tensor_inputs=["noise"])


def test_a_run_interrupted_before_its_first_chunk_is_empty_but_of_its_size(tiny_pipeline, tmp_path):
    from magi1.utils import export_to_video

    def stop_at_once(pipe, step, t, callback_kwargs):
        pipe._interrupt = True
        return callback_kwargs

    result = tiny_pipeline(["a red ball", "a blue square"], num_frames=48, seed=1, progress=False,
                           callback_on_step_end=stop_at_once)
    assert result.frames.shape == (2, 0, 32, 32, 3) and result.latents.shape == (2, 16, 0, 4, 4)  # were (2, 0, 0, 0, 3)
    # writing it is one sentence, not an errno from libx264 or a missing temporary file
    with pytest.raises(InputError, match="the video has no frames"):
        export_to_video(result.frames[0], tmp_path / "nothing.mp4")
    assert list(tmp_path.iterdir()) == []


def test_guidance_scale_and_negative_prompt(tiny_pipeline, monkeypatch):
    import magi1.sampling.sampler as sampler

    common = dict(num_frames=24, seed=1, output_type="latent", progress=False)
    default = tiny_pipeline("a red ball", **common).frames
    # the tiny config's text scale is 7.5: asking for it changes nothing, another scale changes the video
    assert torch.equal(tiny_pipeline("a red ball", guidance_scale=7.5, **common).frames, default)
    assert not torch.equal(tiny_pipeline("a red ball", guidance_scale=2.0, **common).frames, default)
    assert not torch.equal(tiny_pipeline("a red ball", prev_chunk_guidance_scale=3.0, **common).frames, default)

    seen = {}
    real = sampler.sample_chunks

    def spy(model, config, y, masks, *args, **kwargs):
        seen.update(y=y, masks=masks, clean=kwargs.get("clean_rows"), text=config.runtime_config.text_scales)
        return real(model, config, y, masks, *args, **kwargs)

    monkeypatch.setattr(sampler, "sample_chunks", spy)
    negative = tiny_pipeline("a red ball", negative_prompt="a blue square", **common).frames
    blue, blue_mask = tiny_pipeline.text_encoder.encode("a blue square")
    assert torch.equal(seen["y"][1, 0, 0], blue[0, 0]) and torch.equal(seen["masks"][1, 0, 0], blue_mask[0].float())
    null = tiny_pipeline.dit.y_embedder.null_caption_embedding.float()
    assert torch.equal(seen["clean"][0][0], null)  # finished chunks are cached as official: null caption
    assert not torch.equal(negative, default)
    tiny_pipeline("a red ball", guidance_scale=2.0, **common)
    assert seen["text"] == [2.0, 2.0, 2.0, 0.0, 0.0]

    distilled = copy.copy(tiny_pipeline)
    distilled.config = tiny_pipeline.config.replace(cfg_number=1, distill=True)
    with pytest.raises(InputError, match="guidance-distilled"):
        distilled("a red ball", guidance_scale=2.0, **common)
    with pytest.raises(InputError, match="negative prompt"):
        distilled("a red ball", negative_prompt="blur", **common)


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": 123}, "prompt must be text or a list of texts, got int"),
    ({"prompt": "a ball", "negative_prompt": 3}, "negative_prompt must be text or a list of texts"),
    ({"prompt": "a ball", "generator": 5}, "generator must be a torch.Generator"),
    ({"prompt": ["a", "b"], "generator": [torch.Generator(), 7]}, "got int"),
])
def test_wrong_argument_types_are_one_plain_error(tiny_pipeline, kwargs, message):
    # A diffusers user's slip (a seed where a generator goes, a number as the prompt) is an InputError that
    # says what was expected, not a TypeError from deep inside the tokenizer or torch.randn.
    with pytest.raises(InputError, match=re.escape(message)):
        tiny_pipeline(num_frames=24, progress=False, **kwargs)


def test_a_callback_returning_the_wrong_thing_is_one_input_error(tiny_pipeline):
    from magi1.errors import InputError

    for wrong, message in ((lambda pipe, step, t, kw: kw["latents"], "must return callback_kwargs"),
                           (lambda pipe, step, t, kw: {"latents": kw["latents"].numpy()}, "must be a torch tensor")):
        with pytest.raises(InputError, match=message):
            tiny_pipeline("a ball", num_frames=24, num_inference_steps=4, callback_on_step_end=wrong,
                          output_type="latent")
