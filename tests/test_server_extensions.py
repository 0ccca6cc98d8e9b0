"""Extensions and stopped live videos on a real `magi1 serve` (demo model), as a user meets them: which videos
can be extended, how long the stitched result may be, that extending keeps the source's frames exactly, and
what a live session ended by session.stop is in the Videos API, and that served videos and continuations have the
frames `magi1 generate` makes from the same inputs and seed. Each was found by a user probe."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from served_magi1 import KEY_A, STEPS, decode_mp4, mean_abs, openai_client
from test_realtime_video import run_session, ws_url

websockets = pytest.importorskip("websockets")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
AUTH = {"Authorization": f"Bearer {KEY_A}"}
FAST = {"num_inference_steps": STEPS, "seed": 21}


@pytest.fixture(scope="module")
def client(magi1_server):
    return openai_client(magi1_server)


def limits_of(client) -> dict:
    """The model's limits, as GET /v1/models states them under "magi1" (max_seconds, frames_per_chunk, ...)."""
    return client.models.list().data[0].model_extra["magi1"]


@pytest.fixture(scope="module")
def source(client):
    """A completed one-second video and its mp4."""
    video = client.videos.create_and_poll(prompt="a yellow ball rolls", seconds="1", extra_body=FAST,
                                          poll_interval_ms=100)
    assert video.status == "completed"
    return video, client.videos.download_content(video.id).read()


def extend_by_id(client, video_id: str, seconds: str = "1"):
    return client.post("/videos/extensions", cast_to=openai.types.Video,
                       body={"video": {"id": video_id}, "prompt": "it rolls on", "seconds": seconds, **FAST})


def wait_until_finished(client, video_id: str):
    video = client.videos.retrieve(video_id)
    while video.status in ("queued", "in_progress"):
        time.sleep(0.05)
        video = client.videos.retrieve(video_id)
    return video


def video_count(client) -> int:
    return len(list(client.videos.list()))


def test_only_a_completed_video_can_be_extended_by_id(magi1_server, client):
    limits = limits_of(client)
    long_one = client.videos.create(prompt="a long roll", seconds=str(int(limits["max_seconds"])), extra_body=FAST)
    with pytest.raises(openai.ConflictError) as not_yet:  # queued or being made: asking later can succeed
        extend_by_id(client, long_one.id)
    assert (not_yet.value.status_code, not_yet.value.param, not_yet.value.code) == (409, "video", "video_not_ready")
    assert "completed video's id" in not_yet.value.message
    httpx.post(f"{magi1_server.url}/v1/jobs/{long_one.id.removeprefix('video_')}/cancel", headers=AUTH)
    cancelled = wait_until_finished(client, long_one.id)
    assert cancelled.status == "failed" and cancelled.error.code == "cancelled"
    before = video_count(client)
    with pytest.raises(openai.BadRequestError) as refused:  # final: it never will be completed
        extend_by_id(client, long_one.id)
    assert (refused.value.param, refused.value.code) == ("video", "video_failed")
    assert "was cancelled" in refused.value.message and "completed video's id" in refused.value.message
    assert video_count(client) == before  # refused before anything was queued


def test_the_stitched_video_may_not_exceed_max_seconds(client, source):
    video, mp4 = source
    limits = limits_of(client)
    longest = int(limits["max_seconds"])
    with pytest.raises(openai.BadRequestError) as by_id:
        extend_by_id(client, video.id, seconds=str(longest))
    assert (by_id.value.param, by_id.value.code) == ("seconds", "unsupported_value")
    message = by_id.value.message
    assert "is 1 s" in message and f"asks for {longest} s" in message and f"at most {longest} s" in message
    assert f"ask for at most {longest - 1} s" in message
    with pytest.raises(openai.BadRequestError) as uploaded:  # the same for an uploaded video
        client.videos.extend(video=("ball.mp4", mp4, "video/mp4"), prompt="on", seconds=str(longest),
                             extra_body=FAST)
    assert uploaded.value.param == "seconds" and uploaded.value.message == message
    # Up to the limit is accepted; the cost budget counts the frames to generate, not the source's.
    fits = extend_by_id(client, video.id, seconds=str(longest - 1))
    assert fits.seconds == str(longest)
    assert fits.model_extra["magi1"]["estimated_cost"]["frames"] == (longest - 1) * limits["frames_per_chunk"]
    client.videos.delete(fits.id)


