"""Decode + encode of finished chunks overlapping the denoising of later ones (`generate_to_file`): the run-time
choice and its reason, the same file either way, the overlap really happening, and resume after a failure."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

import magi1.chunk_output as chunk_output
from magi1.chunk_output import OVERLAP_ENV, choose_overlap, overlap_for
from magi1.errors import InputError
from magi1.pipeline import ResumeState, resume_state_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
CPU = dict(accelerator=False, multi_process=False, offloaded=False)


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_the_choice_follows_the_machine_and_says_why():
    spare = choose_overlap(setting="auto", dit_threads=1, cores=2, **CPU)
    assert spare.overlap and spare.worker_threads == 1 and "1 left for the decoder" in spare.reason
    full = choose_overlap(setting="auto", dit_threads=2, cores=2, **CPU)
    assert not full.overlap and "fill the 2 cores" in full.reason
    assert choose_overlap(setting="on", dit_threads=2, cores=2, **CPU).worker_threads == 1
    assert not choose_overlap(setting="off", dit_threads=1, cores=16, **CPU).overlap
    gpu = choose_overlap(setting="auto", dit_threads=16, cores=16, **{**CPU, "accelerator": True})
    assert gpu.overlap and gpu.worker_threads is None and "side stream" in gpu.reason
    for kind in ("multi_process", "offloaded"):  # never, whatever the setting
        assert not choose_overlap(setting="on", dit_threads=1, cores=16, **{**CPU, kind: True}).overlap
    with pytest.raises(InputError, match=OVERLAP_ENV):
        choose_overlap(setting="sometimes", dit_threads=1, cores=2, **CPU)


def test_the_choice_is_logged_once(tiny_pipeline, caplog, monkeypatch):
    monkeypatch.setattr(chunk_output, "_logged", set())  # as in a fresh process
    caplog.set_level("INFO", logger="magi1.chunk_output")
    for _ in range(3):
        overlap_for(tiny_pipeline, setting="on")
        overlap_for(tiny_pipeline, setting="off")
    lines = [r.getMessage() for r in caplog.records if r.name == "magi1.chunk_output"]
    assert len(lines) == 2 and "on a worker thread" in lines[0] and "inline" in lines[1]


def test_magi1_generate_writes_the_same_file_with_and_without_the_overlap(tiny_model, tmp_path):
    outputs = {}
    for setting in ("on", "off"):
        out = tmp_path / f"{setting}.mp4"
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OVERLAP_ENV: setting}
        done = subprocess.run([sys.executable, "-m", "magi1.cli", "generate", "--config_file", str(tiny_model),
                               "--prompt", "a ball", "--num_frames", "72", "--seed", "4", "--threads", "1",
                               "--output_path", str(out)], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert "first chunk after" in done.stdout
        worker = "on a worker thread" if setting == "on" else "inline, after each chunk"
        assert sum(worker in line for line in done.stderr.splitlines()) == 1, done.stderr  # the reason, once
        outputs[setting] = out
    frames = _decode(outputs["on"])
    assert frames.shape[0] == 72
    np.testing.assert_array_equal(frames, _decode(outputs["off"]))
    assert outputs["on"].read_bytes() == outputs["off"].read_bytes()


def test_chunk_k_is_decoded_while_chunk_k_plus_1_is_denoised(tiny_pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv(OVERLAP_ENV, "on")
    second_chunk_clean = threading.Event()
    seen = []
    real_decode = type(tiny_pipeline).decode_chunk_frames

    def decode(self, latents, *, fps):
        if not seen:  # chunk 0 waits until the sampler has finished chunk 1: only possible if they overlap
            seen.append((threading.current_thread().name, second_chunk_clean.wait(60)))
        return real_decode(self, latents, fps=fps)

    def on_event(event):
        if event["type"] == "chunk" and event["index"] == 1:
            second_chunk_clean.set()

    monkeypatch.setattr(type(tiny_pipeline), "decode_chunk_frames", decode)
    report = tiny_pipeline.generate_to_file(tmp_path / "v.mp4", prompt="a ball", num_frames=72, seed=4,
                                            progress=False, callback=on_event)
    assert seen == [("magi1-chunks", True)]
    assert report.num_chunks == 3 and report.num_frames == 72 and report.seconds_to_first_chunk is not None


@pytest.mark.parametrize("setting", ["on", "off"])
def test_a_run_failing_while_sampling_keeps_every_denoised_chunk_for_resume(tiny_pipeline, tmp_path, monkeypatch,
                                                                            setting):
    monkeypatch.setenv(OVERLAP_ENV, setting)
    reference = tmp_path / "reference.mp4"
    tiny_pipeline.generate_to_file(reference, prompt="a ball", num_frames=72, seed=4, progress=False)
    out = tmp_path / "out.mp4"

    class Failed(Exception):
        pass

    def fail_at_second_chunk(event):
        if event["type"] == "chunk" and event["index"] == 1:
            raise Failed  # chunk 1 is denoised (its state handed over) but never decoded

    with pytest.raises(Failed):
        tiny_pipeline.generate_to_file(out, prompt="a ball", num_frames=72, seed=4, progress=False,
                                       callback=fail_at_second_chunk)
    assert ResumeState.load(resume_state_path(out)).finished_chunks == 2  # chunk 0 written, chunk 1 saved
    report = tiny_pipeline.generate_to_file(out, prompt="a ball", num_frames=72, seed=4, progress=False, resume=True)
    assert report.resumed_chunks == 2
    assert out.read_bytes() == reference.read_bytes()
