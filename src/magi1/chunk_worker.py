"""Hand finished chunks to a worker thread, so their VAE decode and mp4 encode overlap the denoising of later
chunks.

The sampler produces chunk k's latents and goes straight on with chunk k+1 while a worker thread decodes and
writes chunk k: on a CPU the VAE and the encoder fill the cores the DiT leaves idle between its ops, and on an
accelerator the worker issues its kernels on a side stream (`runtime.side_stream`). Chunks are handled one at
a time in submission order; the queue is bounded (`depth` chunks waiting), so latents never pile up and
memory stays flat however far the sampler runs ahead.

Failure semantics, the same as without the worker:
- an exception in the worker is raised in the submitting thread, at the next `submit` or at `close`;
- when the submitting side fails or is interrupted (Ctrl-C), the worker still finishes the chunks already
  handed to it (their frames are kept in the file, as they would have been without the overlap), then stops;
- a killed process loses the worker with it; whatever the worker committed (frames, then resume state, in
  that order inside `handle`) stays consistent.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from .ops import cpu_paths
from .runtime import side_stream

_STOP = object()


class ChunkWorker:
    """`with ChunkWorker(handle) as worker: worker.submit(item)`: handle(item) runs in order on one thread."""

    def __init__(self, handle: Callable[[Any], None], *, depth: int = 1, device=None, name: str = "magi1-chunks",
                 on_start: Callable[[], None] | None = None):
        self._handle = handle
        self._on_start = on_start  # runs first on the worker thread (thread-local settings: torch threads)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._failed = False  # stays set once the worker failed: later chunks are drained, never handled
        self._device = device
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def __enter__(self) -> "ChunkWorker":
        self._thread.start()
        self._started = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(raise_errors=exc_type is None)
        return False

    @property
    def failed(self) -> bool:
        """Whether a handled chunk raised (the chunks after it were dropped)."""
        return self._failed

    def _run(self) -> None:
        if self._on_start is not None:
            try:
                self._on_start()
            except BaseException as err:  # noqa: BLE001 - re-raised in the submitting thread
                self._error, self._failed = err, True
        # A CPU worker's float32 math must not run while the sampler's island GEMM flips oneDNN to bf16.
        with side_stream(self._device), cpu_paths.shielded_from_bf16_input_gemms(self._device):
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                if not self._failed:  # after a failure, drain without handling
                    try:
                        self._handle(item)
                    except BaseException as err:  # noqa: BLE001 - re-raised in the submitting thread
                        self._error, self._failed = err, True

    def submit(self, item: Any) -> None:
        """Queue one chunk (blocks while `depth` chunks are waiting); raises the worker's error, if any."""
        self._raise_pending()
        while True:  # put with a timeout so a worker failure is noticed while blocked
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                self._raise_pending()
                if not self._thread.is_alive():
                    raise RuntimeError("the chunk worker stopped unexpectedly")

    def close(self, *, raise_errors: bool = True) -> None:
        """Wait until every submitted chunk is handled; then raise the worker's error (if raise_errors)."""
        if self._started and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if raise_errors:
            self._raise_pending()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
