"""EnhancedPrompts: what enhancement produced, and how it travels (job records, mp4 metadata, a command line).

A run made with `--enhance` records its captions in the mp4 (`description`: the first caption; `comment`: JSON
with every caption), so it can be made again with `magi1 generate --prompt ... [--chunk_prompt ...]` and no model.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

METADATA_TAG = "magi1"          # the key inside the JSON comment


@dataclass
class EnhancedPrompts:
    prompt: str                                  # the caption for the run (chunk 0's in story mode)
    chunk_prompts: dict[int, str] | None = None  # {first generated chunk: caption}, each holds until the next
    original: str = ""                           # what the user wrote: the idea, the story or the beats
    enhancer: str = "fallback"                   # the model's name, or "fallback"
    mode: str = "t2v"

    @classmethod
    def from_schedule(cls, schedule: dict[int, str], **fields) -> "EnhancedPrompts":
        schedule = dict(sorted(schedule.items()))
        return cls(prompt=schedule[0], chunk_prompts=schedule if len(schedule) > 1 else None, **fields)

    def generate_args(self) -> list[str]:
        """The `magi1 generate` flags that give the same captions without enhancement."""
        args = ["--prompt", self.prompt]
        for chunk, caption in sorted((self.chunk_prompts or {}).items()):
            if chunk:
                args += ["--chunk_prompt", f"{chunk}:{caption}"]
        return args

    def command_line(self) -> str:
        return shlex.join(["magi1", "generate", *self.generate_args()])

    def describe(self) -> str:
        """Printable lines: the caption(s), then how to reproduce them."""
        source = "fallback templates" if self.enhancer == "fallback" else f"model {self.enhancer}"
        if not self.chunk_prompts:
            lines = [f"enhanced prompt ({source}): {self.prompt}"]
        else:
            lines = [f"enhanced chunk prompts ({source}):"]
            lines += [f"  chunk {chunk}: {caption}" for chunk, caption in sorted(self.chunk_prompts.items())]
        lines.append(f"reproduce without enhancement: {self.command_line()} ...")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt,
                "chunk_prompts": None if self.chunk_prompts is None
                else {str(k): v for k, v in sorted(self.chunk_prompts.items())},
                "original": self.original, "enhancer": self.enhancer, "mode": self.mode}

    @classmethod
    def from_dict(cls, data: dict) -> "EnhancedPrompts":
        chunks = data.get("chunk_prompts")
        return cls(prompt=str(data["prompt"]),
                   chunk_prompts=None if chunks is None else {int(k): str(v) for k, v in chunks.items()},
                   original=str(data.get("original", "")), enhancer=str(data.get("enhancer", "fallback")),
                   mode=str(data.get("mode", "t2v")))

    def video_metadata(self) -> dict[str, str]:
        """Container tags for the mp4 (standard mp4 keys, shown by ffprobe and most players)."""
        return {"description": self.prompt, "comment": json.dumps({METADATA_TAG: self.to_dict()}, ensure_ascii=False)}


def read_enhanced_prompts(path: str | Path) -> EnhancedPrompts | None:
    """The captions a `--enhance` run recorded in its mp4, or None when it holds none."""
    import av

    with av.open(str(path)) as container:
        comment = container.metadata.get("comment")
    if not comment:
        return None
    try:
        record = json.loads(comment)[METADATA_TAG]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    return EnhancedPrompts.from_dict(record)
