"""Context / pipeline / tile parallelism across 2 and 4 CPU processes (gloo on loopback) against one process.

Each launch starts the processes the way torchrun does (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
runs tests/parallel_workers/worker.py; several layouts of one world size share a launch to save start-up
time. Compared: one DiT forward that writes a KV cache, one that reads it and a batched pass; a whole
tiny t2v run with 3-pass guidance; a tiled VAE decode. Then a rank is killed, or hangs, mid-run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
WORKER = HERE / "parallel_workers" / "worker.py"
sys.path.insert(0, str(HERE / "parallel_workers"))

import cases  # noqa: E402

from magi1.models.vae_tiling import tiled_decode  # noqa: E402

TOLERANCE = 1e-5  # float32
LAUNCH_LIMIT_S = 240  # a generous cap on a loaded 2-core machine; a hang would otherwise block the suite
FAIL_TIMEOUT_S = 4.0  # process-group timeout in the failure tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, *args: str) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list[subprocess.Popen], limit: float = LAUNCH_LIMIT_S) -> list[tuple[int, str]]:
    deadline = time.monotonic() + limit
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append((p.returncode, err))
    finally:
        kill_all(procs)
    return results


def kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    config = cases.make_config()
    model = cases.tiny_dit(config)
    ref = {f"dit.{k}": v for k, v in cases.dit_forward(model).items()}
    y, masks = cases.text_inputs()
    ref["t2v"] = cases.t2v(model, config, y, masks)
    ref["vae"] = tiled_decode(cases.tiny_vae(), cases.vae_latent(), cases.VAE_TILES)
    return ref


def check_layouts(tmp_path: Path, world: int, layouts: list[str], reference) -> None:
    results = finish(launch(world, "compare", str(tmp_path), "--layouts", *layouts))
    for rank, (code, err) in enumerate(results):
        assert code == 0, f"rank {rank} exited with {code}:\n{err[-3000:]}"
    errors = {}
    for layout in layouts:
        for rank in range(world):
            got = torch.load(tmp_path / f"{layout}.rank{rank}.pt")
            for key, want in reference.items():
                assert got[key].shape == want.shape, (layout, rank, key)
                errors[(layout, rank, key)] = (got[key] - want).abs().max().item()
    worst = {k: v for k, v in errors.items() if v > TOLERANCE}
    assert not worst, worst
    print({layout: max(v for (lay, _, _), v in errors.items() if lay == layout) for layout in layouts})


def test_two_processes_cp2_with_overlap_and_pp2(tmp_path, reference):
    check_layouts(tmp_path, 2, ["2x1:2", "1x2"], reference)


def test_four_processes_cp4_and_cp2_x_pp2(tmp_path, reference):
    check_layouts(tmp_path, 4, ["4x1", "2x2:-1"], reference)


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_a_lost_rank_ends_the_run_with_an_error_and_no_output(tmp_path, mode):
    procs = launch(2, mode, str(tmp_path), "--layouts", "2x1", "--timeout", str(FAIL_TIMEOUT_S))
    try:
        marker = tmp_path / "rank1.step2"
        deadline = time.monotonic() + LAUNCH_LIMIT_S
        while not marker.exists():
            assert procs[1].poll() is None and procs[0].poll() is None, finish(procs)
            assert time.monotonic() < deadline, "rank 1 never reached step 2"
            time.sleep(0.05)
        if mode == "die":
            os.kill(procs[1].pid, signal.SIGKILL)
        lost_at = time.monotonic()
        code, err = finish(procs[:1], limit=FAIL_TIMEOUT_S * 4 + 10)[0]
        waited = time.monotonic() - lost_at
    finally:
        kill_all(procs)
    assert code == 3, err[-3000:]
    assert "worker rank 0: error" in err and ("died" in err or "did not answer" in err), err[-3000:]
    # the backend raises at the timeout; allow for start-up load on a shared 2-core machine
    assert waited < FAIL_TIMEOUT_S * 4 + 10, waited
    assert not (tmp_path / "out.mp4").exists()
    assert not any("out" in p.name for p in tmp_path.iterdir()), list(tmp_path.iterdir())  # nor .out.partial.mp4
    print(f"{mode}: rank 0 stopped {waited:.1f}s after rank 1 was lost: {err.strip().splitlines()[-1]}")
