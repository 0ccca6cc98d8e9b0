"""The chunk worker that overlaps decode / encode with denoising: order, bounded queue, errors raised in the
submitting thread, and already-submitted chunks finished when the submitting side fails."""

from __future__ import annotations

import threading
import time

import pytest

from magi1.chunk_worker import ChunkWorker


def test_handles_items_in_order_on_another_thread():
    seen, threads = [], set()

    def handle(item):
        time.sleep(0.01)
        seen.append(item)
        threads.add(threading.current_thread().name)

    with ChunkWorker(handle) as worker:
        for i in range(6):
            worker.submit(i)
    assert seen == list(range(6)) and threads == {"magi1-chunks"}


def test_queue_is_bounded_so_the_submitter_waits():
    release = threading.Event()
    started = threading.Event()

    def handle(item):
        started.set()
        release.wait(5)

    with ChunkWorker(handle, depth=1) as worker:
        worker.submit(0)  # being handled
        started.wait(5)
        worker.submit(1)  # waiting in the queue
        blocked = threading.Thread(target=worker.submit, args=(2,))
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive()  # no room: the third chunk waits for the worker
        release.set()
        blocked.join(5)
        assert not blocked.is_alive()


def test_worker_error_is_raised_at_the_next_submit_and_later_items_are_dropped():
    handled = []

    def handle(item):
        if item == 1:
            raise OSError("disk full")
        handled.append(item)

    with pytest.raises(OSError, match="disk full"):
        with ChunkWorker(handle) as worker:
            for i in range(50):
                worker.submit(i)
                time.sleep(0.01)
    assert handled == [0]


def test_worker_error_is_raised_at_close():
    def handle(item):
        raise ValueError("bad frames")

    worker = ChunkWorker(handle)
    with pytest.raises(ValueError, match="bad frames"):
        with worker:
            worker.submit(0)


def test_submitted_chunks_are_finished_when_the_submitter_fails():
    handled = []

    def handle(item):
        time.sleep(0.05)
        handled.append(item)

    with pytest.raises(KeyboardInterrupt):
        with ChunkWorker(handle, depth=2) as worker:
            worker.submit(0)
            worker.submit(1)
            raise KeyboardInterrupt  # Ctrl-C while the sampler runs: the finished chunks still reach the file
    assert handled == [0, 1]


def test_a_float32_decode_on_the_worker_never_runs_inside_the_samplers_bf16_input_gemm(monkeypatch):
    """oneDNN's bf16-input switch (the DiT's float32 islands on AMX-class CPUs) is process-wide: a float32 VAE
    GEMM that the worker ran meanwhile would round its operands to bf16 and give another frame now and then
    (seen: the same seed, another video, one run in six). The worker's torch calls wait for the island."""
    import torch
    import torch.nn.functional as F

    from magi1.ops import cpu_paths

    monkeypatch.setattr(cpu_paths, "_islands", cpu_paths.Decision("bf16-inputs", "test"))
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 512, generator=g), torch.randn(256, 512, generator=g)
    want = F.linear(x, w)  # plain float32, as without any island
    results, started = [], threading.Event()

    def decode(item):
        started.set()
        results.append(F.linear(x, w))

    with ChunkWorker(decode) as worker:
        with cpu_paths.bf16_input_gemms():  # the sampler is inside an island GEMM when the chunk arrives
            worker.submit(0)
            assert started.wait(5)
            time.sleep(0.2)
            assert not results  # the worker's GEMM waits for the island to end
    assert len(results) == 1 and torch.equal(results[0], want)
