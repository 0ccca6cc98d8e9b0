"""The served page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Two runs of the same scenario (open the page, submit a t2v job, wait until the <video> plays, save a
screenshot under test-artifacts/): one on the fake pipeline, which checks the page itself in seconds, and one
on the embedded demo model, the way a user meets it. Each is skipped, with the reason printed in the warnings
summary, where Chromium, Playwright or the demo model is missing. Only loopback traffic is involved.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
import time
import warnings
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from magi1.server.app import create_app  # noqa: E402
from magi1.server.background import serve_in_background  # noqa: E402
from magi1.server.settings import LOOPBACK_HOSTS, ServerSettings  # noqa: E402
from test_server import FakePipeline  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# What works as root on a closed network: no sandbox, no GPU, and nothing that phones home.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required"]
MODEL_LOAD_TIMEOUT_S = 120.0


def skip_with_reason(reason: str) -> None:
    # A skip's reason is only listed with -rs; a warning is printed by the default test command too.
    warnings.warn(f"browser test skipped: {reason}", stacklevel=2)
    pytest.skip(reason)


def chromium_path() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_with_reason("Playwright is not installed (pip install playwright; no browser download is needed)")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        skip_with_reason("Chromium is not installed (Debian: apt-get install chromium)")
    return path


@contextmanager
def opened_page(playwright, tmp_path, executable: str, url: str, *, wait_ready: bool = True, **context_options):
    """Headless Chromium on `url` once the page says the model is ready (unless not wait_ready): yields
    (page, console errors)."""
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
        **context_options)
    try:
        page = context.new_page()
        console_errors: list[str] = []
        page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
        page.goto(url)
        if not wait_ready:
            yield page, console_errors
            return
        # Predicates are functions, not expression strings: those would need eval, which the page's
        # Content-Security-Policy forbids (and the test keeps that policy on).
        page.wait_for_function("() => document.getElementById('model-status').textContent.includes('ready')",
                               timeout=10_000)
        yield page, console_errors
    finally:
        context.close()


def demo_pipeline_factory(tmp_path):
    """A loader for the demo model; while its weights are not committed, the real pipeline on a tiny
    random-weight model in the official layout (the same code paths; the video is noise)."""
    from magi1.config import load_config
    from magi1.pipeline import MagiPipeline, check_weights_present
    from magi1.testing import make_tiny_model_folder

    try:
        config = load_config("demo")
        check_weights_present(config)
    except Exception as err:
        warnings.warn(f"demo model not available ({str(err).splitlines()[0]}); using a tiny random model",
                      stacklevel=2)
        config = str(make_tiny_model_folder(tmp_path / "tiny_model"))
    return lambda: MagiPipeline.from_pretrained(config, device="cpu")


def tiny_settings(defaults: dict) -> dict:
    """Form values for a quick job: as few chunks as the sampling window allows, at the model's size."""
    window = defaults.get("window_size") or 1
    frames_per_chunk = defaults.get("frames_per_chunk") or defaults["num_frames"]
    return {"num_frames": str(frames_per_chunk * window), "seed": "1"}


def drive_page(tmp_path: Path, pipeline_factory, screenshot: Path, *, play_timeout_s: float,
               prompt: str = "a red ball and a blue square bounce on the floor", extra_fields: dict | None = None,
               after_play=None, **settings_changes) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    settings = ServerSettings(results_dir=tmp_path / "results", allowed_hosts=LOOPBACK_HOSTS, **settings_changes)
    app = create_app(pipeline_factory, settings)
    with serve_in_background(app) as base_url:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            deadline = time.monotonic() + MODEL_LOAD_TIMEOUT_S
            while client.get("/health").json()["model"] == "loading" and time.monotonic() < deadline:
                time.sleep(0.1)
            info = client.get("/v1/info").json()
        assert info["model"] == "ready", info
        fields = {**tiny_settings(info["defaults"]), **(extra_fields or {})}

        with sync_playwright() as playwright, opened_page(playwright, tmp_path, executable, base_url + "/",
                                                          viewport={"width": 1280, "height": 900}) as opened:
            page, console_errors = opened
            page.fill("#prompt", prompt)
            for field_id, value in fields.items():
                page.fill(f"#{field_id}", value)
            page.click("#submit")
            page.wait_for_function(
                "() => { const v = document.getElementById('player');"
                " return v.dataset.played === 'true' && v.currentTime > 0; }",
                timeout=play_timeout_s * 1000)
            assert page.text_content("#form-message") == ""
            assert page.locator("#jobs tr").count() == 1
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            if after_play is not None:
                after_play(page)
            assert not console_errors, console_errors