def test_a_video_shorter_than_one_chunk_is_refused_before_anything_is_queued(client, source):
    """Its prefix would end inside the first chunk, which the run rounds up: the continuation would come out
    longer than the seconds asked for, and than the video object said when it was created."""
    video, mp4 = source
    limits = limits_of(client)
    short = mp4_of(decode_mp4(mp4)[: limits["frames_per_chunk"] // 3], limits["fps"])
    before = video_count(client)
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.extend(video=("short.mp4", short, "video/mp4"), prompt="on", seconds="1", extra_body=FAST)
    assert (refused.value.param, refused.value.code) == ("video", "video_too_short")
    assert f"at least {limits['frames_per_chunk']}" in refused.value.message
    assert video_count(client) == before
    # one whole chunk is enough, and the result is as long as the video object says
    whole = client.videos.extend(video=("whole.mp4", mp4, "video/mp4"), prompt="on", seconds="1", extra_body=FAST)
    done = wait_until_finished(client, whole.id)
    assert done.status == "completed" and done.seconds == whole.seconds == "2"
    assert len(decode_mp4(client.videos.download_content(done.id).read())) == 2 * limits["frames_per_chunk"]


def mp4_of(frames: np.ndarray, fps: int) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return buffer.getvalue()


def test_extending_keeps_the_source_frames_exactly_however_often(magi1_server, client, source):
    video, mp4 = source
    original = decode_mp4(mp4)
    once = wait_until_finished(client, extend_by_id(client, video.id).id)
    once_frames = decode_mp4(client.videos.download_content(once.id).read())
    np.testing.assert_array_equal(once_frames[:len(original)], original)  # copied, not re-encoded
    twice = wait_until_finished(client, extend_by_id(client, once.id).id)
    twice_frames = decode_mp4(client.videos.download_content(twice.id).read())
    np.testing.assert_array_equal(twice_frames[:len(once_frames)], once_frames)
    # and the continuation is the job's own video, unchanged too
    continuation = httpx.get(f"{magi1_server.url}/v1/jobs/{twice.id.removeprefix('video_')}/video", headers=AUTH)
    np.testing.assert_array_equal(twice_frames[len(once_frames):], decode_mp4(continuation.content))



def test_an_extension_continues_as_magi1_generate_v2v_does_on_the_same_clip(client, source, tmp_path):
    """The job conditions on the source's own frames (a lossless clip), so continuing the same mp4 with the CLI
    and the same seed gives the same frames (when it conditioned on a CRF 23 re-encode: up to 71/255 off)."""
    video, mp4 = source
    original = decode_mp4(mp4)
    (tmp_path / "source.mp4").write_bytes(mp4)
    extension = wait_until_finished(client, extend_by_id(client, video.id).id)
    assert extension.status == "completed"
    continuation = decode_mp4(client.videos.download_content(extension.id).read())[len(original):]
    made = cli_generate(tmp_path, "--mode", "v2v", "--prefix_video_path", "source.mp4", "--prompt", "it rolls on",
                        "--num_frames", str(len(continuation)))
    np.testing.assert_array_equal(continuation, made)


def test_a_served_video_has_the_frames_magi1_generate_makes(client, tmp_path):
    """Same prompt, seed and steps: the same frames, chunk for chunk (each chunk is encoded on its own by both;
    a served video once ran one encoder over the whole video, whose lookahead changed the first chunk's end)."""
    video = client.videos.create_and_poll(prompt="a red ball rolls", seconds="2", extra_body=FAST,
                                          poll_interval_ms=100)
    assert video.status == "completed"
    served = decode_mp4(client.videos.download_content(video.id).read())
    assert len(served) == 48
    np.testing.assert_array_equal(served, cli_generate(tmp_path, "--prompt", "a red ball rolls", "--num_frames", "48"))


def test_a_video_with_chunk_prompts_records_its_prompt_as_magi1_generate_does(client, tmp_path):
    """prompt covers the chunks before the first chunk_prompts entry: the mp4's tags keep it as chunk 0 (they
    dropped it, and the description was a later chunk's prompt), the same tags `magi1 generate` writes."""
    import av

    from magi1.run_tags import read_run_settings

    video = client.videos.create_and_poll(prompt="a red ball rolls", seconds="2", poll_interval_ms=100,
                                          extra_body={**FAST, "chunk_prompts": {"1": "a blue ball rolls"}})
    assert video.status == "completed"
    client.videos.download_content(video.id).write_to_file(tmp_path / "served.mp4")
    served = read_run_settings(tmp_path / "served.mp4")
    assert served["chunk_prompts"] == {"0": "a red ball rolls", "1": "a blue ball rolls"}
    cli_frames = cli_generate(tmp_path, "--prompt", "a red ball rolls", "--chunk_prompt", "1:a blue ball rolls",
                              "--num_frames", "48")
    made = read_run_settings(tmp_path / "cli.mp4")
    assert {k: v for k, v in served.items() if k != "config"} == {k: v for k, v in made.items() if k != "config"}
    with av.open(str(tmp_path / "served.mp4")) as container:
        assert container.metadata["description"] == "a red ball rolls"
    np.testing.assert_array_equal(decode_mp4((tmp_path / "served.mp4").read_bytes()), cli_frames)


def cli_generate(folder: Path, *args: str) -> np.ndarray:
    """Frames of `magi1 generate` run as a user runs it, with the served model and FAST's seed and steps."""
    done = subprocess.run([str(Path(sys.executable).with_name("magi1")), "generate", "--config_file", "demo_distill",
                           "--device", "cpu", "--seed", str(FAST["seed"]), "--steps", str(STEPS), *args, "--quiet",
                           "--output_path", "cli.mp4"], cwd=folder, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return decode_mp4((folder / "cli.mp4").read_bytes())

def test_a_video_from_another_encoder_is_still_stitched(client, source):
    limits = limits_of(client)
    original = decode_mp4(source[1])
    upload = mp4_of(original, crf=10)  # other encoder settings: its packets cannot simply be copied
    extension = client.videos.extend(video=("other.mp4", upload, "video/mp4"), prompt="on", seconds="1",
                                     extra_body=FAST)
    extension = wait_until_finished(client, extension.id)
    stitched = decode_mp4(client.videos.download_content(extension.id).read())
    assert extension.status == "completed" and len(stitched) == 2 * limits["frames_per_chunk"]
    assert mean_abs(stitched[:len(original)], decode_mp4(upload)) < 6  # encoded again, once


def mp4_of(frames: np.ndarray, crf: int) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": str(crf)})
        stream.height, stream.width, stream.pix_fmt = *frames.shape[1:3], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def test_a_live_video_ended_by_session_stop_is_a_completed_shorter_video(magi1_server, client):
    async def stop_after_first_chunk(ws, message, log):
        if message["type"] == "video.chunk_metadata" and message["chunk"] == 0:
            await ws.send(json.dumps({"type": "session.stop"}))

    log = asyncio.run(run_session(magi1_server, {"prompt": "a red ball rolls", "seconds": 4, **FAST},
                                  stop_after_first_chunk))
    made = log["done"]["chunks"]
    assert log["done"]["status"] == "stopped" and 1 <= made < 4
    video = client.videos.retrieve(log["done"]["video_id"])
    assert (video.status, video.error, video.progress) == ("completed", None, 100)
    assert video.seconds == str(made) and video.model_extra["magi1"]["stopped"]
    job = httpx.get(f"{magi1_server.url}{video.model_extra['magi1']['job']}", headers=AUTH).json()
    assert job["state"] == "cancelled" and job["stopped"]  # the job API keeps what happened to the job
    assert extend_by_id(client, video.id).model_extra["magi1"]["extends"] == video.id  # completed: extendable


def test_a_live_video_whose_viewer_went_away_stays_cancelled(magi1_server, client):
    async def leave_after_first_chunk() -> str:
        async with websockets.connect(ws_url(magi1_server), additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"type": "session.start", "prompt": "a ball", "seconds": 4, **FAST}))
            while True:
                message = await ws.recv()
                if isinstance(message, str) and json.loads(message)["type"] == "video.chunk_metadata":
                    return json.loads(message)["video_id"]

    video = wait_until_finished(client, asyncio.run(leave_after_first_chunk()))
    assert video.status == "failed" and video.error.code == "cancelled"
    assert not video.model_extra["magi1"]["stopped"]
    # Its finished chunks are kept: the refusal to extend it says why, then how to continue them, in that order
    assert video.model_extra["magi1"]["chunks_ready"] >= 1
    with pytest.raises(openai.BadRequestError) as refused:
        extend_by_id(client, video.id)
    assert (refused.value.param, refused.value.code) == ("video", "video_failed")
    reason, _, advice = refused.value.message.partition(", so it cannot be extended")
    assert reason.endswith("chunk(s)"), refused.value.message
    assert advice.endswith("download its content and upload that mp4 as video"), refused.value.message
