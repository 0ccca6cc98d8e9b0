"""Prompts that change while a video is being made: MAGI-1's per-chunk captions, decided live.

    live = LivePrompts()
    for chunk in pipe.stream("a red ball falls", live_prompts=live, ...):
        ...
        live.change("the ball turns blue", transition_chunks=2)   # from any thread, at any time

Every chunk is captioned when it first enters the denoising window (after that its caption is fixed: it
is already partly denoised under it). A change takes effect from the next chunk that has not started yet
and holds for every chunk after it, replacing what the run had planned (`prompt`, `chunk_prompts`).
With `transition_chunks = n > 0` the caption reaches the new prompt over n chunks: chunk i of the
transition (i = 1..n) is the blend (1 - i/n) * before + (i/n) * new of the caption embeddings; n = 0
switches at once. A newer change supersedes an older one still waiting; one that interrupts a
transition starts from the blend reached at its first chunk.

A caption is a mixture: ((prompt, weight), ...) with weights summing to 1; a single prompt with weight 1 is
exactly that prompt's embedding, the same as `chunk_prompts` gives.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

Mixture = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class PromptChange:
    prompt: str
    transition_chunks: int = 0
    event_id: str = field(default_factory=lambda: f"evt_{uuid.uuid4().hex[:16]}")

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("a prompt change needs a non-empty prompt")
        if isinstance(self.transition_chunks, bool) or not isinstance(self.transition_chunks, int) \
                or self.transition_chunks < 0:
            raise ValueError(f"transition_chunks must be a whole number >= 0, got {self.transition_chunks!r}")


@dataclass(frozen=True)
class ChunkCaption:
    """What one generated chunk was conditioned on, and which changes it reflects."""

    chunk: int
    mixture: Mixture
    started: tuple[str, ...] = ()      # changes whose first chunk this is
    active: tuple[str, ...] = ()       # changes contributing to it (a transition in progress included)
    completed: tuple[str, ...] = ()    # changes that reach their prompt in this chunk

    @property
    def prompt(self) -> str:
        """The dominant prompt (the target, in a transition past its middle)."""
        return max(self.mixture, key=lambda item: item[1])[0]

    @property
    def is_single(self) -> bool:
        return len(self.mixture) == 1


@dataclass
class _Transition:
    change: PromptChange
    start: Mixture
    first_chunk: int


class LivePrompts:
    """Thread-safe: `change` from any thread; `caption_for` from the thread that runs the sampler.

    on_applied(change, first_chunk) is called (on the sampler's thread) when a change is scheduled.
    """

    def __init__(self, on_applied: Callable[[PromptChange, int], None] | None = None):
        self._lock = threading.Lock()
        self._pending: PromptChange | None = None
        self._superseded: list[PromptChange] = []
        self._transition: _Transition | None = None
        self._captions: dict[int, ChunkCaption] = {}
        self._applied: dict[str, int] = {}
        self._closed = False
        self.on_applied = on_applied

    # ------------------------------------------------------------------ any thread
    def change(self, prompt: str, transition_chunks: int = 0, event_id: str | None = None) -> PromptChange:
        """Ask for `prompt` from the next chunk not yet started; returns the change (with its event id)."""
        text = prompt.strip() if isinstance(prompt, str) else prompt
        change = (PromptChange(text, transition_chunks) if event_id is None
                  else PromptChange(text, transition_chunks, event_id))
        with self._lock:
            if self._closed:
                raise ValueError("the run has ended: no chunk is left to take a new prompt")
            if self._pending is not None:
                self._superseded.append(self._pending)
            self._pending = change
        return change

    def applied_chunk(self, event_id: str) -> int | None:
        """The first chunk a change affects, once it is scheduled."""
        with self._lock:
            return self._applied.get(event_id)

    def caption_of(self, chunk: int) -> ChunkCaption | None:
        with self._lock:
            return self._captions.get(chunk)

    def close(self) -> list[PromptChange]:
        """The run is over: the changes that never found a chunk (too late, or superseded)."""
        with self._lock:
            self._closed = True
            left = self._superseded + ([self._pending] if self._pending is not None else [])
            self._pending, self._superseded = None, []
            return left

    def superseded(self) -> list[PromptChange]:
        """Changes replaced by a newer one before they took effect (taken once)."""
        with self._lock:
            gone, self._superseded = self._superseded, []
            return gone

    # ------------------------------------------------------------------ the sampler's thread
    def caption_for(self, chunk: int, planned: str) -> ChunkCaption:
        """The caption of generated chunk `chunk`, which is entering the window now; `planned` is the run's own."""
        with self._lock:
            newly = None
            if self._pending is not None:
                newly = self._pending
                before = self._mixture_at(chunk, planned)
                self._transition = _Transition(newly, before, chunk)
                self._pending = None
                self._applied[newly.event_id] = chunk
            caption = self._caption(chunk, planned, newly)
            self._captions[chunk] = caption
        if newly is not None and self.on_applied is not None:
            self.on_applied(newly, chunk)
        return caption

    def _mixture_at(self, chunk: int, planned: str) -> Mixture:
        """The caption chunk `chunk` would get without a new change (caller holds the lock)."""
        transition = self._transition
        if transition is None:
            return ((planned, 1.0),)
        n = transition.change.transition_chunks
        step = chunk - transition.first_chunk + 1  # 1 for the transition's first chunk
        if n == 0 or step >= n:
            return ((transition.change.prompt, 1.0),)
        return blend(transition.start, transition.change.prompt, step / n)

    def _caption(self, chunk: int, planned: str, newly: PromptChange | None) -> ChunkCaption:
        transition = self._transition
        mixture = self._mixture_at(chunk, planned)
        if transition is None:
            return ChunkCaption(chunk, mixture)
        n = transition.change.transition_chunks
        step = chunk - transition.first_chunk + 1
        event = transition.change.event_id
        active = (event,) if step <= max(n, 1) else ()
        completed = (event,) if step == max(n, 1) else ()
        return ChunkCaption(chunk, mixture, started=(event,) if newly is not None else (), active=active,
                            completed=completed)


def blend(start: Mixture, target: str, weight: float) -> Mixture:
    """(1 - weight) * start + weight * target, merged by prompt, weights summing to 1."""
    weights: dict[str, float] = {}
    for prompt, w in start:
        weights[prompt] = weights.get(prompt, 0.0) + (1.0 - weight) * w
    weights[target] = weights.get(target, 0.0) + weight
    return tuple((prompt, w) for prompt, w in weights.items() if w > 0)