def test_page_plays_a_t2v_job_on_the_fake_pipeline(tmp_path):
    pipeline = FakePipeline(step_delay=0.05)

    def first_chunk_plays_before_the_rest_exist(page):
        # The fake holds after its first chunk ("hold" in the prompt): the page is already playing it.
        assert "running" in page.text_content("#progress-text")
        pipeline.release.set()
        page.wait_for_function("() => document.getElementById('progress-text').textContent.startsWith('done')",
                               timeout=20_000)
        page.wait_for_function("() => !document.getElementById('download').hidden", timeout=5_000)
        page.wait_for_function("() => document.querySelector('#jobs td.state').textContent === 'done'",
                               timeout=10_000)

    try:
        drive_page(tmp_path, lambda: pipeline, ARTIFACTS / "serve-page-fake-pipeline.png", play_timeout_s=30,
                   prompt="hold: a red ball and a blue square bounce on the floor",
                   extra_fields={"num_frames": "16", "height": "64", "width": "96"},
                   after_play=first_chunk_plays_before_the_rest_exist,
                   max_job_cost=10**7)  # the fake's default job is tiny; this one is 24x it
    finally:
        pipeline.release.set()


def test_page_plays_a_t2v_job_on_the_demo_model(tmp_path):
    factory = demo_pipeline_factory(tmp_path)
    drive_page(tmp_path, factory, ARTIFACTS / "serve-page.png", play_timeout_s=90)


def test_page_enhance_checkbox_shows_the_models_caption_with_the_result(tmp_path):
    """Issue 17: the "Enhance prompt" box sends `enhance`, and the page shows the caption the video was made from."""
    from playwright.sync_api import sync_playwright

    from fake_openai import FakeOpenAI
    from magi1.prompting import EnhanceSettings

    executable = chromium_path()
    pipeline = FakePipeline(step_delay=0.01)
    with FakeOpenAI(model="tiny-llm") as model:
        enhance = EnhanceSettings(url=model.url, model="tiny-llm", timeout_s=10)
        settings = ServerSettings(results_dir=tmp_path / "results", allowed_hosts=LOOPBACK_HOSTS)
        app = create_app(lambda: pipeline, settings, enhance_settings=enhance)
        with serve_in_background(app) as base_url, sync_playwright() as playwright, \
                opened_page(playwright, tmp_path, executable, base_url + "/") as (page, console_errors):
            assert "model tiny-llm" in page.text_content("#enhancer-name")
            page.fill("#prompt", "a red ball")
            page.uncheck("#live")
            page.check("#enhance")
            page.click("#submit")
            page.wait_for_function("() => document.getElementById('progress-text').textContent.startsWith('done')",
                                   timeout=20_000)
            page.wait_for_function("() => !document.getElementById('enhanced-box').hidden", timeout=5_000)
            shown = page.text_content("#enhanced-prompt")
            assert shown.startswith("A red ball rests on a grey floor. The red ball bounces twice.")
            assert "(model tiny-llm)" in page.text_content("#enhanced-by")
            assert pipeline.calls[-1]["prompt"] == shown  # the video was made from what the page shows
            assert len(model.requests) == 2 and model.problems == []
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-page-enhanced.png"), full_page=True)
            assert not console_errors, console_errors


@contextmanager
def fake_server(tmp_path, **create_options):
    """The app on the fake pipeline, served on loopback: yields its base URL."""
    settings = ServerSettings(results_dir=tmp_path / "results", allowed_hosts=LOOPBACK_HOSTS)
    with serve_in_background(create_app(lambda: FakePipeline(step_delay=0.01), settings, **create_options)) as url:
        yield url


