"""`magi1 serve` under abuse and careless use, as a real subprocess on 127.0.0.1 (issue 21).

One server per purpose, started once for the module, on the fake pipeline of serve_fake.py (the real
server code, a model that renders in milliseconds). Every error must come in the one error shape with the
security headers, and no request may get a 500. Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import http.client
import io
import json
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_process import SECURITY_HEADERS, ServeProcess, assert_error, assert_openai_error  # noqa: E402

from magi1.io.video import write_video  # noqa: E402

WAIT_S = 30.0
FAKE = ["--pipeline", "serve_fake:load_pipeline", "--config_file", "demo"]
SMALL_JOB = {"prompt": "a ball", "num_frames": 24, "steps": 4, "height": 32, "width": 32}
SMALL_VIDEO = {"prompt": "a ball", "seconds": "1", "size": "32x32", "num_inference_steps": 4}  # the Videos API's
HELD_JOB = {**SMALL_JOB, "num_frames": 48}  # "hold" waits after chunk 0 of 2


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The main server: small queue, short connection timeouts, a model that loads when the gate opens."""
    folder = tmp_path_factory.mktemp("abuse")
    gate = folder / "gate"
    process = ServeProcess([*FAKE, "--results_dir", str(folder / "results"), "--max_queue", "2",
                            "--header_timeout", "1.5", "--body_timeout", "2", "--keep_alive_timeout", "1"],
                           env={"MAGI1_FAKE_LOAD_GATE": str(gate)})
    with process:
        process.folder, process.gate = folder, gate
        yield process


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        yield http


@pytest.fixture
def ready(server, client):
    """The main server with its model loaded."""
    server.gate.touch()
    deadline = time.monotonic() + WAIT_S
    while client.get("/health").json()["model"] != "ready":
        assert time.monotonic() < deadline, "the fake model never loaded"
        time.sleep(0.02)
    return client


