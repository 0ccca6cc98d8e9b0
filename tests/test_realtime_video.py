"""WS /v1/realtime/video of a real `magi1 serve` (demo model), driven by the `websockets` client as a user would."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from served_magi1 import KEY_A, STEPS, decode_mp4

websockets = pytest.importorskip("websockets")

AUTH = {"Authorization": f"Bearer {KEY_A}"}


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/realtime/video"


async def run_session(server, start: dict, on_message=None, timeout_s: float = 120.0) -> dict:
    """Play one session; on_message(ws, message, log) may answer. Returns what arrived, in order."""
    log: dict = {"events": [], "fragments": [], "chunks": [], "job_states": []}
    async with websockets.connect(ws_url(server), additional_headers=AUTH, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.start", **start}))
        async with asyncio.timeout(timeout_s):
            while True:
                message = await ws.recv()
                if isinstance(message, bytes):
                    log["fragments"].append(message)
                    # the job, as its own API reports it, at the moment the fragment arrived
                    job = httpx.get(f"{server.url}/v1/jobs/{log['start']['job_id']}", headers=AUTH).json()
                    log["job_states"].append(job["state"])
                    continue
                message = json.loads(message)
                log["events"].append(message)
                kind = message["type"]
                if kind == "video.start":
                    log["start"] = message
                elif kind == "video.chunk_metadata":
                    assert len(log["fragments"]) == len(log["chunks"]), "metadata came before the previous fragment"
                    log["chunks"].append(message)
                elif kind == "error":
                    raise AssertionError(message)
                if on_message is not None:
                    await on_message(ws, message, log)
                if kind == "session.done":
                    log["done"] = message
                    return log


def content_of(server, log) -> bytes:
    response = httpx.get(server.url + log["done"]["content_url"], headers=AUTH)
    assert response.status_code == 200, response.text
    return response.content


def test_fragments_arrive_one_per_chunk_while_the_job_runs_and_make_the_finished_file(magi1_server):
    log = asyncio.run(run_session(magi1_server, {"prompt": "a red ball rolls", "seconds": 3,
                                                 "num_inference_steps": STEPS, "seed": 5}))
    start, chunks, fragments = log["start"], log["chunks"], log["fragments"]
    assert start["num_chunks"] == 3 and log["done"]["status"] == "completed"
    assert [c["chunk"] for c in chunks] == [0, 1, 2] and len(fragments) == 3
    assert [c["bytes"] for c in chunks] == [len(f) for f in fragments]
    assert [c["init_segment"] for c in chunks] == [True, False, False]
    assert fragments[0][4:8] == b"ftyp" and all(f[4:8] == b"moof" for f in fragments[1:])
    assert chunks[0]["mime_type"].startswith('video/mp4; codecs="avc1.')
    # the first fragments arrive while the job is still running, not after it
    assert log["job_states"][0] == "running"
    # the stream, concatenated, is the finished video: same frames as the file the server serves
    streamed = b"".join(fragments)
    finished = content_of(magi1_server, log)
    frames, finished_frames = decode_mp4(streamed), decode_mp4(finished)
    assert frames.shape == (3 * start["frames_per_chunk"], 64, 64, 3)
    np.testing.assert_array_equal(frames, finished_frames)
    # and each fragment on its own (after the init segment) holds its chunk's frames
    per_chunk = start["frames_per_chunk"]
    second = decode_mp4(fragments[0] + fragments[1])
    np.testing.assert_array_equal(second[per_chunk:], frames[per_chunk:2 * per_chunk])


def test_interaction_changes_the_caption_from_the_chunk_the_server_names(magi1_server):
    new_prompt = "a blue square slides to the left"
    sent = {}

    async def change_after_first_chunk(ws, message, log):
        if message["type"] == "video.chunk_metadata" and message["chunk"] == 0:
            await ws.send(json.dumps({"type": "session.interaction", "prompt": new_prompt, "transition_chunks": 0}))
            sent["chunks_before"] = len(log["chunks"])

    log = asyncio.run(run_session(magi1_server, {"prompt": "a red ball rolls", "seconds": 6,
                                                 "num_inference_steps": STEPS, "seed": 5}, change_after_first_chunk))
    kinds = [e["type"] for e in log["events"]]
    accepted = next(e for e in log["events"] if e["type"] == "session.interaction.accepted")
    applied = next(e for e in log["events"] if e["type"] == "session.interaction.applied")
    assert accepted["event_id"] == applied["event_id"] and "session.interaction.dropped" not in kinds
    first = applied["first_chunk"]
    # the documented chunk: the first not yet started, so after the chunks already sent, and within the video
    assert sent["chunks_before"] <= first < log["start"]["num_chunks"]
    captions = [c["caption"]["prompt"] for c in log["chunks"]]
    assert captions == ["a red ball rolls"] * first + [new_prompt] * (len(captions) - first)
    assert log["chunks"][first]["caption"]["started"] == [applied["event_id"]]
    # Afterwards the change is not lost: the video object and the job record each chunk's prompt (the mp4's
    # tags went out in the init segment, before the change)
    video = httpx.get(f"{magi1_server.url}/v1/videos/{log['done']['video_id']}", headers=AUTH).json()
    assert video["magi1"]["live_captions"] == captions
    job = httpx.get(f"{magi1_server.url}/v1/jobs/{log['start']['job_id']}", headers=AUTH).json()
    assert job["live_captions"] == captions
    # (that a live change equals the same schedule planned up front, frame for frame, is test_live_prompts.py's)


def test_stop_ends_the_session_within_one_chunk_and_keeps_the_video(magi1_server):
    at_stop = {}

    async def stop_after_first_chunk(ws, message, log):
        if message["type"] == "video.chunk_metadata" and message["chunk"] == 0:
            await ws.send(json.dumps({"type": "session.stop"}))
            at_stop["chunks"] = len(log["chunks"])

    log = asyncio.run(run_session(magi1_server, {"prompt": "a red ball rolls", "seconds": 4,
                                                 "num_inference_steps": STEPS, "seed": 6}, stop_after_first_chunk))
    done = log["done"]
    assert done["status"] == "stopped" and done["num_chunks"] == 4
    assert at_stop["chunks"] <= done["chunks"] <= at_stop["chunks"] + 1 < 4
    frames = decode_mp4(content_of(magi1_server, log))
    assert len(frames) == done["chunks"] * log["start"]["frames_per_chunk"]
    np.testing.assert_array_equal(frames, decode_mp4(b"".join(log["fragments"])))


def test_a_prompt_change_after_session_stop_is_refused_not_accepted(magi1_server):
    """Once stopped, no chunk will take a new prompt: the change is an error (it was accepted, then "applied"
    to a chunk that was never made)."""
    async def stop_then_change() -> list[dict]:
        events = []
        async with websockets.connect(ws_url(magi1_server), additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"type": "session.start", "prompt": "a red ball", "seconds": 4,
                                      "num_inference_steps": STEPS}))
            await ws.send(json.dumps({"type": "session.stop"}))
            await ws.send(json.dumps({"type": "session.interaction", "prompt": "a blue ball"}))
            async with asyncio.timeout(120):
                async for message in ws:
                    if isinstance(message, str):
                        events.append(json.loads(message))
                        if events[-1]["type"] == "session.done":
                            return events

    events = asyncio.run(stop_then_change())
    kinds = [e["type"] for e in events]
    assert "session.interaction.accepted" not in kinds and "session.interaction.applied" not in kinds, kinds
    (error,) = [e["error"] for e in events if e["type"] == "error"]
    assert error["code"] == "session_finished" and error["param"] is None, error
    assert events[-1]["status"] == "stopped"


def test_a_session_start_may_carry_an_image_past_16_mib(magi1_server):
    """As big as the HTTP routes take (max_upload_bytes): uvicorn's own 16 MiB frame limit closed the
    connection (1009) before the server's check, so a large photo could not start a live i2v session."""
    import io

    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (2600, 2600, 3), dtype=np.uint8)  # barely compresses
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=0)
    assert buffer.tell() > 16 * 2**20
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    async def first_reply() -> dict:
        async with websockets.connect(ws_url(magi1_server), additional_headers=AUTH, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.start", "prompt": "a red ball", "image": image, "seconds": 1,
                                      "num_inference_steps": STEPS}))
            reply = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "session.stop"}))
            return reply

    reply = asyncio.run(first_reply())
    assert reply["type"] == "video.start" and reply["mode"] == "i2v", reply