def test_page_on_a_phone_shows_only_what_applies_and_fits_the_screen(tmp_path):
    """Elements marked hidden stay hidden (a CSS display rule had shown the API key form on a server without
    keys, the empty latent-preview image and the t2v page's crop box), and a 360-px phone needs no sideways
    scrolling (the page had been 586 px wide; the live "change prompt now" row 405)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with fake_server(tmp_path) as base_url, sync_playwright() as playwright:
        httpx.post(base_url + "/v1/jobs", data={"prompt": "a red ball and a blue square " * 4}, timeout=10)
        with opened_page(playwright, tmp_path, executable, base_url + "/", viewport={"width": 360, "height": 740},
                         is_mobile=True, has_touch=True) as (page, console_errors):
            page.wait_for_function("() => document.querySelectorAll('#jobs tr').length === 1", timeout=10_000)
            for hidden in ("#key-form", "#step-preview", "#keep-aspect-row", "#upload-row", "#download"):
                assert page.is_hidden(hidden), hidden
            width, screen = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
            assert width <= screen, (width, screen)
            page.evaluate("() => { document.getElementById('live-form').hidden = false; }")  # as while streaming
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= screen, ("with the live form", width, screen)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-page-phone.png"), full_page=True)
            assert not console_errors, console_errors


def test_page_shows_its_job_again_after_a_reload_and_forgets_it_once_deleted(tmp_path):
    """A reload shows the job the tab was showing; deleting it empties the player for good (its `ended` had
    walked on into the deleted job's next chunk)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with fake_server(tmp_path) as base_url, sync_playwright() as playwright, \
            opened_page(playwright, tmp_path, executable, base_url + "/") as (page, console_errors):
        page.fill("#prompt", "a red ball")
        page.uncheck("#live")
        page.fill("#num_frames", "12")  # 3 chunks: a playlist of 3 mp4s
        page.click("#submit")
        page.wait_for_function("() => document.getElementById('progress-text').textContent.startsWith('done')",
                               timeout=20_000)
        label = page.text_content("#job-label")
        page.reload()
        page.wait_for_function("() => document.getElementById('progress-text').textContent.startsWith('done')",
                               timeout=10_000)
        assert page.text_content("#job-label") == label
        assert page.text_content("#progress-text").startswith("done · 3/3 chunks")
        page.click("#jobs tr >> text=Delete")
        page.wait_for_function("() => document.getElementById('job-label').textContent === 'nothing yet'",
                               timeout=5_000)
        src_after_ended = page.evaluate("""async () => {
            const player = document.getElementById('player');
            player.dispatchEvent(new Event('ended'));
            await new Promise((resolve) => setTimeout(resolve, 200));
            return player.getAttribute('src'); }""")
        assert src_after_ended is None
        page.reload()
        page.wait_for_function("() => document.getElementById('no-jobs').hidden === false", timeout=10_000)
        assert page.text_content("#job-label") == "nothing yet"
        assert not console_errors, console_errors


def test_page_says_a_refused_api_key_was_refused_and_works_with_the_right_one(tmp_path):
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with fake_server(tmp_path, api_keys=("sk-right-key",)) as base_url, sync_playwright() as playwright, \
            opened_page(playwright, tmp_path, executable, base_url + "/", wait_ready=False) as (page, _):
        page.wait_for_function("() => !document.getElementById('key-form').hidden", timeout=10_000)
        assert page.is_visible("#key-form")
        assert page.text_content("#model-status") == "API key needed"
        page.fill("#api-key", "sk-wrong-key")
        page.click("#key-form button")
        page.wait_for_function("() => document.getElementById('model-status').textContent !== 'API key needed'",
                               timeout=10_000)
        assert page.text_content("#model-status") == "API key refused"  # the server answered: not 'unreachable'
        assert page.is_visible("#key-form")
        assert page.text_content("#key-message") == "that API key was refused"
        page.fill("#api-key", "sk-right-key")
        page.click("#key-form button")
        page.wait_for_function("() => document.getElementById('model-status').textContent.includes('ready')",
                               timeout=10_000)
        assert page.is_hidden("#key-form")


def test_page_shows_a_refused_upload_until_another_file_is_chosen(tmp_path):
    """The server's sentence for a file it cannot read is shown, and goes once another file is chosen
    (it had stayed under the new file's preview), so that a good image then makes a video."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    (tmp_path / "not-an-image.png").write_text("hello")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    with fake_server(tmp_path) as base_url, sync_playwright() as playwright, \
            opened_page(playwright, tmp_path, executable, base_url + "/") as (page, console_errors):
        page.click("button.tab[data-mode=i2v]")
        page.fill("#prompt", "the red square moves")
        page.uncheck("#live")
        page.set_input_files("#file", str(tmp_path / "not-an-image.png"))
        page.click("#submit")
        page.wait_for_function("() => document.getElementById('form-message').textContent !== ''", timeout=10_000)
        assert page.text_content("#form-message").startswith("415: the upload is not a decodable image")
        page.set_input_files("#file", str(tmp_path / "red.png"))
        assert page.text_content("#form-message") == ""
        assert page.is_visible("#image-preview")
        page.click("#submit")
        page.wait_for_function("() => document.getElementById('progress-text').textContent.startsWith('done')",
                               timeout=20_000)
        assert page.text_content("#form-message") == ""
        # the refused upload's 415 is the only resource error
        assert [e for e in console_errors if "415" not in e] == [], console_errors


def test_page_refuses_a_setting_the_browser_cannot_read_as_a_number(tmp_path):
    """"1e" typed in Frames reads as an empty box (the browser's value for text it cannot parse): the page
    had sent no frame count and made a video of the default length without a word."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with fake_server(tmp_path) as base_url, sync_playwright() as playwright, \
            opened_page(playwright, tmp_path, executable, base_url + "/") as (page, console_errors):
        page.fill("#prompt", "a red ball")
        page.click("#num_frames")
        page.keyboard.type("1e")
        for live in (False, True):
            page.set_checked("#live", live)
            page.click("#submit")
            page.wait_for_function("() => document.getElementById('form-message').textContent !== ''",
                                   timeout=5_000)
            assert page.text_content("#form-message").startswith("Frames is not a number"), live
            page.evaluate("() => { document.getElementById('form-message').textContent = ''; }")
        page.wait_for_timeout(300)
        assert httpx.get(base_url + "/v1/jobs", timeout=10).json()["data"] == []
        assert not console_errors, console_errors
