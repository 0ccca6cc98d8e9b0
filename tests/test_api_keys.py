"""API keys on a real `magi1 serve` (started with MAGI1_API_KEYS=KEY_A,KEY_B): the `openai` package, plain
HTTP and the `websockets` client, as users with different keys meet them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import httpx
import openai
import pytest

from served_magi1 import KEY_A, KEY_B, STEPS, openai_client, serve_command

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
websockets = pytest.importorskip("websockets")


def client_for(server, key: str) -> openai.OpenAI:
    return openai_client(server, key)


def test_a_wrong_or_missing_key_is_an_authentication_error(magi1_server):
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(magi1_server, "sk-not-a-key-of-this-server").videos.list()
    assert caught.value.status_code == 401 and "not valid" in caught.value.message
    with pytest.raises(openai.AuthenticationError):
        client_for(magi1_server, "sk-not-a-key-of-this-server").videos.create(prompt="x", seconds="1")
    for path in ("/v1/jobs", "/v1/info", "/v1/videos", "/v1/models"):
        response = httpx.get(magi1_server.url + path)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer"), path
    # the page, its files and the liveness check stay open; /health says that keys are needed
    assert httpx.get(magi1_server.url + "/").status_code == 200
    assert httpx.get(magi1_server.url + "/health").json()["api_key_required"] is True

    async def handshake(headers):
        url = magi1_server.url.replace("http://", "ws://") + "/v1/realtime/video"
        async with websockets.connect(url, additional_headers=headers):
            pass

    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(handshake({"Authorization": "Bearer sk-wrong-key-123"}))
    assert refused.value.response.status_code == 401


def test_each_key_sees_only_its_own_videos(magi1_server):
    alice, bob = client_for(magi1_server, KEY_A), client_for(magi1_server, KEY_B)
    bobs = bob.videos.create(prompt="bob's ball", seconds="1", extra_body={"num_inference_steps": STEPS})
    alices = alice.videos.create(prompt="alice's ball", seconds="1", extra_body={"num_inference_steps": STEPS})
    try:
        # Alice cannot see, fetch, cancel or delete Bob's video: 404, exactly as for an id that does not exist
        for attempt in (lambda: alice.videos.retrieve(bobs.id), lambda: alice.videos.delete(bobs.id),
                        lambda: alice.videos.download_content(bobs.id)):
            with pytest.raises(openai.NotFoundError):
                attempt()
        job_id = bobs.id.removeprefix("video_")
        headers = {"Authorization": f"Bearer {KEY_A}"}
        for method, path in (("GET", f"/v1/jobs/{job_id}"), ("POST", f"/v1/jobs/{job_id}/cancel"),
                             ("GET", f"/v1/jobs/{job_id}/video"), ("DELETE", f"/v1/jobs/{job_id}")):
            answer = httpx.request(method, magi1_server.url + path, headers=headers)
            assert answer.status_code == 404, (method, path, answer.text)
        assert bobs.id not in [v.id for v in alice.videos.list(limit=100).data]
        assert alices.id in [v.id for v in alice.videos.list(limit=100).data]
        assert {v.id for v in bob.videos.list(limit=100).data} >= {bobs.id} and \
            alices.id not in [v.id for v in bob.videos.list(limit=100).data]
        # and Bob's video is untouched by Alice's attempts
        assert bob.videos.retrieve(bobs.id).status in ("queued", "in_progress", "completed")
    finally:
        bob.videos.delete(bobs.id)
        alice.videos.delete(alices.id)
    with pytest.raises(openai.NotFoundError):
        bob.videos.retrieve(bobs.id)


def test_a_websocket_session_belongs_to_its_key(magi1_server):
    url = magi1_server.url.replace("http://", "ws://") + "/v1/realtime/video"

    async def start_and_stop() -> str:
        # the browser's way: the key as a subprotocol next to the protocol's own
        async with websockets.connect(url, subprotocols=["magi1.realtime.v1", f"bearer.{KEY_B}"]) as ws:
            assert ws.subprotocol == "magi1.realtime.v1"
            await ws.send(json.dumps({"type": "session.start", "prompt": "x", "seconds": 1,
                                      "num_inference_steps": STEPS}))
            start = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "session.stop"}))
            while True:
                message = await ws.recv()
                if isinstance(message, str) and json.loads(message)["type"] == "session.done":
                    return start["video_id"]

    video_id = asyncio.run(start_and_stop())
    with pytest.raises(openai.NotFoundError):
        client_for(magi1_server, KEY_A).videos.retrieve(video_id)
    assert client_for(magi1_server, KEY_B).videos.retrieve(video_id).id == video_id
    client_for(magi1_server, KEY_B).videos.delete(video_id)


def test_listening_beyond_loopback_without_a_key_is_refused(tmp_path):
    result = subprocess.run(serve_command() + ["serve", "--config_file", "demo_distill", "--host", "0.0.0.0",
                                               "--port", "0", "--results_dir", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "MAGI1_API_KEYS"})
    assert result.returncode == 2, result.stderr
    assert "API key" in result.stderr and "0.0.0.0" in result.stderr
