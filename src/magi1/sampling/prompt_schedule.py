"""Which caption each generated chunk gets, from one prompt and the per-chunk prompts a caller gives."""

from __future__ import annotations

from typing import Mapping

from ..errors import InputError


def chunk_prompt_schedule(prompt: str | None, chunk_prompts, num_chunks: int) -> list[str]:
    """The caption of every generated chunk.

    `chunk_prompts` is a list (one per chunk; the last one carries on) or a mapping {first chunk: prompt}
    (each prompt holds until the next key; chunk 0 falls back to `prompt`).
    """
    if chunk_prompts is None:
        if prompt is None:
            raise InputError("give a prompt")
        return [prompt] * num_chunks
    if isinstance(chunk_prompts, Mapping):
        schedule = dict(chunk_prompts)
        if 0 not in schedule:
            if prompt is None:
                raise InputError("chunk_prompts has no entry for chunk 0 and no prompt was given")
            schedule[0] = prompt
        bad = [k for k in schedule if not isinstance(k, int) or k < 0]
        if bad:
            raise InputError(f"chunk_prompts keys must be chunk indices >= 0, got {bad}")
        out, current = [], schedule[0]
        for i in range(num_chunks):
            current = schedule.get(i, current)
            out.append(current)
        return out
    prompts = list(chunk_prompts)
    if not prompts:
        raise InputError("chunk_prompts is empty")
    return [prompts[min(i, len(prompts) - 1)] for i in range(num_chunks)]
