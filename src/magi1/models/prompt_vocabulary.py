"""Prompts a small model cannot understand: the warning shown when a prompt uses none of its words.

A text-encoder folder may hold `prompt_vocabulary.json` ({"words": [...], "summary": "...", "examples": [...]})
next to its weights; the demo recipe writes one, the official T5 has none (it knows English). When the file is
there and a prompt shares no word with it, `check_prompt` returns one sentence saying what the model knows,
and the pipeline emits it as a `PromptWarning`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

VOCABULARY_FILE = "prompt_vocabulary.json"


class PromptWarning(UserWarning):
    """The prompt uses no word the model was trained on."""


@lru_cache(maxsize=8)
def _read(path: str) -> dict | None:
    file = Path(path) / VOCABULARY_FILE
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    return {"words": frozenset(w.lower() for w in data.get("words", [])), "summary": data.get("summary", ""),
            "examples": list(data.get("examples", []))}


def check_prompt(prompt: str, text_encoder_folder: str | Path) -> str | None:
    """None when the folder has no vocabulary or the prompt shares a word with it; else the warning text."""
    vocabulary = _read(str(text_encoder_folder))
    if vocabulary is None or not prompt or set(re.findall(r"[a-z]+", prompt.lower())) & vocabulary["words"]:
        return None
    examples = " or ".join(f'"{e}"' for e in vocabulary["examples"][:2])
    return (f"this model knows none of the words in {prompt!r}; it knows {vocabulary['summary']}"
            + (f" (try {examples})" if examples else "") + ", so expect a video of that instead")


def write_vocabulary(folder: str | Path, words, summary: str, examples=()) -> Path:
    path = Path(folder) / VOCABULARY_FILE
    path.write_text(json.dumps({"words": sorted(set(words)), "summary": summary, "examples": list(examples)},
                               indent=1) + "\n")
    _read.cache_clear()
    return path