def wait_finished(client, job_id: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def wait_state(client, job_id: str, predicate, what: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never became {what}: {job}")


def png_bytes(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def mp4_bytes(tmp_path: Path, frames: int = 24) -> bytes:
    rng = np.random.default_rng(0)
    path = tmp_path / "clip.mp4"
    write_video(path, rng.integers(0, 255, (frames, 48, 64, 3), dtype=np.uint8), fps=8)
    return path.read_bytes()


def damaged_after_first_frames(data: bytes) -> bytes:
    """An mp4 whose first frames decode and whose later frames do not (noise written over the last third)."""
    start = data.find(b"mdat")
    end = data.find(b"moov") if data.find(b"moov") > start else len(data)
    cut = start + (end - start) * 2 // 3
    noise = np.random.default_rng(1).integers(0, 255, 2000, dtype=np.uint8).tobytes()
    return data[:cut] + noise + data[cut + len(noise):]


def raw_exchange(url: str, data: bytes, *, timeout_s: float = 10.0, send_all: bool = True):
    """Send raw bytes; (status, headers, body) of the answer, or (None, {}, b"") if the server just closed."""
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None, {}, b""
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def assert_raw_error(status, headers, body, expected):
    assert status == expected, (status, body[:300])
    for name in SECURITY_HEADERS:
        assert name in headers, (name, headers)
    payload = json.loads(body)
    assert payload["error"]["message"] == payload["detail"]


# ---------------------------------------------------------------------------------------------- while loading
def test_invalid_settings_refused_while_the_model_loads(server, client):
    """Limits come from the config, so bad settings are told why even before the model is there."""
    if client.get("/health").json()["model"] != "loading":
        pytest.skip("the model had already loaded (this test runs first in the module)")
    cases = [({"prompt": "p", "steps": 30}, "steps must be a multiple of 4"),    # the demo window is 4
             ({"prompt": "p", "num_frames": 2}, "no new chunk"),
             ({"prompt": "p", "num_frames": 3}, "no new chunk"),
             ({"prompt": "p", "height": 40}, "multiple of 16"),
             ({"prompt": "p", "num_frames": 192, "height": 1280, "width": 1280, "steps": 128}, "budget")]
    for fields, words in cases:
        assert_error(client.post("/v1/jobs", json=fields), 400, words)
    # The Videos API too: its limits are the config's, stated by /v1/models while the model loads.
    stated = client.get("/v1/models").json()["data"][0]
    assert stated["status"] == "loading" and stated["magi1"]["frames_per_chunk"] == 24
    for fields, param in (({"prompt": "p", "num_inference_steps": 30}, "num_inference_steps"),
                          ({"prompt": "p", "size": "1280x1280"}, "size"), ({"prompt": "p", "seconds": "99"}, "seconds")):
        assert_openai_error(client.post("/v1/videos", json=fields), 400, param)
    assert client.get("/health").json()["model"] == "loading"  # really checked while loading
    assert client.get("/v1/info").json()["defaults"]["frames_per_chunk"] == 24


# ---------------------------------------------------------------------------------------------- bodies
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the server's RSS from /proc")
def test_20_mib_json_body_does_not_grow_the_server(server, ready):
    rss_before, peak_before = server.memory_kb("VmRSS"), server.memory_kb("VmHWM")
    size = 20 * 1024 * 1024
    # A declared 20 MiB: refused from the headers alone (sending the body too would race the early close).
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    assert_raw_error(*raw_exchange(server.url, head), 413)
    # The same body without a declared length (chunked) is read only up to the cap, then cut off.
    body = b'{"prompt": "' + b"x" * size + b'"}'
    chunked = head.replace(f"Content-Length: {size}".encode(), b"Transfer-Encoding: chunked")
    step = 256 * 1024
    pieces = b"".join(b"%x\r\n" % len(body[i:i + step]) + body[i:i + step] + b"\r\n"
                      for i in range(0, len(body), step)) + b"0\r\n\r\n"
    status, headers, answer = raw_exchange(server.url, chunked + pieces)
    if status is not None:  # or the connection was reset while we were still sending: cut off too
        assert_raw_error(status, headers, answer, 413)
    rss_after, peak_after = server.memory_kb("VmRSS"), server.memory_kb("VmHWM")
    print(f"server RSS {rss_before} -> {rss_after} kB, peak {peak_before} -> {peak_after} kB")
    assert rss_after - rss_before < 20 * 1024 and peak_after - peak_before < 20 * 1024
    # A form body is capped the same way; only multipart carries a file.
    form_head = head.replace(b"application/json", b"application/x-www-form-urlencoded").replace(
        str(size).encode(), str(2 * 1024 * 1024).encode())
    assert_raw_error(*raw_exchange(server.url, form_head), 413)
    # A multipart body carrying a file may be far larger than the small cap: it streams to disk.
    image = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(image, "PNG")
    assert len(image.getvalue()) > 1024 * 1024
    response = ready.post("/v1/jobs", data={**SMALL_JOB, "mode": "i2v"}, files={"file": ("big.png", image.getvalue())})
    assert response.status_code == 202, response.text
    assert wait_finished(ready, response.json()["id"])["state"] == "done"


def test_malformed_numbers_and_json_get_400(ready):
    for bad in ("²", "①", "--5", "٣", "1e3", "0x10", "+-3", "1_000", "4.5", "12abc", "9" * 30, "4\u00a0"):
        for sender in ("json", "form"):
            fields = {"prompt": "p", "num_frames": bad}
            response = ready.post("/v1/jobs", json=fields) if sender == "json" else ready.post("/v1/jobs", data=fields)
            assert_error(response, 400, "num_frames")
    for bad in (True, 4.5, [4], {"n": 4}, "null"):
        assert_error(ready.post("/v1/jobs", json={"prompt": "p", "seed": bad}), 400, "seed")
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_error(ready.post("/v1/jobs", content=deep, headers={"content-type": "application/json"}), 400)
    deep_object = ('{"prompt": "p", "chunk_prompts": ' + '{"0":' * 5000 + '"x"' + "}" * 5000 + "}").encode()
    assert_error(ready.post("/v1/jobs", content=deep_object, headers={"content-type": "application/json"}), 400)
    for text in (b"{", b"\xff\xfe{}", b'{"prompt": "p"} trailing', b"1" * 5000, b"[]", b"null", b""):
        assert_error(ready.post("/v1/jobs", content=text, headers={"content-type": "application/json"}), 400)


def test_unknown_fields_echo_is_capped(ready):
    many = {f"field_{i:05d}_" + "k" * 30: 1 for i in range(20_000)}
    response = ready.post("/v1/jobs", json={"prompt": "p", **many})
    message = assert_error(response, 400, "unknown field")
    assert len(response.content) < 2000 and "more" in message
    form = {f"f{i}": "1" for i in range(100)}
    assert_error(ready.post("/v1/jobs", data={"prompt": "p", **form}), 400)


# ---------------------------------------------------------------------------------------------- uploads, paths
def test_uploads_checked_in_full_and_errors_name_no_server_path(server, ready, tmp_path):
    clip = mp4_bytes(tmp_path)
    results = str(server.folder)
    cases = [(damaged_after_first_frames(clip), "v2v", 415, "cannot be decoded after frame"),
             (clip[: len(clip) // 2], "v2v", 415, "cannot be decoded"),
             (png_bytes()[:70], "i2v", 415, "cannot be decoded"),
             (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "i2v", 415, None)]
    for data, mode, status, words in cases:
        response = ready.post("/v1/jobs", data={"prompt": "p", "mode": mode}, files={"file": ("x", data)})
        message = assert_error(response, status, words)
        assert results not in message and "/tmp" not in message and "input." not in message, message
    # Jobs whose model run fails report why, without the paths the exception named.
    for prompt, words in (("please fail", "asked to fail"), ("crash now", "internal error")):
        job = ready.post("/v1/jobs", json={**SMALL_JOB, "prompt": prompt}).json()
        final = wait_finished(ready, job["id"])
        assert final["state"] == "failed" and words in final["error"], final
        for text in (final["error"], json.dumps(ready.get("/v1/jobs").json())):
            assert "/srv/" not in text and "/usr/lib" not in text and results not in text
    image_job = ready.post("/v1/jobs", data={**SMALL_JOB, "prompt": "fail on the image"},
                           files={"file": ("a.png", png_bytes())}).json()
    final = wait_finished(ready, image_job["id"])
    assert final["state"] == "failed" and results not in final["error"] and "input.png" in final["error"]
    ok = ready.post("/v1/jobs", data={**SMALL_JOB, "mode": "v2v"}, files={"file": ("c.mp4", clip)})
    assert ok.status_code == 202, ok.text
    assert wait_finished(ready, ok.json()["id"])["state"] == "done"


# ---------------------------------------------------------------------------------------------- order, queue, budget
def test_validation_comes_before_queue_full(ready):
    held = [ready.post("/v1/jobs", json={**HELD_JOB, "prompt": "hold 0"})]
    try:
        wait_state(ready, held[0].json()["id"], lambda j: j["state"] == "running", "running")
        held += [ready.post("/v1/jobs", json={**HELD_JOB, "prompt": f"hold {i}"}) for i in (1, 2)]
        assert [r.status_code for r in held] == [202] * 3, [r.text for r in held]
        assert_error(ready.post("/v1/jobs", json={"prompt": "p", "num_frames": 2}), 400, "no new chunk")
        assert_error(ready.post("/v1/jobs", json={"prompt": "p", "steps": "①"}), 400)
        over = ready.post("/v1/jobs", json={"prompt": "p", "num_frames": 192, "height": 1280, "width": 1280,
                                            "steps": 128})
        message = assert_error(over, 400, "budget")
        assert "pixel-steps" in message and "192 frames" in message
        full = ready.post("/v1/jobs", json=SMALL_JOB)
        assert_error(full, 429, "queue is full")
        assert full.headers.get("retry-after")
        # The Videos API checks in the same order, and answers in OpenAI's envelope.
        assert_openai_error(ready.post("/v1/videos", json={**SMALL_VIDEO, "seconds": "²"}), 400, "seconds")
        assert_openai_error(ready.post("/v1/videos", json={**SMALL_VIDEO, "num_inference_steps": 6}), 400,
                            "num_inference_steps", "steps must be a multiple of 4")
        full = ready.post("/v1/videos", json=SMALL_VIDEO)
        assert_openai_error(full, 429, None, "queue is full")
        assert full.json()["error"]["type"] == "rate_limit_error" and full.headers.get("retry-after")
    finally:
        for response in held:
            ready.post(f"/v1/jobs/{response.json()['id']}/cancel")
    for response in held:
        assert wait_finished(ready, response.json()["id"])["state"] == "cancelled"


def test_each_job_reports_its_estimated_cost(ready):
    job = ready.post("/v1/jobs", json=SMALL_JOB).json()
    cost = job["estimated_cost"]
    assert cost["pixel_steps"] == 24 * 32 * 32 * 4 and cost["frames"] == 24 and cost["steps"] == 4
    assert cost["budget_pixel_steps"] == ready.get("/v1/info").json()["limits"]["max_job_cost"]
    assert 0 < cost["fraction_of_budget"] < 1
    assert wait_finished(ready, job["id"])["state"] == "done"


def test_cancel_and_delete_racing_never_give_500(ready):
    statuses = []
    for round_ in range(6):
        job = ready.post("/v1/jobs", json={**HELD_JOB, "prompt": f"hold race {round_}"})
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        barrier = threading.Barrier(3)

        def hit(method, path):
            with httpx.Client(base_url=str(ready.base_url), timeout=WAIT_S) as other:
                barrier.wait(5)
                statuses.append(other.request(method, path).status_code)

        threads = [threading.Thread(target=hit, args=("POST", f"/v1/jobs/{job_id}/cancel")),
                   threading.Thread(target=hit, args=("DELETE", f"/v1/jobs/{job_id}")),
                   threading.Thread(target=hit, args=("POST", f"/v1/jobs/{job_id}/cancel"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        assert_error(ready.get(f"/v1/jobs/{job_id}"), 404)
    assert statuses and all(s in (200, 404, 409) for s in statuses), statuses


# ---------------------------------------------------------------------------------------------- lists, HEAD
def test_job_list_is_paginated(ready):
    ids = []
    for i in range(5):
        response = ready.post("/v1/jobs", json={**SMALL_JOB, "seed": i})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
        wait_finished(ready, ids[-1])
    seen, after, pages = [], None, 0
    while pages < 50:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = ready.get("/v1/jobs", params=params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [job["id"] for job in page["data"]]
        pages += 1
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert len(seen) == len(set(seen)) and seen[:5] == ids[::-1]  # newest first, no repeats
    total = ready.get("/v1/jobs", params={"limit": 100}).json()
    assert [j["id"] for j in total["data"]] == seen and total["has_more"] is False
    oldest_first = ready.get("/v1/jobs", params={"limit": 3, "order": "asc"}).json()["data"]
    assert [j["id"] for j in oldest_first] == [j["id"] for j in total["data"][::-1][:3]]
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "²"}, {"limit": "ten"}, {"after": "0" * 32},
                {"order": "sideways"}, {"page": 2}):
        assert_error(ready.get("/v1/jobs", params=bad), 400)


def test_head_answers_on_every_get_route(ready):
    job = ready.post("/v1/jobs", json=SMALL_JOB).json()
    wait_finished(ready, job["id"])
    for path in ("/", "/health", "/v1/info", "/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/video",
                 f"/v1/jobs/{job['id']}/chunks/0.mp4", "/static/app.js", "/openapi.json"):
        got, probed = ready.get(path), ready.head(path)
        assert probed.status_code == 200 == got.status_code, (path, probed.status_code)
        assert probed.content == b"" and probed.headers["content-type"] == got.headers["content-type"]
        assert int(probed.headers["content-length"]) == len(got.content), path
    missing = ready.head("/v1/jobs/" + "0" * 32)
    assert missing.status_code == 404 and missing.content == b"" and "x-frame-options" in missing.headers


# ---------------------------------------------------------------------------------------------- connections
def test_stalled_connections_are_closed(server, ready):
    where = urlsplit(server.url)
    # Headers that never finish: answered 408 and closed within the header deadline (1.5 s here).
    started = time.monotonic()
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b'"error"' in answer and b"x-frame-options" in answer.lower()
    assert time.monotonic() - started < 8
    # A connection that sends nothing is closed too; so is an idle keep-alive one (1 s here).
    for first_request in (b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):
        with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
            sock.sendall(first_request)
            started = time.monotonic()
            while sock.recv(65536):
                pass
        assert time.monotonic() - started < 8
    # A body that stops half-way: 408 within the body deadline (2 s here).
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    status, headers, body = raw_exchange(server.url, head + b'{"prompt": ', timeout_s=10)
    assert_raw_error(status, headers, body, 408)
    # Headers beyond the size limit, or not HTTP at all: 400 in the error shape.
    huge = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    assert_raw_error(*raw_exchange(server.url, huge), 431)
    assert_raw_error(*raw_exchange(server.url, b"GET /health?" + b"q" * 40_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), 431)
    assert_raw_error(*raw_exchange(server.url, b"\x16\x03\x01\x02\x00garbage\r\n\r\n"), 400)


# ---------------------------------------------------------------------------------------------- what held before
def test_traversal_xss_cors_csrf_and_rebinding_still_refused(ready):
    for path in ("/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/v1/jobs/../../etc/passwd/video", "/static/../jobs.py",
                 "/static/..%2f..%2fjobs.py", "/static/%2e%2e/app.py", "/v1/jobs/" + "0" * 32 + "/chunks/..%2Fjob.json",
                 "/v1/jobs/" + "0" * 32 + "/video", "/%2e%2e/%2e%2e/etc/passwd", "/v1/jobs/%00"):
        response = ready.get(path)
        assert_error(response, (400, 404))
        assert "root:" not in response.text
    job = ready.post("/v1/jobs", json={**SMALL_JOB, "prompt": "<script>alert(1)</script><img src=x onerror=alert(2)>"})
    assert job.status_code == 202 and job.headers["content-type"] == "application/json"
    assert "<script>" in job.json()["prompt"] and job.headers["x-content-type-options"] == "nosniff"
    reflected = ready.get("/v1/jobs/<script>alert(1)</script>")
    assert_error(reflected, 404) and "<script>" not in reflected.headers["content-type"]
    page = ready.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # CORS: no grant to other origins, and preflights are refused.
    foreign = {"origin": "http://evil.example"}
    assert "access-control-allow-origin" not in ready.get("/v1/jobs", headers=foreign).headers
    preflight = ready.options("/v1/jobs", headers={**foreign, "access-control-request-method": "POST"})
    assert preflight.status_code in (400, 403, 405) and "access-control-allow-origin" not in preflight.headers
    # CSRF: a page elsewhere cannot post through the visitor's browser, nor with a "simple" content type.
    assert_error(ready.post("/v1/jobs", data={"prompt": "p"}, headers=foreign), 403)
    assert_error(ready.delete(f"/v1/jobs/{job.json()['id']}", headers={"origin": "null"}), 403)
    assert_error(ready.post("/v1/jobs", content=b"prompt=p", headers={"content-type": "text/plain"}), 415)
    # DNS rebinding: a foreign Host header is refused.
    assert_error(ready.get("/health", headers={"host": "attacker.example"}), 400)
    assert_error(ready.get("/health", headers={"host": "127.0.0.1.attacker.example:80"}), 400)
    wait_finished(ready, job.json()["id"])


def test_no_request_gets_a_500(ready, tmp_path):
    """A spread of odd requests: every answer is < 500, and every error is in the one shape."""
    json_type = {"content-type": "application/json"}
    requests = [
        ("GET", "/nope", {}), ("PUT", "/v1/jobs", {}), ("PATCH", "/v1/jobs/" + "a" * 32, {}),
        ("GET", "/v1/jobs/" + "a" * 5000, {}), ("GET", "/v1/jobs/abc/chunks/99999999999", {}),
        ("GET", "/v1/jobs/" + "0" * 32 + "/chunks/-1", {}), ("GET", "/v1/jobs?limit=-1", {}),
        ("GET", "/v1/jobs/x/video?download=maybe", {}),
        ("POST", "/v1/jobs", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}),
        ("POST", "/v1/jobs", {"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=x"}}),
        ("POST", "/v1/jobs", {"content": b"a=%ZZ&&==&prompt", "headers": {"content-type": "application/x-www-form-urlencoded"}}),
        ("POST", "/v1/jobs", {"json": {"prompt": "p", "chunk_prompts": {"-1": "x"}}}),
        ("POST", "/v1/jobs", {"json": {"prompt": "p", "chunk_prompts": {"0": ""}}}),
        ("POST", "/v1/jobs", {"json": {"prompt": "p", "chunk_prompts": {"9" * 50: "x"}}}),
        ("POST", "/v1/jobs", {"json": {"prompt": "p", "chunk_prompts": ["x"] * 500}}),
        ("POST", "/v1/jobs", {"json": {"prompt": "p", "chunk_prompts": "[[[[[[[[[[]]]]]]]]]]"}}),
        ("POST", "/v1/jobs", {"json": {"prompt": "p", "chunk_prompts": {"3": "beyond the run"}}}),
        ("POST", "/v1/jobs", {"json": {"prompt": {"nested": ["x"]}}}), ("POST", "/v1/jobs", {"json": {"prompt": "x" * 5000}}),
        ("POST", "/v1/jobs", {"json": {"prompt": "p", "mode": ["t2v"]}}),
        ("POST", "/v1/jobs", {"json": {"prompt": "p", "keep_aspect": "perhaps"}}),
        ("POST", "/v1/jobs", {"json": {"prompt": "p", "seed": -1}}), ("POST", "/v1/jobs", {"json": {"prompt": "p", "seed": 2**64}}),
        ("POST", "/v1/jobs", {"json": {"prompt": "p", "num_frames": 10**4000}}),
        ("POST", "/v1/jobs", {"content": b'{"prompt": NaN, "seed": Infinity}', "headers": json_type}),
        ("POST", "/v1/jobs", {"content": '{"prompt": "\ud800"}'.encode("utf-8", "surrogatepass"), "headers": json_type}),
        ("POST", "/v1/jobs", {"data": {"prompt": "p"}, "files": {"other": ("a.png", png_bytes())}}),
        ("POST", "/v1/jobs", {"data": {"prompt": "p"}, "files": [("file", ("a.png", png_bytes())),
                                                                 ("file", ("b.png", png_bytes()))]}),
        ("POST", "/v1/jobs", {"data": {"prompt": "p", "mode": "i2v"}, "files": {"file": ("a.png", b"")}}),
        ("POST", "/v1/jobs/" + "0" * 32 + "/cancel", {}), ("DELETE", "/v1/jobs/" + "0" * 32, {}),
        ("POST", "/v1/info", {}), ("DELETE", "/", {}),
    ]
    for method, path, options in requests:
        response = ready.request(method, path, **options)
        assert response.status_code < 500, (method, path, str(options)[:200], response.text[:300])
        if response.status_code >= 400:
            assert_error(response, response.status_code)


# ---------------------------------------------------------------------------------------------- the Videos API
def test_videos_api_routes_hold_the_same_line(server, ready):
    """/v1/videos and /v1/models: strict numbers and JSON, capped bodies and echoes, HEAD, no paths, no 500."""
    for field, bad in (("seconds", "²"), ("seconds", "١"), ("seconds", "1_0"), ("seconds", 10**400), ("seconds", [1]),
                       ("size", "١٢٨x٦٤"), ("size", ["64x64"]), ("seed", "①"), ("num_inference_steps", "--5"),
                       ("fps", "٣"), ("keep_aspect", "perhaps")):
        assert_openai_error(ready.post("/v1/videos", json={**SMALL_VIDEO, field: bad}), 400, field)
        if not isinstance(bad, (int, list)):
            assert_openai_error(ready.post("/v1/videos", data={**SMALL_VIDEO, field: bad}), 400, field)
    json_type = {"content-type": "application/json"}
    for body in (b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}", '{"prompt": "\ud800"}'.encode("utf-8", "surrogatepass")):
        assert_openai_error(ready.post("/v1/videos", content=body, headers=json_type), 400)
    many = ready.post("/v1/videos", json={**SMALL_VIDEO, **{f"k{i:05d}" + "x" * 30: 1 for i in range(20_000)}})
    assert_openai_error(many, 400, words="unknown parameter")
    assert len(many.content) < 2000
    head = (b"POST /v1/videos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 20971520\r\n\r\n")
    status, headers, answer = raw_exchange(server.url, head)
    assert status == 413 and set(json.loads(answer)) == {"error"} and "x-frame-options" in headers
    for method, path in (("GET", "/v1/videos?limit=²"), ("GET", "/v1/videos?after=video_" + "0" * 32),
                         ("GET", "/v1/videos/video_../../etc/passwd"), ("GET", "/v1/videos/%2e%2e/%2e%2e/etc/passwd"),
                         ("PUT", "/v1/videos"), ("GET", "/v1/models/other"), ("DELETE", "/v1/videos/" + "a" * 5000),
                         ("POST", "/v1/videos/extensions"), ("GET", "/v1/videos/video_x/content?variant=zzz")):
        response = ready.request(method, path, json={"prompt": "p", "video": {"id": 5}} if method == "POST" else None)
        assert_openai_error(response, (400, 404, 405))
    # A video whose run fails reports why, without the server paths the exception named.
    failed = ready.post("/v1/videos", json={**SMALL_VIDEO, "prompt": "please fail"}).json()
    assert wait_finished(ready, failed["id"][len("video_"):])["state"] == "failed"
    error = ready.get(f"/v1/videos/{failed['id']}").json()["error"]
    assert "asked to fail" in error["message"] and "/srv/" not in error["message"], error
    # HEAD on every GET route of the Videos API.
    made = ready.post("/v1/videos", json=SMALL_VIDEO).json()
    assert wait_finished(ready, made["id"][len("video_"):])["state"] == "done"
    model_id = ready.get("/v1/models").json()["data"][0]["id"]
    for path in ("/v1/videos", f"/v1/videos/{made['id']}", f"/v1/videos/{made['id']}/content",
                 f"/v1/videos/{made['id']}/content?variant=thumbnail", "/v1/models", f"/v1/models/{model_id}"):
        got, probed = ready.get(path), ready.head(path)
        assert probed.status_code == 200 == got.status_code, (path, probed.status_code)
        assert probed.content == b"" and int(probed.headers["content-length"]) == len(got.content), path


# ---------------------------------------------------------------------------------------------- one server per folder
def test_second_server_on_the_same_folder_refuses_and_touches_nothing(server, ready):
    job = ready.post("/v1/jobs", json=SMALL_JOB).json()
    assert wait_finished(ready, job["id"])["state"] == "done"
    folder = server.folder / "results" / job["id"]
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}
    second = ServeProcess([*FAKE, "--results_dir", str(server.folder / "results")])
    with pytest.raises(RuntimeError):
        second.start()
    assert second.wait_exit(WAIT_S) == 2
    errors = [line for line in second.lines if "error" in line]
    assert len(errors) == 1, second.log
    assert str(server.folder / "results") in errors[0] and f"PID {server.process.pid}" in errors[0]
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()} == before
    again = ready.get(f"/v1/jobs/{job['id']}").json()
    assert again["state"] == "done" and ready.get(again["urls"]["video"]).status_code == 200


# ---------------------------------------------------------------------------------------------- stop and restart
def test_ctrl_c_stops_quickly_and_a_restart_takes_the_jobs_back(server, ready):
    """Last in the module: it stops the main server."""
    running = ready.post("/v1/jobs", json={**SMALL_JOB, "prompt": "slow and steady", "num_frames": 96,
                                           "steps": 32}).json()
    wait_state(ready, running["id"], lambda j: j["chunks_ready"] >= 1, "one chunk in")
    waiting = ready.post("/v1/jobs", json=SMALL_JOB).json()
    # A submission that died half-way leaves only a hidden staging folder, which the next server removes.
    leftover = server.folder / "results" / (".incoming-" + "f" * 32)
    leftover.mkdir()
    (leftover / "upload.part").write_bytes(b"half an upload")
    code, seconds = server.stop(signal.SIGINT)
    assert seconds < 10 and "terminate called" not in server.log, server.log[-2000:]
    print(f"stopped by Ctrl-C in {seconds:.1f}s with exit code {code}")
    on_disk = json.loads((server.folder / "results" / running["id"] / "job.json").read_text())
    assert on_disk["state"] == "queued" and 1 <= on_disk["chunks_ready"] < on_disk["num_chunks"], on_disk
    with ServeProcess([*FAKE, "--results_dir", str(server.folder / "results")],
                      env={"MAGI1_FAKE_STEP_S": "0"}) as restarted, \
            httpx.Client(base_url=restarted.url, timeout=WAIT_S) as client:
        for job in (running, waiting):
            final = wait_finished(client, job["id"])
            assert final["state"] == "done" and final["chunks_ready"] == final["num_chunks"], final
            assert final["step"] == final["total_steps"]
        assert not leftover.exists()
        listed = client.get("/v1/jobs", params={"limit": 100}).json()["data"]
        assert all(j["step"] is None or j["step"] <= j["total_steps"] for j in listed)
        code, seconds = restarted.stop(signal.SIGTERM)
        assert seconds < 10 and "terminate called" not in restarted.log
