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
