"""MagiPipeline end to end on a tiny random model: t2v / i2v / v2v, streaming, seeds, chunk prompts, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magi1.errors import InputError
from magi1.io.video import probe_video, write_video
from magi1.pipeline import GenerationCancelled, ResumeState, chunk_prompt_schedule, resume_state_path


def test_t2v_writes_valid_mp4_with_documented_frame_count(tiny_pipeline, tmp_path):
    # 48 frames -> 12 latent frames -> 2 chunks of 6 -> 48 frames out.
    out = tmp_path / "t2v.mp4"
    report = tiny_pipeline.generate_to_file(out, prompt="a red ball bounces", num_frames=48, progress=False)
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width) == (48, 32, 32)
    assert report.num_chunks == 2 and report.seconds_to_first_chunk is not None
    assert not resume_state_path(out).exists()  # removed once the run is complete


def test_same_seed_same_video_other_seed_other_video(tiny_pipeline):
    a = tiny_pipeline("a red ball", num_frames=24, seed=3, output_type="latent").latents
    b = tiny_pipeline("a red ball", num_frames=24, seed=3, output_type="latent").latents
    c = tiny_pipeline("a red ball", num_frames=24, seed=4, output_type="latent").latents
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_given_latents_are_the_initial_noise(tiny_pipeline):
    noise = torch.randn(1, 16, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    a = tiny_pipeline("x", num_frames=24, latents=noise, output_type="latent").latents
    b = tiny_pipeline("x", num_frames=24, seed=99, latents=noise, output_type="latent").latents
    assert torch.equal(a, b)
    with pytest.raises(InputError, match="shape"):
        tiny_pipeline("x", num_frames=24, latents=noise[:, :, :3], output_type="latent")


def test_stream_yields_each_chunk_with_frames(tiny_pipeline):
    chunks = list(tiny_pipeline.stream("a ball", num_frames=72, seed=1))
    assert [c.index for c in chunks] == [0, 1, 2]
    assert all(c.frames.shape == (24, 32, 32, 3) and c.frames.dtype == np.uint8 for c in chunks)
    assert all(c.latents.shape == (1, 16, 6, 4, 4) for c in chunks)


def test_output_types(tiny_pipeline):
    # A batch of videos, as in diffusers: frames[0] is the first video.
    pt = tiny_pipeline("a", num_frames=24, output_type="pt").frames
    assert pt.shape == (1, 24, 3, 32, 32) and 0 <= pt.min() and pt.max() <= 1
    pil = tiny_pipeline("a", num_frames=24, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 24 and pil[0][0].size == (32, 32)
    array = tiny_pipeline("a", num_frames=24, output_type="np").frames
    assert array.shape == (1, 24, 32, 32, 3) and array.dtype == np.float32
    chunk = next(tiny_pipeline.stream("a", num_frames=24))  # the stream keeps bytes, one video
    assert np.array_equal((array[0] * 255).round().astype(np.uint8), chunk.frames)
    with pytest.raises(InputError, match="output_type"):
        tiny_pipeline("a", num_frames=24, output_type="gif")


def test_i2v_has_one_more_latent_frame_and_keeps_the_image_frame(tiny_pipeline):
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = (255, 0, 0)
    # 48 frames + 1 image frame = 13 latent frames -> 3 chunks; chunk 0 includes the image frame.
    chunks = list(tiny_pipeline.stream("a red square", image=image, num_frames=48, output_type="latent"))
    assert len(chunks) == 3 and chunks[0].latents.shape[2] == 6


def test_v2v_continues_after_the_prefix(tiny_pipeline, tmp_path):
    video = np.random.default_rng(0).integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "prefix.mp4"
    write_video(path, video, fps=24)
    # 32 prefix frames -> 8 latent frames (1 whole prefix chunk + 2 frames); 48 new frames -> 12 latent.
    chunks = list(tiny_pipeline.stream("continue", video=str(path), num_frames=48, output_type="latent"))
    assert [c.latents.shape[2] for c in chunks] == [4, 6, 6]


def test_chunk_prompt_schedule():
    assert chunk_prompt_schedule("a", None, 3) == ["a", "a", "a"]
    assert chunk_prompt_schedule("a", {2: "b"}, 4) == ["a", "a", "b", "b"]
    assert chunk_prompt_schedule(None, ["x", "y"], 3) == ["x", "y", "y"]
    with pytest.raises(InputError):
        chunk_prompt_schedule(None, {1: "b"}, 3)


def test_chunk_prompts_switch_the_caption_exactly_at_the_chosen_chunk(tiny_pipeline, monkeypatch):
    import magi1.sampling.sampler as sampler

    seen = {}
    real = sampler.sample_chunks

    def spy(model, config, y, masks, *args, **kwargs):
        seen["y"], seen["masks"] = y, masks
        return real(model, config, y, masks, *args, **kwargs)

    monkeypatch.setattr(sampler, "sample_chunks", spy)
    list(tiny_pipeline.stream(chunk_prompts={0: "a red ball", 2: "a blue square falls"}, num_frames=96,
                              output_type="latent"))
    red, _ = tiny_pipeline.text_encoder.encode("a red ball")
    blue, _ = tiny_pipeline.text_encoder.encode("a blue square falls")
    y = seen["y"][0, 0]  # the conditional rows of video 0, one per chunk: (4, Lc, C)
    assert torch.equal(y[0], red[0, 0]) and torch.equal(y[1], red[0, 0])
    assert torch.equal(y[2], blue[0, 0]) and torch.equal(y[3], blue[0, 0])


def test_prompt_embeds_path_matches_prompt_path(tiny_pipeline):
    emb, mask = tiny_pipeline.text_encoder.encode("a ball")
    a = tiny_pipeline("a ball", num_frames=24, output_type="latent").latents
    b = tiny_pipeline(prompt_embeds=emb, prompt_attention_mask=mask, num_frames=24, output_type="latent").latents
    assert torch.equal(a, b)


def test_should_stop_cancels_between_steps(tiny_pipeline):
    calls = []
    with pytest.raises(GenerationCancelled):
        list(tiny_pipeline.stream("a", num_frames=48, should_stop=lambda: calls.append(1) or len(calls) > 2))


def test_killed_run_resumes_to_the_same_video(tiny_pipeline, tmp_path):
    full = tiny_pipeline("a ball", num_frames=96, seed=5, output_type="latent").latents
    out = tmp_path / "resume.mp4"

    class Killed(Exception):
        pass

    def die_after_second_chunk(event):
        if event["type"] == "chunk" and event["index"] == 1:
            raise Killed

    with pytest.raises(Killed):
        tiny_pipeline.generate_to_file(out, prompt="a ball", num_frames=96, seed=5, progress=False,
                                       callback=die_after_second_chunk)
    state_file = resume_state_path(out)
    # the file is written in place: it holds chunk 0 (the callback stopped the run before chunk 1 reached it)
    assert state_file.exists() and probe_video(out).num_frames == 24
    assert ResumeState.load(state_file).finished_chunks == 2
    report = tiny_pipeline.generate_to_file(out, prompt="a ball", num_frames=96, seed=5, progress=False, resume=True)
    assert report.resumed_chunks == 2 and probe_video(out).num_frames == 96
    chunks = list(tiny_pipeline.stream("a ball", num_frames=96, seed=5, output_type="latent",
                                       resume_state=None))
    assert torch.equal(torch.cat([c.latents for c in chunks], 2), full)
    with pytest.raises(InputError, match="nothing to resume"):
        tiny_pipeline.generate_to_file(out, prompt="a ball", num_frames=96, seed=5, resume=True)


def test_resume_state_rejects_another_run(tiny_pipeline, tmp_path):
    states = []
    list(tiny_pipeline.stream("a", num_frames=48, seed=1, output_type="latent", on_state=states.append))
    with pytest.raises(InputError, match="different run"):
        list(tiny_pipeline.stream("b", num_frames=48, seed=1, output_type="latent", resume_state=states[0]))
