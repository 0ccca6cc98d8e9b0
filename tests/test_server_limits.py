"""The operator's limits of `magi1 serve`, set by its flags, on a real subprocess (issue 21): the free-disk
margin (507), the per-client cap, the per-job cost budget, and retention by bytes and by age, on /v1/jobs and
/v1/videos alike. The model is serve_fake.py's (real server code, chunks in milliseconds); every wait is
bounded.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_process import ServeProcess, assert_error, assert_openai_error  # noqa: E402

WAIT_S = 30.0
FAKE = ["--pipeline", "serve_fake:load_pipeline", "--config_file", "demo"]
SMALL_JOB = {"prompt": "a ball", "num_frames": 24, "steps": 4, "height": 32, "width": 32}  # 98,304 pixel-steps
HELD_JOB = {**SMALL_JOB, "prompt": "hold on", "num_frames": 48}                       # 196,608: within 200,000
SMALL_VIDEO = {"prompt": "a ball", "seconds": "1", "size": "32x32", "num_inference_steps": 4}


@contextlib.contextmanager
def serving(args: list[str]):
    """A client of a `magi1 serve` with these flags whose model has loaded; the server stops afterwards."""
    with ServeProcess([*FAKE, *args]) as server, httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
        deadline = time.monotonic() + WAIT_S
        while client.get("/health").json()["model"] != "ready":
            assert time.monotonic() < deadline, "the fake model never loaded"
            time.sleep(0.02)
        yield client


def wait_job(client, job_id: str, predicate, what: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        job = response.json() if response.status_code == 200 else None
        if predicate(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never became {what}: {job}")


def finished(job) -> bool:
    return job is not None and job["state"] in ("done", "failed", "cancelled")


def job_folders(results: Path) -> set[str]:
    return {p.name for p in results.iterdir() if p.is_dir()}


def test_low_disk_refuses_valid_jobs_with_507_after_checking_them(tmp_path):
    results = tmp_path / "results"
    with serving(["--results_dir", str(results), "--min_free_disk_gb", "1000000"]) as client:
        assert_error(client.post("/v1/jobs", json=SMALL_JOB), 507, "low on disk space")
        assert_openai_error(client.post("/v1/videos", json=SMALL_VIDEO), 507, None, "low on disk space")
        # An impossible job is told what is wrong with it, not that the disk is full.
        assert_error(client.post("/v1/jobs", json={**SMALL_JOB, "num_frames": "²"}), 400, "num_frames")
        assert_openai_error(client.post("/v1/videos", json={**SMALL_VIDEO, "seconds": "9"}), 400, "seconds")
        assert job_folders(results) == set()  # and no refusal left a folder behind


def test_client_cap_cost_budget_and_retention_by_bytes_and_age(tmp_path):
    results = tmp_path / "results"
    with serving(["--results_dir", str(results), "--max_jobs_per_client", "1", "--max_job_cost", "200000"]) as client:
        over = {**SMALL_JOB, "num_frames": 72}
        message = assert_error(client.post("/v1/jobs", json=over), 400, "budget of 200,000")
        assert "294,912 pixel-steps" in message and "--max_job_cost" in message
        assert_openai_error(client.post("/v1/videos", json={**SMALL_VIDEO, "seconds": "3"}), 400, None, "budget")
        held = client.post("/v1/jobs", json=HELD_JOB)
        assert held.status_code == 202, held.text
        assert held.json()["estimated_cost"]["budget_pixel_steps"] == 200_000
        held_id = held.json()["id"]
        wait_job(client, held_id, lambda j: j["chunks_ready"] >= 1, "one chunk in")
        assert_error(client.post("/v1/jobs", json=SMALL_JOB), 429, "unfinished jobs")
        capped = client.post("/v1/videos", json=SMALL_VIDEO)
        assert_openai_error(capped, 429, None, "unfinished jobs")
        assert capped.json()["error"]["type"] == "rate_limit_error" and capped.headers["retry-after"]
        client.post(f"/v1/jobs/{held_id}/cancel")
        assert wait_job(client, held_id, finished, "finished")["state"] == "cancelled"
        video = client.post("/v1/videos", json=SMALL_VIDEO).json()
        assert video["magi1"]["estimated_cost"]["pixel_steps"] == 24 * 32 * 32 * 4
        video_job = video["id"].removeprefix("video_")
        assert wait_job(client, video_job, finished, "finished")["state"] == "done"
    one_job_bytes = max(sum(f.stat().st_size for f in (results / name).iterdir()) for name in job_folders(results))

    # Restarted with room for about one finished job: the oldest go once the next job has finished.
    cap_gb = 1.5 * one_job_bytes / 2**30
    with serving(["--results_dir", str(results), "--max_results_gb", f"{cap_gb:.12f}"]) as client:
        newest = client.post("/v1/jobs", json=SMALL_JOB).json()["id"]
        assert wait_job(client, newest, finished, "finished")["state"] == "done"
        wait_job(client, held_id, lambda j: j is None, "removed")
        wait_job(client, video_job, lambda j: j is None, "removed")
        assert client.get(f"/v1/jobs/{newest}").status_code == 200
        assert job_folders(results) == {newest}

    # Restarted with a retention of about a second: the finished job goes by age.
    with serving(["--results_dir", str(results), "--result_ttl_hours", "0.0003"]) as client:
        wait_job(client, newest, lambda j: j is None, "expired")
        assert job_folders(results) == set()
