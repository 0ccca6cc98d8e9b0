"""`magi1 serve` over real loopback HTTP, with a fake pipeline that has the real one's `stream` contract.

The fake makes 4-frame, 32x32 chunks in a few milliseconds, so the queue, cancel, restart and upload
paths are exercised in seconds. Pauses are driven by events, not sleeps, so the tests are not timing-bound.
"""

from __future__ import annotations

import io
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from magi1.errors import InputError  # noqa: E402
from magi1.io.video import write_video  # noqa: E402
from magi1.server.app import create_app  # noqa: E402
from magi1.server.background import serve_in_background  # noqa: E402
from magi1.server.settings import LOOPBACK_HOSTS, ServerSettings  # noqa: E402

FRAMES_PER_CHUNK = 4
SIZE = 32
FPS = 8
WAIT_S = 20.0   # upper bound on any one wait; the happy path takes a fraction of a second


class FakePipeline:
    """Coloured chunks with the real pipeline's `stream` signature, callback events and should_stop hook.

    A prompt containing "hold" makes the run wait (checking should_stop) after its first chunk until
    `release` is set; "fail" raises an InputError like a real bad input would.
    """

    def __init__(self, step_delay: float = 0.002):
        self.step_delay = step_delay
        self.release = threading.Event()
        self.config = SimpleNamespace(runtime_config=SimpleNamespace(
            num_frames=8, video_size_h=SIZE, video_size_w=SIZE, num_steps=2, seed=7, fps=FPS,
            chunk_width=1, temporal_downsample_factor=FRAMES_PER_CHUNK, window_size=1))
        self.calls: list[dict] = []

    def settings_for(self, *, height=None, width=None, num_frames=None, num_inference_steps=None, seed=None):
        """Like the real one, rejects what its config cannot run (here: more than 50 steps)."""
        if num_inference_steps is not None and num_inference_steps > 50:
            raise InputError(f"num_steps ({num_inference_steps}) must be at most 50 for the fake model")
        return self.config, None

    @property
    def fps(self) -> int:
        return FPS

    def stream(self, prompt=None, *, chunk_prompts=None, image=None, video=None, num_frames=None, height=None,
               width=None, num_inference_steps=None, seed=None, keep_aspect=False, progress=False, callback=None,
               should_stop=None):
        from magi1.io.image import load_image
        from magi1.io.video import load_video

        r = self.config.runtime_config
        height, width = height or r.video_size_h, width or r.video_size_w
        num_frames = num_frames or r.num_frames
        steps = num_inference_steps or r.num_steps
        self.calls.append({"prompt": prompt, "chunk_prompts": chunk_prompts, "image": image, "video": video})
        if prompt and "fail" in prompt:
            raise InputError("the fake pipeline was asked to fail")
        # Read the conditioning file the way the real pipeline does, so stored uploads must be loadable.
        if image is not None:
            load_image(image, height, width)
        if video is not None:
            load_video(video, height, width, FPS, max_frames=4)
        num_chunks = math.ceil(num_frames / FRAMES_PER_CHUNK)
        total = num_chunks * steps
        for index in range(num_chunks):
            for step in range(steps):
                if should_stop and should_stop():
                    return
                time.sleep(self.step_delay)
                if callback:
                    callback({"type": "step", "step": index * steps + step + 1, "total_steps": total})
            frames = np.zeros((FRAMES_PER_CHUNK, height, width, 3), np.uint8)
            frames[..., index % 3] = 200
            if callback:
                callback({"type": "chunk", "index": index, "num_chunks": num_chunks})
            yield SimpleNamespace(index=index, num_chunks=num_chunks, frames=frames)
            if prompt and "breaks midway" in prompt:
                raise RuntimeError("the fake pipeline broke after its first chunk")
            if prompt and "hold" in prompt:
                while not self.release.wait(0.01):
                    if should_stop and should_stop():
                        return


# ---------------------------------------------------------------------------------------------- helpers
def make_settings(tmp_path: Path, **changes) -> ServerSettings:
    return ServerSettings(results_dir=tmp_path / "results", **changes)


