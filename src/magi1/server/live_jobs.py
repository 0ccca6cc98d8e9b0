"""The worker's side of a live stream (WS /v1/realtime/video): a job someone is watching as it is made.

A live job differs from any other job in three ways, all here:
- its prompt can change while it runs: the pipeline gets the session's LivePrompts, which captions every
  chunk not yet started with the newest prompt the viewer sent;
- its video is written by ChunkedMp4Writer (io/chunked_mp4.py): one independently encoded fragment per
  chunk, the first after the init segment, so the bytes the viewer is sent, concatenated, are the finished
  file itself;
- after each chunk, its metadata and its fragment are handed to the viewer.

The worker thread calls `video_writer`, then `chunk_done` after each chunk; the connection's event loop
calls `take` to collect what is ready (a thread-safe deque, woken through `loop.call_soon_threadsafe`). The
deque is filled before the job's state changes, so once the job is seen finished, everything it produced is
already waiting.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Callable

from magi1.io.chunked_mp4 import ChunkedMp4Writer, mime_type
from magi1.sampling.live_prompts import LivePrompts, PromptChange

Message = dict | bytes


class LiveVideoWriter(ChunkedMp4Writer):
    """ChunkedMp4Writer with the VideoWriter interface the job runner uses (append/close/abort),
    remembering the bytes of the last chunk appended."""

    def __init__(self, path: str | Path, fps: float, metadata: dict[str, str] | None = None):
        super().__init__(path, fps, metadata=metadata)
        self.last_fragment: bytes | None = None
        self.last_shape: tuple[int, ...] | None = None  # (T, H, W, 3) of the last chunk appended

    def append(self, frames) -> None:
        self.last_fragment = self.append_chunk(frames)
        self.last_shape = tuple(frames.shape)


class LiveJob:
    """One watched job: its live prompts and the messages waiting for its viewer (thread-safe)."""

    def __init__(self, job_id: str, wake: Callable[[], None] = lambda: None):
        self.job_id = job_id
        self.prompts = LivePrompts(on_applied=self._applied)
        self._wake = wake
        self._lock = threading.Lock()
        self._waiting: collections.deque[Message] = collections.deque()
        self._writer: LiveVideoWriter | None = None
        self._mime: str | None = None
        self._frames_before = 0
        self.chunks_sent = 0

    # ------------------------------------------------------------------ the worker thread
    def video_writer(self, path: Path, fps: float, metadata: dict[str, str] | None = None) -> LiveVideoWriter:
        self._writer = LiveVideoWriter(path, fps, metadata)
        return self._writer

    def chunk_done(self, index: int, num_chunks: int) -> None:
        """Chunk `index` was appended to the video: send its metadata, then its fragment."""
        writer = self._writer
        fragment = writer.last_fragment if writer is not None else None
        if fragment is None:
            return
        writer.last_fragment = None
        first = self._mime is None
        if first:
            self._mime = mime_type(fragment)
        chunk_frames, height, width = writer.last_shape[:3]
        fps = float(writer.fps)
        caption = self.prompts.caption_of(index)
        metadata = {
            "type": "video.chunk_metadata", "video_id": f"video_{self.job_id}", "chunk": index,
            "num_chunks": num_chunks, "start_frame": self._frames_before, "num_frames": chunk_frames,
            "start_time": round(self._frames_before / fps, 6), "duration": round(chunk_frames / fps, 6),
            "fps": fps, "width": width, "height": height, "bytes": len(fragment), "init_segment": first,
            "mime_type": self._mime, "caption": caption_view(caption),
        }
        self._frames_before += chunk_frames
        self.chunks_sent += 1
        self._put(metadata, fragment)

    def caption_prompt(self, index: int) -> str | None:
        """The prompt chunk `index` was made with (its dominant one, during a blend)."""
        caption = self.prompts.caption_of(index)
        return None if caption is None else caption.prompt

    def _applied(self, change: PromptChange, first_chunk: int) -> None:
        self._put({"type": "session.interaction.applied", "event_id": change.event_id, "prompt": change.prompt,
                   "transition_chunks": change.transition_chunks, "first_chunk": first_chunk})

    # ------------------------------------------------------------------ the connection's event loop
    def take(self) -> list[Message]:
        with self._lock:
            messages = list(self._waiting)
            self._waiting.clear()
        return messages

    def _put(self, *messages: Message) -> None:
        with self._lock:
            self._waiting.extend(messages)
        self._wake()


def caption_view(caption) -> dict | None:
    """A chunk's caption as the stream reports it: the dominant prompt, the blend, and the changes it starts."""
    if caption is None:
        return None
    return {"prompt": caption.prompt, "mixture": [{"prompt": p, "weight": round(w, 6)} for p, w in caption.mixture],
            "started": list(caption.started), "completed": list(caption.completed)}


class LiveJobs:
    """job id -> LiveJob of the jobs a viewer is watching; the job runner asks `get` for each job it runs."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, LiveJob] = {}

    def add(self, live: LiveJob) -> None:
        with self._lock:
            self._jobs[live.job_id] = live

    def get(self, job_id: str) -> LiveJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)


def live_job_of(store, job) -> LiveJob | None:
    """The live viewer of `job`, if one is watching (stores without live streams have none)."""
    live_jobs = getattr(store, "live_jobs", None)
    return live_jobs.get(job.id) if live_jobs is not None else None
