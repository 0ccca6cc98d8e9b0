"""Prompt enhancement against a local OpenAI-compatible server (tests/fake_openai.py), and its fallback."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI
from magi1.cli import main
from magi1.io.video import write_video
from magi1.prompting import EnhanceError, EnhanceSettings, PromptEnhancer, fallback_caption, read_enhanced_prompts
from magi1.prompting.story import STORY_SCHEMA

SUFFIX = "hyper quality, Ultra HD, 8K."
KEY = "sk-test-0123456789"


def settings_for(server: FakeOpenAI, **overrides) -> EnhanceSettings:
    values = dict(url=server.url, model=server.model, api_key=server.api_key, timeout_s=10.0)
    values.update(overrides)
    return EnhanceSettings(**values)


def story_answer(*shots: tuple[int, str]) -> str:
    return json.dumps({"shots": [{"first_chunk": chunk, "caption": caption} for chunk, caption in shots]})


def decoded_images(request: dict) -> list[Image.Image]:
    parts = [p for p in request["messages"][-1]["content"] if p["type"] == "image_url"]
    return [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))) for p in parts]


# ----------------------------------------------------------------------------- the fallback
@pytest.mark.parametrize("prompt, caption", [
    ("a red ball and a blue square fall and bounce on the floor",
     "A red ball and a blue square fall and bounce on the floor. The camera remains static, the red ball and the "
     "blue square are centered in the shot. " + SUFFIX),
    ("a man walks his dog along the beach",
     "A man walks his dog along the beach. The camera keeps focusing on the man, ensuring the man stays "
     "consistently at the center of the shot. " + SUFFIX),
    ("two cats play in the garden",
     "Two cats play in the garden. The camera remains static, the two cats are centered in the shot. " + SUFFIX),
    ("  The old yellow bus   drives down the street!",
     "The old yellow bus drives down the street! The camera keeps focusing on the old yellow bus, ensuring the old "
     "yellow bus stays consistently at the center of the shot. " + SUFFIX),
    ("a woman cooks in a kitchen, the camera pans left",
     "A woman cooks in a kitchen, the camera pans left. " + SUFFIX),
    ("sunset over the ocean",
     "Sunset over the ocean. The camera remains static, the main subject is centered in the shot. " + SUFFIX),
    ("a big glass falls off the table. " + SUFFIX,
     "A big glass falls off the table. The camera remains static, the big glass is centered in the shot. " + SUFFIX),
])
def test_fallback_captions_are_fixed(prompt, caption):
    assert fallback_caption(prompt) == caption
    assert fallback_caption(caption) == caption  # enhancing an enhanced caption changes nothing
    result = PromptEnhancer().enhance(prompt)
    assert (result.prompt, result.enhancer, result.chunk_prompts) == (caption, "fallback", None)


def test_fallback_story_spreads_beats_over_chunks():
    story = PromptEnhancer().enhance_story("A red ball falls. Then a blue square slides in from the left.",
                                           num_chunks=5)
    assert story.chunk_prompts == {
        0: "A red ball falls. The camera remains static, the red ball is centered in the shot. " + SUFFIX,
        2: "A blue square slides in from the left. The camera remains static, the blue square is centered in the "
           "shot. " + SUFFIX,
    }
    beats = PromptEnhancer().enhance_story(beats=["a ball falls", "a cube tips", "a cone rolls"], num_chunks=2)
    assert list(beats.chunk_prompts) == [0, 1] and beats.chunk_prompts[1].startswith("A cube tips a cone rolls.")


def test_settings_take_a_full_url_and_hide_the_key():
    settings = EnhanceSettings(url="http://localhost:8000/v1/chat/completions/", model="m", api_key=KEY)
    assert settings.url == "http://localhost:8000/v1"
    assert KEY not in repr(settings) and KEY not in settings.describe()
    with pytest.raises(EnhanceError, match="needs --enhance_model"):
        EnhanceSettings(url="http://localhost:8000/v1")
    with pytest.raises(EnhanceError, match="http"):
        EnhanceSettings(url="localhost:8000", model="m")


# ----------------------------------------------------------------------------- with a model
def test_t2v_makes_two_chat_completions_requests():
    with FakeOpenAI() as server:
        server.replies["appearance"] = ['"A red rubber ball rests on a grey concrete floor."']
        server.replies["motion"] = ["The red rubber ball drops and bounces twice."]
        result = PromptEnhancer(settings_for(server)).enhance("a red ball bounces")
    assert server.problems == []
    assert result.prompt == ("A red rubber ball rests on a grey concrete floor. The red rubber ball drops and bounces "
                             "twice. The camera remains static, the red ball is centered in the shot. " + SUFFIX)
    assert result.enhancer == "tiny-llm"
    assert len(server.requests) == 2
    for request in server.requests:
        assert request["model"] == "tiny-llm" and request["temperature"] == 0.7
        assert [m["role"] for m in request["messages"]] == ["system", "user"]
        assert request["messages"][1]["content"] == "Request: a red ball bounces"  # text only: no picture in t2v
        assert "response_format" not in request
    systems = sorted(r["messages"][0]["content"] for r in server.requests)
    assert "80 words" in systems[0] and "camera" in systems[1].lower()


def test_i2v_sends_the_image_and_v2v_the_last_frames(tmp_path):
    image = np.zeros((400, 600, 3), np.uint8)
    clip = tmp_path / "clip.mp4"
    # 40 frames whose brightness is their index * 6: the pipeline continues the first 32 of them.
    write_video(clip, np.stack([np.full((64, 96, 3), i * 6, np.uint8) for i in range(40)]), fps=24)
    with FakeOpenAI() as server:
        enhancer = PromptEnhancer(settings_for(server))
        enhancer.enhance("the ball rolls away", mode="i2v", image=image)
        i2v = server.requests[-2:]
        enhancer.enhance("the ball rolls away", mode="v2v", video=clip)
        v2v = server.requests[-2:]
    assert server.problems == []
    for request in i2v:
        content = request["messages"][1]["content"]
        assert [p["type"] for p in content] == ["text", "image_url"]
        assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        assert decoded_images(request)[0].size == (600, 400)
        assert "first frame" in request["messages"][0]["content"]
    brightness = [np.asarray(im).mean() for im in decoded_images(v2v[0])]
    assert len(brightness) == 3
    assert np.allclose(brightness, [15 * 6, 23 * 6, 31 * 6], atol=4)  # frames 15, 23, 31, oldest first
    assert "last frames" in v2v[0]["messages"][0]["content"]


def test_a_text_only_model_gets_the_text_path():
    image = np.zeros((32, 32, 3), np.uint8)
    with FakeOpenAI(vision=False) as server:
        result = PromptEnhancer(settings_for(server)).enhance("a cat jumps", mode="i2v", image=image)
        text_path = server.requests[-2:]
        with pytest.raises(EnhanceError, match="--enhance_vision off"):
            PromptEnhancer(settings_for(server, vision="on")).enhance("a cat jumps", mode="i2v", image=image)
        PromptEnhancer(settings_for(server, vision="off")).enhance("a cat jumps", mode="i2v", image=image)
    assert result.prompt.endswith(SUFFIX)
    for request in text_path:
        assert isinstance(request["messages"][1]["content"], str)
        assert "cannot see" in request["messages"][0]["content"]
    assert isinstance(server.requests[-1]["messages"][1]["content"], str)


def test_story_mode_asks_for_the_schema_and_retries_once():
    with FakeOpenAI() as server:
        server.replies["story"] = ["Sure! Here is the plan: shots...",
                                   story_answer((0, "A red ball falls."), (2, "A blue square slides in."))]
        story = PromptEnhancer(settings_for(server)).enhance_story("A ball falls. A square slides in.",
                                                                    num_chunks=3, seconds_per_chunk=1.0)
    assert server.problems == []
    first, retry = server.requests
    assert first["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "chunk_schedule", "strict": True, "schema": STORY_SCHEMA}}
    assert first["messages"][1]["content"] == "Chunks: 3\nStory: A ball falls. A square slides in."
    assert [m["role"] for m in retry["messages"]] == ["system", "user", "assistant", "user"]
    assert retry["messages"][2]["content"] == "Sure! Here is the plan: shots..."
    assert "not valid JSON" in retry["messages"][3]["content"]
    assert sorted(story.chunk_prompts) == [0, 2]
    assert story.chunk_prompts[2].startswith("A blue square slides in. The camera remains static")
    assert story.chunk_prompts[2].endswith(SUFFIX)


@pytest.mark.parametrize("answers, reason", [
    (["not json", "still not json"], "not valid JSON"),
    ([story_answer((1, "A ball."))], "the first shot starts at chunk 1"),
    ([story_answer((0, "A ball."), (0, "A cube."))], "first chunks must increase"),
    ([story_answer((0, "A ball."), (5, "A cube."))], "below 3"),
])
def test_a_malformed_story_is_refused_with_the_answer_shown(answers, reason):
    with FakeOpenAI() as server:
        server.replies["story"] = answers
        with pytest.raises(EnhanceError) as refused:
            PromptEnhancer(settings_for(server)).enhance_story(beats=["a ball", "a cube"], num_chunks=3)
    message = str(refused.value)
    assert len(server.requests) == 2 and reason in message
    assert message.startswith("the model's story answer could not be used") and answers[-1][:20] in message
    assert "\n" not in message


@pytest.mark.parametrize("case, expected", [
    ("wrong model", "serves no model named 'no-such-model' (it serves 'tiny-llm'); check --enhance_model"),
    ("wrong key", "refused the API key in MAGI1_ENHANCE_API_KEY"),
    ("no key", "wants an API key (HTTP 401): set MAGI1_ENHANCE_API_KEY"),
    ("wrong path", "no OpenAI-compatible API at"),
    ("unreachable", "cannot reach an OpenAI-compatible server at http://127.0.0.1:9/v1"),
    ("timeout", "did not answer within 0.3 s"),
])
def test_endpoint_mistakes_give_one_clear_sentence(case, expected, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(api_key=KEY, delay_s=1.0 if case == "timeout" else 0.0) as server:
        settings = {
            "wrong model": settings_for(server, model="no-such-model"),
            "wrong key": settings_for(server, api_key="sk-wrong-key-42"),
            "no key": settings_for(server, api_key=None),
            "wrong path": settings_for(server, url=server.url.removesuffix("/v1")),
            "unreachable": settings_for(server, url="http://127.0.0.1:9/v1", max_retries=0),
            "timeout": settings_for(server, timeout_s=0.3, max_retries=0),
        }[case]
        with pytest.raises(EnhanceError) as failure:
            PromptEnhancer(settings).enhance("a cat")
    assert expected in str(failure.value) and "\n" not in str(failure.value)
    for secret in (KEY, "sk-wrong-key-42"):
        assert secret not in str(failure.value) and secret not in caplog.text


# ----------------------------------------------------------------------------- as a user runs it
def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    env.pop("MAGI1_ENHANCE_URL", None)
    env.pop("MAGI1_ENHANCE_MODEL", None)
    return subprocess.run([sys.executable, "-m", "magi1.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_story_run_switches_captions_where_the_json_says(tiny_model, tiny_pipeline, tmp_path):
    out, reference = tmp_path / "story.mp4", tmp_path / "reference.mp4"
    with FakeOpenAI(api_key=KEY) as server:
        server.replies["story"] = [story_answer((0, "A red ball rests on the floor."),
                                                (2, "A blue square slides across the floor."))]
        done = run_cli("generate", "--config_file", str(tiny_model), "--num_frames", "72", "--threads", "1",
                       "--story", "A red ball rests. Later a blue square slides in.", "--enhance_url", server.url,
                       "--enhance_model", "tiny-llm", "--output_path", str(out), "--quiet",
                       env_extra={"MAGI1_ENHANCE_API_KEY": KEY})
    assert done.returncode == 0, done.stderr
    assert server.problems == [] and len(server.requests) == 1
    assert server.requests[0]["messages"][1]["content"].startswith("Chunks: 3\n")  # 72 frames = 3 chunks
    assert KEY not in done.stdout + done.stderr
    recorded = read_enhanced_prompts(out)
    assert recorded.enhancer == "tiny-llm" and sorted(recorded.chunk_prompts) == [0, 2]
    assert recorded.chunk_prompts[0].startswith("A red ball rests on the floor. The camera remains static")
    assert f"chunk 2: {recorded.chunk_prompts[2]}" in done.stdout
    assert "--chunk_prompt '2:A blue square slides" in done.stdout  # how to make it again without a model
    # The same video, made with plain --prompt / --chunk_prompt values and no model, is the same video.
    tiny_pipeline.generate_to_file(reference, progress=False, num_frames=72, prompt=None,
                                   chunk_prompts=recorded.chunk_prompts)
    from magi1.io.video import load_video

    story_frames, reference_frames = (load_video(p, 32, 32, 24, max_frames=None) for p in (out, reference))
    assert story_frames.shape == (72, 32, 32, 3)
    np.testing.assert_array_equal(story_frames, reference_frames)


def test_cli_enhance_prints_captions_and_refuses_a_malformed_story(capsys):
    done = run_cli("enhance", "a red ball and a blue square fall and bounce on the floor")
    assert done.returncode == 0 and done.stdout.strip() == fallback_caption(
        "a red ball and a blue square fall and bounce on the floor")
    with FakeOpenAI() as server:
        server.replies["story"] = [story_answer((0, "A ball."), (1, "A cube.")), "{broken"]
        assert main(["enhance", "--story", "A ball. A cube.", "--num_chunks", "2", "--enhance_url", server.url,
                     "--enhance_model", "tiny-llm"]) == 0
        bad = run_cli("enhance", "--beat", "a ball", "--beat", "a cube", "--num_chunks", "2",
                      "--enhance_url", server.url, "--enhance_model", "tiny-llm")
    # One CHUNK:PROMPT line per shot, ready for --chunk_prompt.
    assert [line.split(":", 1)[0] for line in capsys.readouterr().out.splitlines()] == ["0", "1"]
    assert bad.returncode == 2 and bad.stdout == ""
    error = bad.stderr.strip().splitlines()[-1]
    assert error.startswith("magi1 enhance: error: the model's story answer could not be used")
    assert "'{broken'" in error


def test_generate_enhance_without_a_model_uses_the_templates(tiny_model, tmp_path, capsys):
    out = tmp_path / "fallback.mp4"
    assert main(["generate", "--config_file", str(tiny_model), "--prompt", "a red ball bounces", "--enhance",
                 "--num_frames", "24", "--output_path", str(out), "--quiet"]) == 0
    caption = fallback_caption("a red ball bounces")
    assert f"enhanced prompt (fallback templates): {caption}" in capsys.readouterr().out
    recorded = read_enhanced_prompts(out)
    assert (recorded.prompt, recorded.original, recorded.enhancer) == (caption, "a red ball bounces", "fallback")
    assert recorded.generate_args() == ["--prompt", caption]
    assert main(["generate", "--config_file", str(tiny_model), "--story", "A ball.", "--prompt", "x",
                 "--output_path", str(out)]) == 2
    assert "replace --prompt" in capsys.readouterr().err


def test_resume_reuses_the_captions_recorded_in_the_partial_file(tmp_path):
    from argparse import Namespace

    from magi1.io.video import VideoWriter
    from magi1.prompting.cli import enhanced_run_prompts
    from magi1.prompting.prompts import EnhancedPrompts

    out = tmp_path / "run.mp4"
    recorded = EnhancedPrompts.from_schedule({0: "A ball. " + SUFFIX, 3: "A cube. " + SUFFIX}, enhancer="some-model")
    writer = VideoWriter(out, fps=24, fragmented=True, keep_partial=True, metadata=recorded.video_metadata())
    writer.append(np.zeros((4, 16, 16, 3), np.uint8))
    writer.abort()  # a killed run leaves its partial file, captions included
    # The endpoint is unreachable: a resumed run must not need it.
    args = Namespace(output_path=str(out), resume=True, story="A ball. A cube.", beat=[], enhance=True,
                     enhance_url="http://127.0.0.1:9/v1", enhance_model="m", enhance_timeout=1.0,
                     enhance_vision="auto", image_path=None, prefix_video_path=None)
    again = enhanced_run_prompts(args, "t2v", None, "unused", None, None)
    assert again.chunk_prompts == recorded.chunk_prompts and again.enhancer == "some-model"


def test_cli_enhance_story_wording_a_user_types():
    # Beats split at semicolons read as sentences, not "A cat walks;."
    done = run_cli("enhance", "--story", "a cat walks; it sits; it sleeps", "--num_chunks", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["0", "1", "2"]
    assert lines[0].startswith("0:A cat walks. The camera") and ";" not in done.stdout
    # A prompt and a story together: the error says which to drop, not "give a prompt".
    both = run_cli("enhance", "a cat", "--story", "a cat walks. it sits.")
    assert both.returncode == 2 and both.stderr.strip().splitlines()[-1] == (
        "magi1 enhance: error: --story / --beat replace the prompt; give one or the other")
    # Only separators: one sentence, no traceback.
    empty = run_cli("enhance", "--story", " ; ", "--num_chunks", "2")
    assert empty.returncode == 2 and empty.stderr.strip() == "magi1 enhance: error: the story is empty"


def test_a_16_bit_image_is_shown_to_the_vision_model_as_the_run_reads_it(tmp_path):
    # Pillow's convert("RGB") clips 16-bit grey at 255: the model was shown a white page.
    import base64
    import io

    from PIL import Image

    from magi1.prompting.media import data_url

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((40, 40), 30000, dtype=np.uint16)).save(path)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url(path).split(",", 1)[1]))))
    assert shown.shape == (40, 40, 3) and abs(float(shown.mean()) - 30000 / 257) < 2
