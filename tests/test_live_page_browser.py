"""The page's live stream and the offline /docs in real Chromium, against a real `magi1 serve` with API keys.

The page asks for the key, streams a t2v video over WS /v1/realtime/video into a Media Source Extensions
player, and the test watches the player play while the job is still being made, then changes the prompt
with the "change prompt now" box. Loopback only: /docs must render from the server's own files.
"""

from __future__ import annotations

import re

import httpx
import pytest

from served_magi1 import KEY_A, STEPS
from test_server_browser import ARTIFACTS, CHROMIUM_FLAGS, chromium_path


@pytest.fixture(scope="module")
def browser_page(magi1_server, tmp_path_factory):
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900})
        # Nothing but the server: any request elsewhere (a CDN) fails the test.
        outside: list[str] = []

        def only_loopback(route):
            if route.request.url.startswith(magi1_server.url):
                return route.continue_()
            outside.append(route.request.url)
            return route.abort()

        context.route("**/*", only_loopback)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        yield page, errors, outside
        context.close()


def test_page_plays_the_live_stream_while_the_job_runs_and_changes_the_prompt(magi1_server, browser_page):
    page, errors, outside = browser_page
    page.goto(magi1_server.url + "/")
    page.wait_for_function("() => !document.getElementById('key-form').hidden", timeout=10_000)
    page.fill("#api-key", KEY_A)
    page.click("#key-form button")
    page.wait_for_function("() => document.getElementById('model-status').textContent.includes('ready')",
                           timeout=20_000)
    errors.clear()  # the 401s the page met before it had the key are how it learnt that it needs one
    page.fill("#prompt", "a red ball rolls to the right")
    page.fill("#num_frames", "144")  # 6 chunks: later ones start after the first is shown
    page.fill("#steps", str(STEPS))
    page.fill("#seed", "3")
    assert page.is_checked("#live")
    page.click("#submit")
    # The player plays from the stream while the job is still running (not a finished file).
    page.wait_for_function(
        "() => { const v = document.getElementById('player');"
        " return v.dataset.played === 'true' && v.currentTime > 0 && v.src.startsWith('blob:'); }",
        timeout=120_000)
    events = page.text_content("#live-events")
    assert "streamed" in events and "completed" not in events, events
    assert not page.is_hidden("#live-form")
    job_id = page.evaluate("() => watcher.id")
    state = httpx.get(f"{magi1_server.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY_A}"}).json()
    assert state["state"] == "running" and state["chunks_ready"] < 6, state
    page.fill("#live-prompt", "a blue square slides to the left")
    page.click("#live-send")
    page.wait_for_function("() => /from chunk \\d|too late/.test(document.getElementById('live-status').textContent)",
                           timeout=60_000)
    # Chunk indices count from 0 everywhere on the page: the chunks from the one the change applied from show
    # the new caption under that index (it had been "chunk N+1/6 streamed" next to "from chunk N on").
    changed = re.search(r"from chunk (\d+) on", page.text_content("#live-status"))
    page.wait_for_function("() => /a blue square|^completed/.test(document.getElementById('live-events').textContent)",
                           timeout=60_000)
    events = page.text_content("#live-events")
    if changed and not events.startswith("completed"):
        shown = re.fullmatch(r'(\d+)/6 chunks streamed · chunk (\d+): "a blue square slides to the left"', events)
        assert shown and int(shown.group(1)) == int(shown.group(2)) + 1, events
        assert int(shown.group(2)) >= int(changed.group(1)), (events, changed.group(0))
    page.wait_for_function("() => document.getElementById('live-events').textContent.startsWith('completed')",
                           timeout=120_000)
    buffered = page.evaluate("() => { const b = document.getElementById('player').buffered;"
                             " return b.length ? b.end(b.length - 1) : 0; }")
    assert buffered == pytest.approx(6.0, abs=0.1)  # all 6 one-second chunks reached the player
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "live-page.png"), full_page=True)
    assert not errors, errors
    assert not outside, outside


def test_docs_render_offline_under_the_servers_csp(magi1_server, browser_page):
    page, errors, outside = browser_page
    errors.clear()
    page.goto(magi1_server.url + "/docs")
    page.wait_for_function("() => document.querySelectorAll('.opblock').length >= 10", timeout=30_000)
    assert page.locator(".opblock-summary-path", has_text="/v1/realtime/video").count() == 1
    page.screenshot(path=str(ARTIFACTS / "docs-page.png"), full_page=False)
    assert not errors, errors
    assert not outside, outside


def test_every_route_has_a_request_schema_in_openapi(magi1_server):
    schema = httpx.get(magi1_server.url + "/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method == "post" and path not in ("/v1/jobs/{job_id}/cancel",):
                assert "requestBody" in operation, (method, path)
                content = operation["requestBody"]["content"]
                assert {"multipart/form-data", "application/json"} <= set(content), (method, path)
            for name in [part[1:-1] for part in path.split("/") if part.startswith("{")]:
                assert name in [p["name"] for p in operation.get("parameters", [])], (method, path, name)
    assert {p["name"] for p in schema["paths"]["/v1/jobs"]["get"]["parameters"]} >= {"limit", "after", "order"}
    assert "RealtimeSessionStart" in schema["components"]["schemas"]


def test_page_asks_before_show_ends_the_live_stream(magi1_server, browser_page):
    """Show on another job closes the live stream, which cancels its video: the page asks first (it had
    cancelled it without a word)."""
    page, errors, outside = browser_page
    auth = {"Authorization": f"Bearer {KEY_A}"}
    older = httpx.post(f"{magi1_server.url}/v1/jobs", headers=auth, timeout=10,
                       data={"prompt": "an older video", "num_frames": "24", "steps": str(STEPS)}).json()["id"]
    page.goto(magi1_server.url + "/")
    page.wait_for_function("() => !document.getElementById('key-form').hidden"
                           " || document.getElementById('model-status').textContent.includes('ready')", timeout=20_000)
    if page.is_visible("#key-form"):  # not yet given in this tab (the first test gives it)
        page.fill("#api-key", KEY_A)
        page.click("#key-form button")
    page.wait_for_function("() => document.getElementById('model-status').textContent.includes('ready')",
                           timeout=20_000)
    errors.clear()
    page.fill("#prompt", "a red ball rolls to the right")
    page.fill("#num_frames", "192")
    page.fill("#steps", str(STEPS))
    page.check("#live")
    page.click("#submit")
    page.wait_for_function("() => !document.getElementById('live-form').hidden", timeout=120_000)
    live_id = page.evaluate("() => watcher.id")
    older_row = page.locator("#jobs tr", has_text="an older video")
    older_row.wait_for(timeout=10_000)

    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    older_row.locator("button", has_text="Show").click()
    page.wait_for_timeout(300)
    assert questions and "ends the live video" in questions[0], questions
    assert page.evaluate("() => watcher.id") == live_id and page.is_visible("#live-form")
    state = httpx.get(f"{magi1_server.url}/v1/jobs/{live_id}", headers=auth).json()["state"]
    assert state in ("queued", "running"), state

    page.once("dialog", lambda dialog: dialog.accept())
    older_row.locator("button", has_text="Show").click()
    page.wait_for_function(f"() => document.getElementById('job-label').textContent === '{older[:8]}'",
                           timeout=5_000)
    assert page.is_hidden("#live-form")
    assert not errors, errors
    assert not outside, outside
