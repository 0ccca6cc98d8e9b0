"""One real `magi1 serve` (the demo model, distilled) in a subprocess, shared by the client-library tests.

Started once per test session by the `magi1_server` fixture (conftest.py); clients reach it the way a user's
do: the `openai` package, `websockets`, plain HTTP.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

# Keys the server is started with (MAGI1_API_KEYS): two users, to check that each sees only its own videos.
KEY_A, KEY_B = "sk-magi1-test-alice-0123456789", "sk-magi1-test-bob-9876543210"
STEPS = 4  # the distilled demo runs in 4 steps (one window), the fastest run it has
START_TIMEOUT_S = 240


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def openai_client(served, key: str = KEY_A):
    """The unmodified `openai` client a user points at this server (its Videos API is marked deprecated)."""
    import warnings

    import openai

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return openai.OpenAI(base_url=served.url + "/v1", api_key=key, max_retries=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("magi1")  # the console script a user runs
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from magi1.cli import main; sys.exit(main())"]


def start(folder: Path) -> Served:
    port = free_port()
    log = folder / "serve.log"
    env = {**os.environ, "MAGI1_API_KEYS": f"{KEY_A},{KEY_B}", "PYTHONUNBUFFERED": "1"}
    command = serve_command() + ["serve", "--config_file", "demo_distill", "--device", "cpu", "--port", str(port),
                                 "--results_dir", str(folder / "results")]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    served = Served(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"magi1 serve exited ({process.returncode}):\n{served.log_text()[-3000:]}")
        try:
            health = httpx.get(served.url + "/health", timeout=5).json()
            if health["model"] == "ready":
                return served
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    stop(served)
    raise RuntimeError(f"magi1 serve was not ready within {START_TIMEOUT_S}s:\n{served.log_text()[-3000:]}")


def stop(served: Served) -> None:
    served.process.terminate()
    try:
        served.process.wait(30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait(10)


def decode_mp4(data: bytes) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of an mp4 (or of concatenated fMP4 fragments)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def png_of(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["KEY_A", "KEY_B", "STEPS", "Served", "decode_mp4", "mean_abs", "png_of", "start", "stop"]
