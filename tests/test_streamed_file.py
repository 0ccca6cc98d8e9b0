"""The output file as a user meets it: it fills chunk by chunk during `magi1 generate`, survives kill -9 and
Ctrl-C with every finished chunk, and a resumed run ends as the very same file as an uninterrupted one."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

import magi1
import magi1.io.chunked_mp4 as chunked_mp4
from magi1.cli import main
from magi1.io.chunked_mp4 import ChunkedMp4Writer
from magi1.io.video import partial_path_for
from magi1.resume import resume_state_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
CHUNK_FRAMES = 24  # the tiny model: chunk_width 6 latent frames x 4
# `magi1 generate` itself, with a pause after each chunk lands in the file: on a fast CPU the tiny model
# finishes all its chunks within a few milliseconds, before a watcher could see (or kill at) the first one.
SLOW_APPEND_CLI = (
    "import sys, time\n"
    "import magi1.io.chunked_mp4 as m\n"
    "append = m.ChunkedMp4Writer.append_chunk\n"
    "m.ChunkedMp4Writer.append_chunk = lambda self, frames: (append(self, frames), time.sleep(0.5))[0]\n"
    "from magi1.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames) if frames else np.zeros((0,), np.uint8)


# What `_args` records in the file (magi1.run_tags): the config's file name, never its folder.
CLI_SETTINGS = {"magi1": magi1.__version__, "config": "config.json", "mode": "t2v", "prompt": "a ball", "seed": 3,
                "steps": 4, "num_frames": 72, "width": 32, "height": 32, "fps": 24}


def _args(tiny_model, out: Path) -> list[str]:
    return ["generate", "--config_file", str(tiny_model), "--prompt", "a ball", "--num_frames", "72", "--seed", "3",
            "--threads", "1", "--output_path", str(out), "--quiet"]


@pytest.fixture(scope="module")
def reference(tiny_pipeline, tmp_path_factory):
    """An uninterrupted run of the same request: (decoded frames, file bytes)."""
    from magi1.run_tags import with_run_settings

    out = tmp_path_factory.mktemp("reference") / "ref.mp4"
    # The CLI records its settings in the mp4's tags; the same tags here make the same bytes.
    tiny_pipeline.generate_to_file(out, prompt="a ball", num_frames=72, seed=3, progress=False,
                                   metadata=with_run_settings(None, CLI_SETTINGS))
    return _decode(out), out.read_bytes()


def _watch(process: subprocess.Popen, partial: Path, *, stop_at: int | None = None) -> list[np.ndarray]:
    """Decode the file each time it grows (and stays put for a moment); stop at `stop_at` frames."""
    seen, last_size = [], -1
    while process.poll() is None:
        size = partial.stat().st_size if partial.exists() else -1
        time.sleep(0.02)
        if size > 0 and size != last_size and size == (partial.stat().st_size if partial.exists() else -1):
            last_size = size
            seen.append(_decode(partial))
            if stop_at is not None and len(seen[-1]) >= stop_at:
                break
    return seen


def _check_prefix(frames: np.ndarray, reference_frames: np.ndarray) -> None:
    assert len(frames) % CHUNK_FRAMES == 0, f"{len(frames)} frames is not a whole number of chunks"
    np.testing.assert_array_equal(frames, reference_frames[: len(frames)])


def test_file_fills_per_chunk_survives_kill_9_and_resumes_to_the_same_bytes(tiny_model, tmp_path, reference):
    ref_frames, ref_bytes = reference
    out = tmp_path / "out.mp4"  # the very path a user watches: chunks land in it, not in a hidden sibling
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-c", SLOW_APPEND_CLI, *_args(tiny_model, out)]

    run = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = _watch(run, out, stop_at=CHUNK_FRAMES)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    assert seen and len(seen[-1]) >= CHUNK_FRAMES, "the output file never showed the first chunk"
    left = _decode(out)
    _check_prefix(left, ref_frames)  # a playable file holding the finished chunks
    assert resume_state_path(out).is_file() and not partial_path_for(out).exists()

    # --resume under other settings: refused before any weights load, naming the flags that changed (it was
    # "the saved resume state belongs to a different run" after the model had loaded), and nothing is touched
    left_bytes, state_bytes = out.read_bytes(), resume_state_path(out).read_bytes()
    changed = [{"72": "96", "a ball": "a cube"}.get(a, a) for a in _args(tiny_model, out)] + ["--steps", "8"]
    refused = subprocess.run([sys.executable, "-m", "magi1.cli", *changed, "--resume"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"magi1 generate: error: --resume: {out} was started with --prompt 'a ball' (now 'a cube'); --steps 4 "
        f"(now 8); --num_frames 72 (now 96); resume with its settings, or run without --resume to start over"]
    assert out.read_bytes() == left_bytes and resume_state_path(out).read_bytes() == state_bytes

    resumed = subprocess.Popen(command + ["--resume"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    seen = _watch(resumed, out)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    for frames in seen:  # while it ran, the file always held whole chunks of the same video
        _check_prefix(frames, ref_frames)
    np.testing.assert_array_equal(_decode(out), ref_frames)
    assert out.read_bytes() == ref_bytes
    assert not partial_path_for(out).exists() and not resume_state_path(out).exists()
    from magi1.run_tags import read_run_settings  # what made it, as ffprobe shows it

    assert read_run_settings(out) == CLI_SETTINGS


def test_ctrl_c_prints_the_resume_command_and_it_finishes_the_same_file(tiny_model, tmp_path, reference, capsys,
                                                                          monkeypatch):
    ref_frames, ref_bytes = reference
    out = tmp_path / "out.mp4"
    real_append = ChunkedMp4Writer.append_chunk

    def append_then_interrupt(self, frames):
        real_append(self, frames)
        if self.chunks_written == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises between two chunks

    monkeypatch.setattr(chunked_mp4.ChunkedMp4Writer, "append_chunk", append_then_interrupt)
    assert main(_args(tiny_model, out)) == 130
    message = capsys.readouterr().err
    assert "interrupted after 2 finished chunks" in message
    assert f"kept in {out}" in message
    _check_prefix(_decode(out), ref_frames)
    assert len(_decode(out)) == 2 * CHUNK_FRAMES

    monkeypatch.setattr(chunked_mp4.ChunkedMp4Writer, "append_chunk", real_append)
    printed = shlex.split(message.strip().splitlines()[-1])
    assert printed[-1] == "--resume" and Path(printed[0]).name == "magi1"
    assert main(printed[1:]) == 0
    assert out.read_bytes() == ref_bytes


def test_chunks_are_readable_the_moment_they_are_appended(tmp_path):
    yy, xx = np.mgrid[:32, :48]
    chunks = [np.stack([np.stack([(xx * 4 + t * 3 + 50 * c) % 256, yy * 6, (xx + yy + t) % 256], -1)
                        for t in range(CHUNK_FRAMES)]).astype(np.uint8) for c in range(3)]
    out = tmp_path / "v.mp4"
    with ChunkedMp4Writer(out, fps=24, metadata={"comment": "chunks"}) as writer:
        for index, chunk in enumerate(chunks):
            writer.append_chunk(chunk)
            with av.open(str(writer.partial_path)) as container:
                stream = container.streams.video[0]
                times = [float(f.pts * f.time_base) for f in container.decode(stream)]
            assert times == [i / 24 for i in range((index + 1) * CHUNK_FRAMES)]  # every frame, from t=0
    with av.open(str(out)) as container:
        assert container.metadata.get("comment") == "chunks"
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert np.abs(decoded.astype(int) - np.concatenate(chunks)).mean() < 6  # CRF 23 on smooth ramps
    again = tmp_path / "again.mp4"
    with ChunkedMp4Writer(again, fps=24, metadata={"comment": "chunks"}) as writer:
        for chunk in chunks:
            writer.append_chunk(chunk)
    assert again.read_bytes() == out.read_bytes()  # encoding is deterministic chunk by chunk