def wait_for(client, job_id: str, predicate, what: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never became {what}; last seen {job}")


def wait_ready(client) -> None:
    deadline = time.monotonic() + WAIT_S
    while client.get("/health").json()["model"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_finished(client, job_id: str) -> dict:
    return wait_for(client, job_id, lambda j: j["state"] in ("done", "failed", "cancelled"), "finished")


def submit(client, **fields) -> httpx.Response:
    files = fields.pop("files", None)
    data = {k: str(v) for k, v in fields.items()}
    return client.post("/v1/jobs", data=data, files=files)


def mp4_frames(data: bytes) -> tuple[int, int, int]:
    """(frames, height, width) of an mp4 held in memory; fails if it does not decode."""
    with av.open(io.BytesIO(data), format="mp4") as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return len(frames), frames[0].shape[0], frames[0].shape[1]


def job_folders(results: Path) -> list[str]:
    """Every entry of a results folder but its lock file (job folders, and anything left behind)."""
    return sorted(p.name for p in results.iterdir() if p.name != ".magi1-serve.lock")


def png_bytes(size=(40, 30), noise=False) -> bytes:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8) if noise else np.full(shape, 90, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path):
    """(client, pipeline, app) for a server on loopback with default limits."""
    pipeline = FakePipeline()
    app = create_app(lambda: pipeline, make_settings(tmp_path))
    with serve_in_background(app) as base_url, httpx.Client(base_url=base_url, timeout=WAIT_S) as client:
        yield client, pipeline, app
        pipeline.release.set()  # let a held job end so shutdown is quick


# ---------------------------------------------------------------------------------------------- tests
def test_page_health_and_info(server):
    client, _, _ = server
    page = client.get("/")
    assert page.status_code == 200 and "<video" in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    wait_ready(client)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "ready" and health["queued"] == 0
    info = client.get("/v1/info").json()
    assert info["defaults"]["height"] == SIZE and info["defaults"]["frames_per_chunk"] == FRAMES_PER_CHUNK
    assert info["limits"]["max_frames"] == ServerSettings().max_frames


def test_submit_progress_and_valid_mp4(server):
    client, pipeline, _ = server
    response = submit(client, prompt="three coloured chunks", num_frames=12, steps=3, seed=5)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and len(job["id"]) == 32
    seen_progress = [job["progress"]]
    while job["state"] not in ("done", "failed", "cancelled"):
        job = client.get(f"/v1/jobs/{job['id']}").json()
        seen_progress.append(job["progress"])
        time.sleep(0.01)
    assert job["state"] == "done", job
    assert job["progress"] == 1.0 and seen_progress == sorted(seen_progress)
    assert job["chunks_ready"] == job["num_chunks"] == 3 and len(job["urls"]["chunks"]) == 3
    assert job["settings"] == {"num_frames": 12, "height": None, "width": None, "steps": 3, "seed": 5,
                               "keep_aspect": False}
    video = client.get(job["urls"]["video"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert mp4_frames(video.content) == (12, SIZE, SIZE)
    chunk = client.get(job["urls"]["chunks"][1])
    assert chunk.status_code == 200 and mp4_frames(chunk.content) == (FRAMES_PER_CHUNK, SIZE, SIZE)
    download = client.get(f"{job['urls']['video']}?download=1")
    assert "attachment" in download.headers["content-disposition"]
    listed = client.get("/v1/jobs").json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert pipeline.calls[-1]["prompt"] == "three coloured chunks"


def test_json_body_and_chunk_prompts(server):
    client, pipeline, _ = server
    response = client.post("/v1/jobs", json={"prompt": "start", "chunk_prompts": {"1": "then this"}, "num_frames": 8})
    assert response.status_code == 202, response.text
    assert wait_finished(client, response.json()["id"])["state"] == "done"
    assert pipeline.calls[-1]["chunk_prompts"] == {1: "then this"}
    listed = submit(client, prompt="a", chunk_prompts='["first", "second"]', num_frames=4)
    assert listed.status_code == 202 and listed.json()["chunk_prompts"] == {"0": "first", "1": "second"}


def test_chunks_stream_while_running(server):
    client, pipeline, _ = server
    job = submit(client, prompt="hold after the first chunk", num_frames=12).json()
    job = wait_for(client, job["id"], lambda j: j["chunks_ready"] >= 1, "one chunk in")
    assert job["state"] == "running" and job["num_chunks"] == 3
    first = client.get(f"/v1/jobs/{job['id']}/chunks/0")
    assert first.status_code == 200 and mp4_frames(first.content)[0] == FRAMES_PER_CHUNK
    later = client.get(f"/v1/jobs/{job['id']}/chunks/2.mp4")
    assert later.status_code == 425 and "not ready" in later.json()["detail"]
    whole = client.get(f"/v1/jobs/{job['id']}/video")
    assert whole.status_code == 409 and "running" in whole.json()["detail"]
    pipeline.release.set()
    assert wait_finished(client, job["id"])["state"] == "done"
    assert client.get(f"/v1/jobs/{job['id']}/chunks/3").status_code == 404


def test_cancel_running_and_queued(server):
    client, _, _ = server
    running = submit(client, prompt="hold me", num_frames=12).json()
    wait_for(client, running["id"], lambda j: j["chunks_ready"] >= 1, "one chunk in")
    queued = submit(client, prompt="waiting", num_frames=4).json()
    assert client.get(f"/v1/jobs/{queued['id']}").json()["queue_position"] == 1
    response = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    response = client.post(f"/v1/jobs/{running['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    final = wait_finished(client, running["id"])
    assert final["state"] == "cancelled" and final["chunks_ready"] == 1
    # The chunk finished before the cancel is kept, as a playable video.
    assert mp4_frames(client.get(final["urls"]["video"]).content)[0] == FRAMES_PER_CHUNK
    assert client.post(f"/v1/jobs/{running['id']}/cancel").status_code == 409
    assert client.get(f"/v1/jobs/{queued['id']}/video").status_code == 409


def test_queue_full_gets_429_and_nothing_accepted_is_lost(tmp_path):
    pipeline = FakePipeline()
    app = create_app(lambda: pipeline, make_settings(tmp_path, max_queue=2))
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        first = submit(client, prompt="hold the worker", num_frames=8).json()
        wait_for(client, first["id"], lambda j: j["state"] == "running", "running")
        accepted = [submit(client, prompt=f"job {i}", num_frames=4) for i in range(2)]
        assert [r.status_code for r in accepted] == [202, 202]
        refused = submit(client, prompt="one too many", num_frames=4)
        assert refused.status_code == 429 and "queue is full" in refused.json()["detail"]
        assert refused.headers.get("retry-after")
        pipeline.release.set()
        states = [wait_finished(client, j["id"])["state"] for j in [first] + [r.json() for r in accepted]]
        assert states == ["done", "done", "done"]
        assert len(job_folders(tmp_path / "results")) == 3  # the refused job left no folder behind


def test_bad_uploads_and_fields_get_clear_4xx(tmp_path):
    pipeline = FakePipeline()
    app = create_app(lambda: pipeline, make_settings(tmp_path, max_upload_bytes=6000, max_frames=16))
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    cases = [
        ({"mode": "i2v", "files": {"file": ("a.png", b"this is not an image", "image/png")}}, 415, "not a decodable"),
        ({"mode": "i2v", "files": {"file": ("a.png", png_bytes()[:60], "image/png")}}, 415, "cannot be decoded"),
        ({"mode": "i2v", "files": {"file": ("a.png", b"", "image/png")}}, 400, "empty"),
        ({"mode": "i2v", "files": {"file": ("a.gif", gif.getvalue(), "image/gif")}}, 415, "not a decodable"),
        ({"mode": "i2v", "files": {"file": ("big.png", png_bytes((64, 64), noise=True), "image/png")}}, 413, "larger"),
        ({"mode": "v2v", "files": {"file": ("v.mp4", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64, "video/mp4")}},
         415, "cannot be decoded"),
        ({"mode": "v2v", "files": {"file": ("p.m3u8", b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", "video/mp4")}},
         415, "not a decodable"),
        ({"mode": "v2v", "files": {"file": ("a.png", png_bytes(), "image/png")}}, 400, "needs a video"),
        ({"mode": "i2v"}, 400, "needs an uploaded image"),
        ({"mode": "t2v", "files": {"file": ("a.png", png_bytes(), "image/png")}}, 400, "takes no file"),
        ({"mode": "x2v"}, 400, "mode must be"),
        ({"height": 33}, 400, "multiple of 16"),
        ({"num_frames": 17}, 400, "between 1 and 16"),
        ({"steps": "many"}, 400, "whole number"),
        ({"steps": 99}, 400, "the model cannot run these settings"),
        ({"colour": "red"}, 400, "unknown field"),
        ({"chunk_prompts": "{not json"}, 400, "JSON"),
        ({"prompt": "   "}, 400, "prompt is required"),
    ]
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        wait_ready(client)  # the model's own checks run once it has loaded
        for fields, status, words in cases:
            response = submit(client, **{"prompt": "p", **fields})
            assert response.status_code == status, (fields.get("mode"), response.text)
            assert words in response.json()["detail"], response.json()
        # Oversized bodies are cut off before they are read in full.
        # Declare a too-large body and send only the headers: the answer must come without reading it (sending
        # the body too races the server's early close and can end in a connection reset instead of the 413).
        import http.client
        from urllib.parse import urlsplit

        where = urlsplit(url)
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=WAIT_S)
        conn.putrequest("POST", "/v1/jobs")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", "1100000")
        conn.endheaders()
        huge = conn.getresponse()
        assert huge.status == 413
        conn.close()

        def undeclared_length():  # chunked transfer: no Content-Length to check up front
            yield (b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                   b"Content-Type: image/png\r\n\r\n")
            for _ in range(12):
                yield b"x" * 100_000

        try:
            streamed = client.post("/v1/jobs", content=undeclared_length(),
                                   headers={"content-type": "multipart/form-data; boundary=abc"})
            assert streamed.status_code == 413 and "larger than this server accepts" in streamed.json()["detail"]
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            pass  # the server stopped reading past the cap and closed while we were still sending: cut off too
        assert client.post("/v1/jobs", content=b"prompt=p", headers={"content-type": "text/plain"}).status_code == 415
        # A page on another site cannot submit through the visitor's browser.
        foreign = client.post("/v1/jobs", data={"prompt": "p"}, headers={"origin": "http://evil.example"})
        assert foreign.status_code == 403
        # Clients never name files: odd ids and chunk names are simply unknown.
        for path in ("/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/v1/jobs/../../etc/passwd/video",
                     "/v1/jobs/" + "0" * 32 + "/video"):
            assert client.get(path).status_code == 404
        # Nothing refused left a folder behind.
        assert job_folders(tmp_path / "results") == []

        # And good uploads work, each stored under a server-chosen name.
        image_job = submit(client, prompt="p", num_frames=4, files={"file": ("../../x.png", png_bytes(), "image/png")})
        assert image_job.status_code == 202, image_job.text
        assert image_job.json()["mode"] == "i2v"  # inferred from the upload
        clip = tmp_path / "clip.mp4"
        write_video(clip, np.full((6, 24, 32, 3), 120, np.uint8), fps=FPS)
        video_job = submit(client, mode="v2v", prompt="p", num_frames=4,
                           files={"file": ("clip.mp4", clip.read_bytes(), "application/octet-stream")})
        assert video_job.status_code == 202, video_job.text
        for job in (image_job.json(), video_job.json()):
            assert wait_finished(client, job["id"])["state"] == "done"
        stored = sorted(p.name for p in (tmp_path / "results").rglob("input.*"))
        assert stored == ["input.mp4", "input.png"]
        assert pipeline.calls[-1]["video"].endswith("input.mp4")


def test_failed_job_reports_the_reason(server):
    client, _, _ = server
    job = submit(client, prompt="please fail", num_frames=4).json()
    final = wait_finished(client, job["id"])
    assert final["state"] == "failed" and "asked to fail" in final["error"]
    assert "failed" in client.get(f"/v1/jobs/{job['id']}/video").json()["detail"]
    # The worker goes on with the next job.
    assert wait_finished(client, submit(client, prompt="fine", num_frames=4).json()["id"])["state"] == "done"


def test_a_job_failing_after_a_chunk_leaves_no_unfinished_video_file(server, tmp_path):
    client, _, _ = server
    job = submit(client, prompt="it breaks midway", num_frames=2 * FRAMES_PER_CHUNK).json()
    assert wait_finished(client, job["id"])["state"] == "failed"
    folder = next(p for p in (tmp_path / "results").rglob("*") if p.is_dir() and job["id"] in p.name)
    assert not [p.name for p in folder.iterdir() if "partial" in p.name]
    assert not (folder / "video.mp4").exists()


def test_eight_concurrent_clients_all_served(tmp_path):
    pipeline = FakePipeline()
    app = create_app(lambda: pipeline, make_settings(tmp_path, max_queue=8))

    def one_client(index: int, url: str) -> tuple[int, int, int]:
        with httpx.Client(base_url=url, timeout=WAIT_S) as client:
            response = submit(client, prompt=f"client {index}", num_frames=8, seed=index)
            assert response.status_code == 202, response.text
            final = wait_finished(client, response.json()["id"])
            assert final["state"] == "done", final
            return mp4_frames(client.get(final["urls"]["video"]).content)

    with serve_in_background(app) as url:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda i: one_client(i, url), range(8)))
    assert results == [(8, SIZE, SIZE)] * 8


def test_delete_and_expiry(tmp_path):
    pipeline = FakePipeline()
    settings = make_settings(tmp_path, result_ttl_s=0.3, sweep_interval_s=0.05)
    app = create_app(lambda: pipeline, settings)
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        held = submit(client, prompt="hold", num_frames=8).json()
        wait_for(client, held["id"], lambda j: j["chunks_ready"] >= 1, "one chunk in")
        response = client.delete(f"/v1/jobs/{held['id']}")
        assert response.status_code == 200 and response.json()["deleted"] is True
        assert client.get(f"/v1/jobs/{held['id']}").status_code == 404
        deadline = time.monotonic() + WAIT_S
        while (settings.results_dir / held["id"]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not (settings.results_dir / held["id"]).exists()

        done = submit(client, prompt="short lived", num_frames=4).json()
        assert wait_finished(client, done["id"])["state"] == "done"
        deadline = time.monotonic() + WAIT_S
        while client.get(f"/v1/jobs/{done['id']}").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get(f"/v1/jobs/{done['id']}").status_code == 404
        assert not (settings.results_dir / done["id"]).exists()


def test_restart_takes_back_accepted_jobs(tmp_path):
    settings = make_settings(tmp_path)
    first_pipeline = FakePipeline()
    with serve_in_background(create_app(lambda: first_pipeline, settings)) as url, \
            httpx.Client(base_url=url, timeout=WAIT_S) as client:
        finished = submit(client, prompt="finished before the restart", num_frames=4).json()
        assert wait_finished(client, finished["id"])["state"] == "done"
        interrupted = submit(client, prompt="hold: interrupted by the restart", num_frames=8).json()
        wait_for(client, interrupted["id"], lambda j: j["chunks_ready"] >= 1, "one chunk in")
        waiting = submit(client, prompt="still queued at the restart", num_frames=4).json()
    # The server is down; a new one on the same results folder finishes what the old one accepted.
    second_pipeline = FakePipeline()
    second_pipeline.release.set()
    with serve_in_background(create_app(lambda: second_pipeline, settings)) as url, \
            httpx.Client(base_url=url, timeout=WAIT_S) as client:
        states = {j: wait_finished(client, j)["state"] for j in (finished["id"], interrupted["id"], waiting["id"])}
        assert set(states.values()) == {"done"}
        assert mp4_frames(client.get(f"/v1/jobs/{interrupted['id']}/video").content)[0] == 8
        assert [c["prompt"] for c in second_pipeline.calls] == ["hold: interrupted by the restart",
                                                                "still queued at the restart"]


def test_model_that_fails_to_load_refuses_jobs_clearly(tmp_path):
    def broken():
        raise InputError("weights folder /nowhere is missing")

    with serve_in_background(create_app(broken, make_settings(tmp_path))) as url, \
            httpx.Client(base_url=url, timeout=WAIT_S) as client:
        wait_ready(client)
        assert client.get("/health").json()["model"] == "failed"
        response = submit(client, prompt="p")
        assert response.status_code == 503 and "/nowhere is missing" in response.json()["detail"]


def test_host_header_checked_when_bound_to_loopback(tmp_path):
    app = create_app(FakePipeline, make_settings(tmp_path, allowed_hosts=LOOPBACK_HOSTS))
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"host": "attacker.example"}).status_code == 400
