"""Per-step latent previews on the server: the real pipeline over HTTP, and the page in real Chromium."""

from __future__ import annotations

import io

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from magi1.server.app import create_app  # noqa: E402
from magi1.server.background import serve_in_background  # noqa: E402
from magi1.server.settings import LOOPBACK_HOSTS, ServerSettings  # noqa: E402
from test_server import FakePipeline, wait_for, wait_ready  # noqa: E402
from test_server_browser import ARTIFACTS, drive_page  # noqa: E402


def test_a_running_job_serves_a_latent_preview_of_its_chunks(tiny_pipeline, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("MAGI1_CACHE", str(tmp_path / "cache"))  # where a fitted preview map is kept
    tiny_pipeline.latent_preview  # the map is ready (shipped, cached or fitted once), as after a first job
    app = create_app(lambda: tiny_pipeline, ServerSettings(results_dir=tmp_path / "results"))
    with serve_in_background(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        wait_ready(client)
        job = client.post("/v1/jobs", json={"prompt": "a red ball bounces", "num_frames": 48, "seed": 1}).json()
        assert client.get(f"{job['urls']['self']}/preview.png").status_code in (200, 404)  # 404 before a step
        done = wait_for(client, job["id"], lambda j: j["state"] == "done", "done")
        response = client.get(done["urls"]["preview"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    # the window's chunks side by side, one latent frame each (4x4 cells), scaled up to 128 pixels high
    assert image.shape[0] == 128 and image.shape[1] % 128 == 0 and image.std() > 0


class PreviewingFakePipeline(FakePipeline):
    """The fake pipeline, with the preview function the real one puts in its step events."""

    _preview = object()  # the preview map is ready

    def stream(self, *args, callback=None, **kwargs):
        def with_preview(event):
            if event.get("type") == "step":
                cells = np.zeros((1, 6, 4, 4, 3), np.uint8)
                cells[..., event["step"] % 3] = 220
                event = {**event, "preview": lambda: cells, "chunk_frames": 6}
            callback(event)

        return super().stream(*args, callback=with_preview if callback else None, **kwargs)


def test_the_page_shows_the_step_preview_while_a_job_runs(tmp_path):
    pipeline = PreviewingFakePipeline(step_delay=0.05)

    def preview_is_shown(page):
        page.wait_for_function("() => { const p = document.getElementById('step-preview');"
                               " return !p.hidden && p.naturalHeight === 128; }", timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "serve-page-step-preview.png"), full_page=True)
        pipeline.release.set()
        page.wait_for_function("() => document.getElementById('step-preview').hidden", timeout=20_000)

    try:
        drive_page(tmp_path, lambda: pipeline, ARTIFACTS / "serve-page-preview-first-chunk.png", play_timeout_s=30,
                   prompt="hold: a red ball bounces", extra_fields={"num_frames": "16", "height": "64",
                                                                     "width": "96"},
                   after_play=preview_is_shown,
                   max_job_cost=10**7)  # the fake's default job is tiny; this one is 24x it
    finally:
        pipeline.release.set()