def test_bad_sessions_get_an_error_message(magi1_server):
    async def first_reply(start: dict) -> dict:
        async with websockets.connect(ws_url(magi1_server), additional_headers=AUTH) as ws:
            await ws.send(json.dumps(start))
            return json.loads(await ws.recv())

    reply = asyncio.run(first_reply({"type": "session.start", "prompt": "x", "size": "640x640"}))
    assert reply["type"] == "error" and reply["error"]["param"] == "size" and "4096" in reply["error"]["message"]
    reply = asyncio.run(first_reply({"type": "session.interaction", "prompt": "x"}))
    assert reply["type"] == "error" and "session.start" in reply["error"]["message"]
    reply = asyncio.run(first_reply({"type": "session.start", "prompt": "x", "frames": 10**6}))
    assert reply["type"] == "error" and reply["error"]["param"] == "frames", reply  # asked in frames, told in frames
    assert reply["error"]["message"].startswith("frames must be at most "), reply
    not_a_picture = "data:image/png;base64," + base64.b64encode(b"hello, not a png").decode()
    for field in ("image", "video"):  # a file that decodes as nothing: the error names the field that carried it
        reply = asyncio.run(first_reply({"type": "session.start", "prompt": "x", field: not_a_picture}))
        assert reply["type"] == "error" and reply["error"]["code"] == "invalid_file", reply
        assert reply["error"]["param"] == field, reply
