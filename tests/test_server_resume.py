"""`magi1 serve` with the real pipeline: stop mid-job, restart, resume; cancel keeps a playable video (issue 13).

One model, two server processes on one results folder: the first is stopped with SIGTERM while a job is
half done; the second finishes that job from its saved state and then runs the same job uninterrupted, and
the two videos must decode to the same frames. A cancelled job keeps its finished chunks as a video.
"""

from __future__ import annotations

import io
import json
import signal
import time

import av
import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_process import ServeProcess  # noqa: E402

WAIT_S = 240.0
CHUNKS = 8  # the tiny model's chunks come out a step apart: enough of them that a stop lands mid-job


def model_args(tiny_model, tmp_path) -> list[str]:
    """The real pipeline on the session's tiny random model in the official layout (the demo model's weights
    are being retrained during the session, and a tiny model keeps the test within its time budget)."""
    return ["--config_file", str(tiny_model), "--results_dir", str(tmp_path / "results"), "--device", "cpu"]


def decoded(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), format="mp4") as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


class Watcher:
    """Polls a job (bounded), checking on every look that the step counter never passes its total."""

    def __init__(self, client):
        self.client = client
        self.looks = 0

    def until(self, job_id: str, predicate, what: str) -> dict:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            self.looks += 1
            if job["step"] is not None:
                assert 1 <= job["step"] <= job["total_steps"], job
            assert 0.0 <= job["progress"] <= 1.0 and (job["num_chunks"] is None or
                                                      job["chunks_ready"] <= job["num_chunks"]), job
            if predicate(job):
                return job
            time.sleep(0.1)  # gently: each look takes the GIL from the render
        raise AssertionError(f"job {job_id} never became {what}: {job}")

    def finished(self, job_id: str) -> dict:
        return self.until(job_id, lambda j: j["state"] in ("done", "failed", "cancelled"), "finished")


def wait_model(client) -> dict:
    deadline = time.monotonic() + WAIT_S
    while (health := client.get("/health").json())["model"] == "loading":
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.1)
    assert health["model"] == "ready", health
    return client.get("/v1/info").json()["defaults"]


def test_sigterm_then_restart_resumes_to_the_same_video_and_cancel_keeps_chunks(tiny_model, tmp_path):
    args = model_args(tiny_model, tmp_path)
    env = {"MAGI1_CACHE": str(tmp_path / "cache")}  # a preview map fitted for the tiny VAE stays in the test
    with ServeProcess(args, env=env) as first, httpx.Client(base_url=first.url, timeout=60) as client:
        defaults = wait_model(client)
        job_fields = {"prompt": "a red ball falls and bounces", "seed": 3, "steps": defaults["window_size"] or 4,
                      "num_frames": CHUNKS * defaults["frames_per_chunk"], "height": 32, "width": 32}
        interrupted = client.post("/v1/jobs", json=job_fields).json()
        watch = Watcher(client)
        seen = watch.until(interrupted["id"], lambda j: j["chunks_ready"] >= 1, "one chunk in")
        assert seen["state"] == "running" and seen["chunks_ready"] < CHUNKS, seen
        code, seconds = first.stop(signal.SIGTERM)
    print(f"SIGTERM mid-job: stopped in {seconds:.1f}s, exit code {code}")
    assert seconds < 10 and "terminate called" not in first.log, first.log[-3000:]
    record = json.loads((tmp_path / "results" / interrupted["id"] / "job.json").read_text())
    # "queued" if it stopped at a step boundary in time, "running" if the process left mid-step: either way
    # unfinished, with the state of its finished chunks saved.
    assert record["state"] in ("queued", "running") and 1 <= record["resumable_chunks"] < CHUNKS, record

    with ServeProcess(args, env=env) as second, httpx.Client(base_url=second.url, timeout=60) as client:
        watch = Watcher(client)
        resumed = watch.finished(interrupted["id"])
        assert resumed["state"] == "done" and resumed["resumed_chunks"] == record["resumable_chunks"], resumed
        assert resumed["step"] == resumed["total_steps"]
        reference = watch.finished(client.post("/v1/jobs", json=job_fields).json()["id"])
        assert reference["state"] == "done" and reference["resumed_chunks"] == 0
        resumed_frames = decoded(client.get(resumed["urls"]["video"]).content)
        reference_frames = decoded(client.get(reference["urls"]["video"]).content)
        assert resumed_frames.shape == reference_frames.shape == (job_fields["num_frames"], 32, 32, 3)
        assert np.array_equal(resumed_frames, reference_frames)  # resume, not restart: the same video

        for _attempt in range(3):  # a cancel that comes after the last chunk leaves the job "done": try again
            cancelled = client.post("/v1/jobs", json=job_fields).json()
            watch.until(cancelled["id"], lambda j: j["chunks_ready"] >= 1, "one chunk in")
            assert client.post(f"/v1/jobs/{cancelled['id']}/cancel").status_code in (200, 409)
            cancelled = watch.finished(cancelled["id"])
            if cancelled["state"] != "done":
                break
        kept = cancelled["chunks_ready"]
        assert cancelled["state"] == "cancelled" and 1 <= kept < CHUNKS and cancelled["error"] is None, cancelled
        partial = decoded(client.get(cancelled["urls"]["video"]).content)  # a playable video of the kept chunks
        assert len(partial) == kept * defaults["frames_per_chunk"] and len(cancelled["urls"]["chunks"]) == kept
        for index in range(kept):  # each kept chunk is the reference's chunk
            mine = client.get(cancelled["urls"]["chunks"][index]).content
            assert np.array_equal(decoded(mine), decoded(client.get(reference["urls"]["chunks"][index]).content))
        print(f"resumed after {record['resumable_chunks']} chunk(s); cancelled job kept {kept} chunk(s); "
              f"{watch.looks} progress looks, none past its total")
        code, seconds = second.stop(signal.SIGINT)
        assert seconds < 10 and "terminate called" not in second.log


