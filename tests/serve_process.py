"""Run `magi1 serve` as a subprocess on 127.0.0.1 for tests, the way a user starts it.

    with ServeProcess(["--results_dir", str(tmp), "--pipeline", "serve_fake:load_pipeline"]) as server:
        httpx.get(server.url + "/health")

The port is 0 (the OS picks one); the URL is read from the server's own "open http://..." log line. Every
wait is bounded. The helpers at the bottom check what every error answer must look like.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
URL_LINE = re.compile(r"open (http://127\.0\.0\.1:\d+)/")
SECURITY_HEADERS = ("x-content-type-options", "x-frame-options", "content-security-policy", "referrer-policy")


def magi1_command() -> list[str]:
    script = Path(sys.executable).with_name("magi1")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "magi1.cli"]


class ServeProcess:
    def __init__(self, args: list[str], *, env: dict | None = None, start_timeout_s: float = 120.0):
        self.args = args
        self.env = {**os.environ, **(env or {})}
        # The fake pipeline module lives next to this file.
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), self.env.get("PYTHONPATH")) if p)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self.lines: list[str] = []
        self._url_found = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "ServeProcess":
        command = magi1_command() + ["serve", "--host", "127.0.0.1", "--port", "0", *self.args]
        self.process = subprocess.Popen(command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, errors="replace")
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._url_found.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"magi1 serve did not start (exit {self.process.poll()}):\n{self.log}")
        return self

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            match = URL_LINE.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self._url_found.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        code = self.process.wait(timeout_s)
        self._reader.join(5)  # every line it printed has been read
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> tuple[int, float]:
        """Send `sig`; (exit code, seconds it took to exit)."""
        start = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self._reader.join(5)
        return code, time.monotonic() - start

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()

    # ------------------------------------------------------------------ memory (Linux)
    def memory_kb(self, field: str = "VmRSS") -> int | None:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) if match else None


def have_proc() -> bool:
    return Path("/proc/self/status").is_file() and shutil.which("true") is not None


# ---------------------------------------------------------------------------------------------- checks
def assert_error(response, status: int | tuple[int, ...], words: str | None = None) -> str:
    """`response` is an error in the API's one shape, with the security headers; returns its message."""
    body = _error_body(response, status)
    assert set(body) == {"error", "detail"}, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message and message == body["detail"], body
    assert set(body["error"]) == {"message", "type", "code", "param"}, body
    if words is not None:
        assert words in message, (words, message)
    return message


def assert_openai_error(response, status: int | tuple[int, ...], param: str | None = "", words: str | None = None) -> str:
    """`response` is an error in OpenAI's envelope alone (the /v1/videos and /v1/models routes), with the
    security headers; `param` (unless "") is the field it names. Returns its message."""
    body = _error_body(response, status)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    if param != "":
        assert body["error"]["param"] == param, body
    if words is not None:
        assert words in message, (words, message)
    return message


def _error_body(response, status: int | tuple[int, ...]) -> dict:
    """The JSON body of an error answer with one of these statuses and the security headers."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    for name in SECURITY_HEADERS:
        assert name in response.headers, (name, dict(response.headers))
    return response.json()
