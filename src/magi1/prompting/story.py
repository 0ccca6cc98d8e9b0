"""Story mode: a story or a list of beats becomes one caption schedule for the run's chunks.

The model answers in a JSON schema, {"shots": [{"first_chunk": 0, "caption": "..."}, ...]}: each shot's caption
holds from its first chunk until the next shot starts, which is exactly the run's `chunk_prompts` mapping.
One caption per chunk is the case where every chunk starts a shot.
"""

from __future__ import annotations

import json
import re

SCHEMA_NAME = "chunk_schedule"
STORY_SCHEMA = {
    "type": "object",
    "properties": {
        "shots": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "first_chunk": {"type": "integer", "description": "the chunk (from 0) where this shot starts"},
                    "caption": {"type": "string", "description": "the full caption for the video model"},
                },
                "required": ["first_chunk", "caption"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["shots"],
    "additionalProperties": False,
}
MAX_STORY_CHARS = 4000
MAX_BEATS = 64


class StoryAnswerError(ValueError):
    """The model's answer is not a usable schedule; the message says why, in a clause."""


def story_response_format() -> dict:
    """The `response_format` of a chat-completions request that asks for STORY_SCHEMA (structured outputs)."""
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": STORY_SCHEMA}}


def parse_story_answer(text: str, num_chunks: int) -> dict[int, str]:
    """{first chunk: caption} from the model's answer, or StoryAnswerError naming what is wrong."""
    body = _without_code_fence(text or "")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise StoryAnswerError(f"it is not valid JSON ({err.msg} at character {err.pos})") from None
    shots = data.get("shots") if isinstance(data, dict) else None
    if not isinstance(shots, list) or not shots:
        raise StoryAnswerError('it has no non-empty "shots" list')
    if len(shots) > num_chunks:
        raise StoryAnswerError(f"it has {len(shots)} shots for {num_chunks} chunks")
    schedule: dict[int, str] = {}
    previous = -1
    for number, shot in enumerate(shots):
        if not isinstance(shot, dict):
            raise StoryAnswerError(f"shot {number} is not an object")
        first, caption = shot.get("first_chunk"), shot.get("caption")
        if isinstance(first, bool) or not isinstance(first, int):
            raise StoryAnswerError(f"shot {number} has no whole-number first_chunk")
        if not isinstance(caption, str) or not caption.strip():
            raise StoryAnswerError(f"shot {number} has no caption")
        if number == 0 and first != 0:
            raise StoryAnswerError(f"the first shot starts at chunk {first}, not 0")
        if first <= previous or first >= num_chunks:
            raise StoryAnswerError(f"shot {number} starts at chunk {first}; first chunks must increase and stay "
                                   f"below {num_chunks}")
        schedule[first] = " ".join(caption.split())
        previous = first
    return schedule


def split_story(story: str) -> list[str]:
    """A story's sentences, the beats of the fallback ("A ball falls. Then it rolls away." -> two beats)."""
    text = " ".join(story.split())
    # A beat split off at a semicolon ends in it ("a cat walks;"); the captions end in a full stop instead.
    sentences = [s.strip().rstrip(";").rstrip() for s in re.split(r"(?<=[.!?;])\s+", text) if s.strip(" ;")]
    return [re.sub(r"^(then|next|after that|afterwards|finally),?\s+", "", s, flags=re.IGNORECASE) for s in sentences]


def spread_beats(beats: list[str], num_chunks: int) -> dict[int, str]:
    """{first chunk: beat}: beats spread evenly over the chunks; with more beats than chunks, neighbours share one."""
    if not beats:
        raise ValueError("no beats to spread")
    if len(beats) > num_chunks:
        groups = [beats[i * len(beats) // num_chunks:(i + 1) * len(beats) // num_chunks] for i in range(num_chunks)]
        return {i: " ".join(group) for i, group in enumerate(groups)}
    return {i * num_chunks // len(beats): beat for i, beat in enumerate(beats)}


def _without_code_fence(text: str) -> str:
    """Some local models wrap JSON in a ```json fence even when asked not to."""
    text = text.strip()
    fenced = re.fullmatch(r"```[a-zA-Z]*\s*(.*?)\s*```", text, flags=re.DOTALL)
    return fenced.group(1) if fenced else text