def test_a_live_video_the_server_died_streaming_fails_instead_of_running_for_nobody(tiny_model, tmp_path):
    """SIGKILL mid-stream: on restart the live job's viewer is gone, as when a viewer disconnects, so it is not
    made again for nobody (it used to run to completion, without the prompt changes it had been sent); it
    fails saying why, keeps the chunks it finished, and the queue is free for the next job."""
    import asyncio

    websockets = pytest.importorskip("websockets")
    args = model_args(tiny_model, tmp_path)
    env = {"MAGI1_CACHE": str(tmp_path / "cache")}

    async def watch_one_chunk(url: str, frames: int) -> str:
        async with websockets.connect(url.replace("http://", "ws://") + "/v1/realtime/video") as ws:
            await ws.send(json.dumps({"type": "session.start", "prompt": "a red ball", "frames": frames,
                                      "size": "32x32", "seed": 3}))
            while True:
                message = await asyncio.wait_for(ws.recv(), WAIT_S)
                if isinstance(message, bytes):
                    return video_id
                event = json.loads(message)
                assert event["type"] != "error", event
                if event["type"] == "video.start":
                    video_id = event["video_id"]

    with ServeProcess(args, env=env) as first, httpx.Client(base_url=first.url, timeout=60) as client:
        defaults = wait_model(client)
        video_id = asyncio.run(watch_one_chunk(first.url, CHUNKS * defaults["frames_per_chunk"]))
        first.stop(signal.SIGKILL)
    job_id = video_id.removeprefix("video_")
    with ServeProcess(args, env=env) as second, httpx.Client(base_url=second.url, timeout=60) as client:
        wait_model(client)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "failed" and "viewer is gone" in job["error"], job
        assert 1 <= job["chunks_ready"] < CHUNKS and client.get(job["urls"]["chunks"][0]).status_code == 200, job
        video = client.get(f"/v1/videos/{video_id}").json()
        assert video["status"] == "failed" and "viewer is gone" in video["error"]["message"], video
        assert client.get("/health").json()["queued"] == 0
        assert client.get(f"/v1/videos/{video_id}/content").status_code == 400
        second.stop(signal.SIGTERM)
