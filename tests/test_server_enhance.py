"""Prompt enhancement on `magi1 serve` (issue 17): `--enhance_url/--enhance_model`, `"enhance": true` and `story`
on /v1/jobs, /v1/videos (through the `openai` package) and the WebSocket, against a real server subprocess
(serve_fake.py's model) pointed at the fake chat-completions server of fake_openai.py.

What must hold: the fake sees exactly OpenAI-shaped requests; the job and video JSON carry the captions; the
mp4 holds them in its metadata; without an endpoint the fallback templates are used; a failing endpoint fails
the job with one sentence; the key is in no response and no log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
av = pytest.importorskip("av")

from fake_openai import FakeOpenAI  # noqa: E402
from serve_process import ServeProcess, assert_error, assert_openai_error  # noqa: E402

from magi1.prompting import QUALITY_SUFFIX, fallback_caption  # noqa: E402

WAIT_S = 30.0
KEY = "sk-enhance-test-5f1c9a0e77d24b31"
FAKE = ["--pipeline", "serve_fake:load_pipeline", "--config_file", "demo"]
SMALL = {"num_frames": 24, "steps": 4, "height": 32, "width": 32}
APPEARANCE, MOTION = "A red ball rests on a grey floor.", "The red ball bounces twice."
STORY_ANSWER = {"shots": [{"first_chunk": 0, "caption": "A ball rolls along a wooden floor."},
                          {"first_chunk": 2, "caption": "The ball hits a white wall and stops."}]}


@contextlib.contextmanager
def serving(args: list[str], env: dict | None = None):
    """(server, client) of a `magi1 serve` whose model has loaded; the server stops afterwards."""
    with ServeProcess([*FAKE, *args], env=env) as server, \
            httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
        deadline = time.monotonic() + WAIT_S
        while client.get("/health").json()["model"] != "ready":
            assert time.monotonic() < deadline, "the fake model never loaded"
            time.sleep(0.02)
        yield server, client


def finished_job(client, job_id: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def submitted(response) -> str:
    assert response.status_code == 202, response.text
    return response.json()["id"]


def mp4_tags(data: bytes) -> dict:
    with av.open(io.BytesIO(data)) as container:
        return dict(container.metadata)


def recorded(tags: dict) -> dict:
    """The captions an enhanced run wrote into its mp4 (the JSON in its comment tag)."""
    return json.loads(tags["comment"])["magi1"]


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def with_model():
    """A server whose enhancer is the fake chat model (which wants KEY), and that model."""
    with FakeOpenAI(model="tiny-llm", api_key=KEY) as model:
        model.replies.update(appearance=[APPEARANCE], motion=[MOTION], story=[json.dumps(STORY_ANSWER)])
        args = ["--enhance_url", model.url, "--enhance_model", "tiny-llm", "--enhance_timeout", "10"]
        with serving(args, env={"MAGI1_ENHANCE_API_KEY": KEY}) as (server, client):
            yield server, client, model


def test_a_job_with_enhance_gets_the_models_caption_in_its_json_and_its_mp4(with_model):
    server, client, model = with_model
    seen = len(model.requests)
    job = finished_job(client, submitted(client.post("/v1/jobs", json={"prompt": "a red ball", "enhance": True,
                                                                        **SMALL})))
    assert job["state"] == "done", job
    new = model.requests[seen:]
    assert model.problems == [] and len(new) == 2  # the appearance and the motion request
    for body in new:
        assert body["model"] == "tiny-llm" and [m["role"] for m in body["messages"]] == ["system", "user"]
        assert "a red ball" in body["messages"][1]["content"] and "response_format" not in body
    enhanced = job["enhanced"]
    assert job["enhance"] is True and job["prompt"] == "a red ball"  # what the client wrote stays the prompt
    assert enhanced["enhancer"] == "tiny-llm" and enhanced["original"] == "a red ball"
    assert APPEARANCE in enhanced["prompt"] and MOTION in enhanced["prompt"]
    assert enhanced["prompt"].endswith(QUALITY_SUFFIX) and enhanced["chunk_prompts"] is None
    video = client.get(job["urls"]["video"])
    tags = mp4_tags(video.content)
    assert tags["description"] == enhanced["prompt"] and recorded(tags)["prompt"] == enhanced["prompt"]
    assert KEY not in video.text and KEY not in json.dumps(job)


def test_an_i2v_form_with_the_page_checkbox_shows_the_model_the_image(with_model):
    server, client, model = with_model
    seen = len(model.requests)
    form = {"prompt": "the ball rolls away", "enhance": "on", **{k: str(v) for k, v in SMALL.items()}}
    response = client.post("/v1/jobs", data=form, files={"file": ("ball.png", png_bytes(), "image/png")})
    job = finished_job(client, submitted(response))
    assert job["state"] == "done" and job["mode"] == "i2v", job
    new = model.requests[seen:]
    assert model.problems == [] and len(new) == 2
    for body in new:
        parts = body["messages"][1]["content"]
        assert [p["type"] for p in parts] == ["text", "image_url"]
        assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert job["enhanced"]["mode"] == "i2v" and APPEARANCE in job["enhanced"]["prompt"]


def test_a_story_becomes_the_jobs_chunk_prompts_from_a_json_schema_answer(with_model):
    server, client, model = with_model
    seen = len(model.requests)
    beats = ["A ball rolls.", "It hits a wall."]
    job = finished_job(client, submitted(client.post("/v1/jobs", json={"story": beats, **SMALL,
                                                                        "num_frames": 72})))
    assert job["state"] == "done" and job["num_chunks"] == 3, job
    (body,) = model.requests[seen:]
    assert model.problems == [] and body["response_format"]["type"] == "json_schema"
    assert all(beat in body["messages"][1]["content"] for beat in beats)
    chunks = job["enhanced"]["chunk_prompts"]
    assert sorted(chunks) == ["0", "2"] and chunks["2"].startswith("The ball hits a white wall")
    assert job["story"] == beats and job["prompt"] is None
    tags = mp4_tags(client.get(job["urls"]["video"]).content)
    assert recorded(tags)["chunk_prompts"] == chunks and tags["description"] == chunks["0"]


def test_wrong_types_are_refused_before_anything_is_queued(with_model):
    server, client, model = with_model
    seen, before = len(model.requests), client.get("/v1/jobs").json()["total"]
    assert_error(client.post("/v1/jobs", json={"prompt": "a ball", "enhance": [True]}), 400, "enhance must be")
    assert_error(client.post("/v1/jobs", json={"prompt": "a ball", "enhance": "maybe"}), 400, "enhance must be")
    assert_error(client.post("/v1/jobs", json={"story": 7}), 400, "story must be text or a list")
    assert_error(client.post("/v1/jobs", json={"story": ["a beat", ""]}), 400, "story[1] is empty")
    assert_error(client.post("/v1/jobs", json={"prompt": "a ball", "story": "A ball."}), 400, "without prompt")
    assert_error(client.post("/v1/jobs", json={"story": "A ball.", "enhance": False}), 400, "enhance: false")
    assert_error(client.post("/v1/jobs", json={"prompt": "x" * 2001, "enhance": True}), 400, "at most 2000")
    assert_openai_error(client.post("/v1/videos", json={"prompt": "a ball", "enhance": {"on": 1}}), 400, "enhance")
    assert_openai_error(client.post("/v1/videos", json={"prompt": "", "story": [1, 2]}), 400, "story")
    assert client.get("/v1/jobs").json()["total"] == before and len(model.requests) == seen


def test_the_videos_api_through_the_openai_package(with_model):
    openai = pytest.importorskip("openai")
    server, client, model = with_model
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused-no-keys-on-this-server", max_retries=0)
    video = api.videos.create_and_poll(prompt="a red ball", seconds="1", size="32x32", poll_interval_ms=100,
                                       extra_body={"enhance": True, "num_inference_steps": 4})
    assert video.status == "completed", video
    extras = video.model_extra["magi1"]
    assert extras["enhance"] is True and extras["enhanced"]["enhancer"] == "tiny-llm"
    assert video.prompt == "a red ball" and MOTION in extras["enhanced"]["prompt"]
    tags = mp4_tags(api.videos.download_content(video.id).read())
    assert tags["description"] == extras["enhanced"]["prompt"]
    run = json.loads(tags["comment"])["magi1_run"]  # what made it, as `magi1 generate` records it
    assert run["config"] == video.model and run["prompt"] == extras["enhanced"]["prompt"]
    assert (run["mode"], run["steps"], run["width"], run["height"]) == ("t2v", 4, 32, 32)
    with pytest.raises(openai.BadRequestError) as refused:
        api.videos.create(prompt="a ball", extra_body={"enhance": [1]})
    assert refused.value.body["param"] == "enhance"
    assert model.problems == []


def test_the_key_is_in_no_log_line(with_model):
    server, client, model = with_model
    assert "prompt enhancement: tiny-llm at http://127.0.0.1" in server.log
    assert KEY not in server.log and "Traceback" not in server.log


def test_a_failing_endpoint_fails_the_job_with_one_sentence_naming_neither_key_nor_address(tmp_path):
    with FakeOpenAI(model="tiny-llm", api_key=KEY) as model:
        args = ["--enhance_url", model.url, "--enhance_model", "no-such-model"]
        with serving(args, env={"MAGI1_ENHANCE_API_KEY": KEY}) as (server, client):
            job = finished_job(client, submitted(client.post("/v1/jobs", json={"prompt": "a ball", "enhance": True,
                                                                                **SMALL})))
            video = client.get(f"/v1/jobs/{job['id']}/video")
            content = client.get(f"/v1/videos/video_{job['id']}/content")
    assert job["state"] == "failed" and job["enhanced"] is None, job
    # final, so not "not ready yet": a 400 that says it failed and why, once
    assert content.status_code == 400 and content.json()["error"]["code"] == "video_failed", content.text
    assert content.json()["error"]["message"].count("prompt enhancement failed") == 1
    assert job["error"].startswith("prompt enhancement failed: ") and "no-such-model" in job["error"]
    assert model.url not in job["error"] and "127.0.0.1" not in job["error"] and "\n" not in job["error"]
    assert video.status_code == 409
    assert model.url in server.log  # the operator's log names the endpoint it could not use
    assert KEY not in server.log and "Traceback" not in server.log


def test_without_an_endpoint_the_fallback_captions_the_job_and_the_websocket_session(tmp_path):
    websockets = pytest.importorskip("websockets")
    with serving([]) as (server, client):
        assert client.get("/v1/info").json()["enhancer"] == "fallback"
        job = finished_job(client, submitted(client.post("/v1/jobs", json={"prompt": "a red ball",
                                                                            "enhance": True, **SMALL})))
        assert job["state"] == "done" and job["enhanced"]["enhancer"] == "fallback"
        assert job["enhanced"]["prompt"] == fallback_caption("a red ball")
        assert mp4_tags(client.get(job["urls"]["video"]).content)["description"] == job["enhanced"]["prompt"]

        async def session() -> list:
            url = server.url.replace("http://", "ws://") + "/v1/realtime/video"
            events = []
            async with websockets.connect(url, max_size=None) as ws:
                await ws.send(json.dumps({"type": "session.start", "prompt": "a blue cube", "enhance": True,
                                          "size": "32x32", "seconds": 1, "num_inference_steps": 4}))
                async with asyncio.timeout(WAIT_S):
                    while not events or events[-1].get("type") != "session.done":
                        message = await ws.recv()
                        if isinstance(message, str):
                            events.append(json.loads(message))
            return events

        events = asyncio.run(session())
        start, done = events[0], events[-1]
        assert start["type"] == "video.start" and start["enhance"] is True, events
        assert done["status"] == "completed", events
        video = client.get(f"/v1/videos/{done['video_id']}").json()
        assert video["magi1"]["enhanced"]["prompt"] == fallback_caption("a blue cube")
        tags = mp4_tags(client.get(done["content_url"]).content)
        assert tags["description"] == fallback_caption("a blue cube")

        # An extension's content is its source then the continuation: the file keeps the continuation's tags.
        extension = client.post("/v1/videos/extensions", json={"video": {"id": done["video_id"]}, "seconds": 1,
                                                               "prompt": "the cube spins", "enhance": True,
                                                               "num_inference_steps": 4})
        assert extension.status_code == 200, extension.text
        job = finished_job(client, extension.json()["id"].removeprefix("video_"))
        assert job["state"] == "done" and job["enhanced"]["mode"] == "v2v", job
        content = client.get(f"/v1/videos/{extension.json()['id']}/content").content
        assert mp4_tags(content)["description"] == fallback_caption("the cube spins")
