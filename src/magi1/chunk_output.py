"""What `generate_to_file` does with each clean chunk: decode it, save the run's resume state, append it to the
mp4, in that order; on a worker thread that overlaps the denoising of later chunks, or inline.

The order inside one chunk is what keeps a killed run resumable: the state saved before the fragment is
appended always covers every chunk in the file (a state one chunk ahead of the file is harmless, since a
resumed run re-decodes and rewrites every finished chunk from the state's latents). A run that fails on the
sampling side (Ctrl-C, an exception in a callback) first lets the worker finish the chunks handed to it,
then saves the newest state it was given, so the chunks already denoised are not denoised again; a run whose
worker failed (disk full, an interrupt while writing) keeps the state of the last chunk the worker wrote.

Whether to overlap is decided per run (`choose_overlap`, logged once per distinct decision with its reason),
overridable with env MAGI1_OVERLAP_DECODE = auto | on | off. Frames are the same bytes either way: the same
decode function runs on the same latents.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .chunk_worker import ChunkWorker
from .errors import InputError

logger = logging.getLogger(__name__)

OVERLAP_ENV = "MAGI1_OVERLAP_DECODE"
OVERLAP_SETTINGS = ("auto", "on", "off")
_logged: set[tuple] = set()


@dataclass(frozen=True)
class OverlapChoice:
    """Whether chunks are decoded and written on a worker thread, with how many torch threads, and why."""

    overlap: bool
    worker_threads: int | None  # intra-op threads of the worker on a CPU; None: leave torch's setting alone
    reason: str

    def describe(self) -> str:
        how = "on a worker thread" if self.overlap else "inline, after each chunk"
        threads = f" ({self.worker_threads} torch thread{'s' * (self.worker_threads != 1)})" \
            if self.overlap and self.worker_threads else ""
        return f"chunk decode + mp4 encode {how}{threads}: {self.reason}"


def choose_overlap(*, setting: str, accelerator: bool, multi_process: bool, offloaded: bool, dit_threads: int,
                   cores: int) -> OverlapChoice:
    """The decision as a pure function of what the run reports (tested with made-up machines).

    CPU rule: the worker only pays when a core is left over by the DiT's threads; on a CPU whose cores the DiT
    already fills, the decode and encode take the same core time either way and the oversubscribed threads
    (the DiT's OpenMP team waits at every barrier for a thread the OS gave to the decoder) only add to it.
    """
    if setting not in OVERLAP_SETTINGS:
        raise InputError(f"{OVERLAP_ENV} must be one of {', '.join(OVERLAP_SETTINGS)}, got {setting!r}")
    if multi_process:
        return OverlapChoice(False, None, "several processes: the decode's collectives must keep the DiT's order "
                                          "on every rank")
    if offloaded:
        return OverlapChoice(False, None, "weight offload parks the DiT's layers while the VAE decodes")
    spare = cores - dit_threads
    if setting == "off":
        return OverlapChoice(False, None, f"{OVERLAP_ENV}=off")
    if accelerator:
        return OverlapChoice(True, None, "the worker issues the decode on a side stream")
    if setting == "on":
        return OverlapChoice(True, max(1, spare), f"{OVERLAP_ENV}=on")
    if spare >= 1:
        return OverlapChoice(True, spare, f"{cores} cores, the DiT uses {dit_threads} torch thread"
                                          f"{'s' * (dit_threads != 1)}: {spare} left for the decoder")
    return OverlapChoice(False, None, f"the DiT's {dit_threads} torch threads fill the {cores} cores, so a worker "
                                      f"would only time-share them (docs/benchmarks.md, end to end)")


def overlap_for(pipe, *, setting: str | None = None, log: bool = True) -> OverlapChoice:
    """The choice for one pipeline's run here (setting: default env MAGI1_OVERLAP_DECODE, else "auto"), logged
    once per distinct decision."""
    from .runtime import is_accelerator

    if setting is None:
        setting = os.environ.get(OVERLAP_ENV, "auto").strip().lower() or "auto"
    choice = choose_overlap(
        setting=setting,
        accelerator=is_accelerator(pipe.dit_device),
        multi_process=getattr(pipe, "parallel", None) is not None,
        offloaded=getattr(pipe, "offload_mode", "none") not in (None, "none"),
        dit_threads=torch.get_num_threads(), cores=available_cores())
    key = (choice.overlap, choice.worker_threads, choice.reason)
    if log and key not in _logged:
        _logged.add(key)
        logger.info("magi1: %s", choice.describe())
    return choice


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ChunkSink:
    """Receives the sampler's resume states (`state_ready`, as `on_state`) and its chunks (`put`); writes them.

    decode(latents) -> uint8 frames (T, H, W, 3); writer: a ChunkedMp4Writer; save_state(state) persists one.
    """

    def __init__(self, decode: Callable[[torch.Tensor], np.ndarray], writer, save_state: Callable, *,
                 choice: OverlapChoice, device=None, start: float | None = None) -> None:
        self._decode, self._writer, self._save_state = decode, writer, save_state
        self.choice = choice
        self._pending = None  # the newest state not yet handed on with its chunk
        self._start = time.perf_counter() if start is None else start
        self.seconds_to_first_chunk: float | None = None
        self.frames_written = self.chunks_written = 0
        self._worker = ChunkWorker(self._handle, device=device, on_start=self._worker_threads) \
            if choice.overlap else None
        self._main_threads = torch.get_num_threads()

    def state_ready(self, state) -> None:
        self._pending = state

    def put(self, latents: torch.Tensor, *, replayed: bool = False) -> None:
        """One chunk's latents (1, 16, t, h, w), with the state saved when it finished (none for a replay)."""
        item = (latents, None if replayed else self._pending)
        if not replayed:
            self._pending = None
        if self._worker is None:
            self._handle(item)
        else:
            self._worker.submit(item)

    def __enter__(self) -> "ChunkSink":
        if self._worker is not None:
            # Pin the sampling thread's own thread count first: a thread that has not run a parallel op yet
            # would otherwise take up the process-wide value the worker sets for itself.
            torch.set_num_threads(self._main_threads)
            self._worker.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self._worker is not None:
                self._worker.close(raise_errors=exc_type is None)
        finally:
            if self._worker is not None and self.choice.worker_threads:
                torch.set_num_threads(self._main_threads)  # the process-wide value, for threads started later
            worker_failed = self._worker is not None and self._worker.failed
            if exc_type is not None and self._pending is not None and not worker_failed:
                self._save_state(self._pending)  # denoised, never decoded: a resumed run starts after it
        return False

    def _worker_threads(self) -> None:
        if self.choice.worker_threads:
            torch.set_num_threads(self.choice.worker_threads)  # this thread's team; the DiT's keeps its own

    def _handle(self, item) -> None:
        latents, state = item
        with torch.no_grad():  # grad mode is per thread: the worker's starts on
            frames = self._decode(latents)
        if state is not None:
            self._save_state(state)
        self._writer.append_chunk(frames)
        self.frames_written += len(frames)
        self.chunks_written += 1
        if self.seconds_to_first_chunk is None:
            self.seconds_to_first_chunk = time.perf_counter() - self._start
            logger.info("first chunk ready after %.1fs", self.seconds_to_first_chunk)
