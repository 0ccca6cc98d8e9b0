"""What a client asks for, parsed from form or JSON fields and checked against the server's limits.

Every field arrives as text (a form) or as JSON values; both go through the same checks so the API and the
web page behave identically. Mistakes raise BadRequest with a sentence meant for the person who sent it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .settings import ServerSettings

MODES = ("t2v", "i2v", "v2v")
INT_FIELDS = ("num_frames", "height", "width", "steps", "seed")
ENHANCE_FIELDS = ("enhance", "story")
KNOWN_FIELDS = ("mode", "prompt", "chunk_prompts", "negative_prompt", "keep_aspect", *INT_FIELDS, *ENHANCE_FIELDS)
MAX_SEED = 2**63 - 1
UPLOAD_FIELD = "file"
# A whole number as text: an optional minus and ASCII digits only ("²", "①", "٣", "--5", "1e3", "0x10" are not).
WHOLE_NUMBER_TEXT = re.compile(r"-?[0-9]{1,40}", re.ASCII)
MAX_ECHOED_NAMES = 5


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class JobRequest:
    mode: str = "t2v"
    prompt: str | None = None
    chunk_prompts: dict[int, str] | None = None   # {first generated chunk: prompt}, each holds until the next
    num_frames: int | None = None                  # None: the model config's value
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    seed: int | None = None
    keep_aspect: bool = False
    input_name: str | None = None                  # server-chosen name of the upload inside the job folder
    negative_prompt: str | None = None             # replaces the null caption of the unconditional passes
    video_api: dict | None = None                  # what the Videos API recorded (videos_api.py), else None
    enhance: bool = False                          # rewrite the prompt(s) into MAGI-1 captions in the job
    story: str | list[str] | None = None           # story mode: a story, or its beats in order -> chunk captions

    @property
    def wants_enhancement(self) -> bool:
        return self.enhance or self.story is not None

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.chunk_prompts is not None:
            data["chunk_prompts"] = {str(k): v for k, v in sorted(self.chunk_prompts.items())}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobRequest":
        """Rebuild from `to_dict()` output (a job folder's job.json)."""
        values = {k: data.get(k) for k in KNOWN_FIELDS if k in data}
        if values.get("chunk_prompts") is not None:
            values["chunk_prompts"] = {int(k): str(v) for k, v in values["chunk_prompts"].items()}
        return cls(**values, input_name=data.get("input_name"), video_api=data.get("video_api"))

    def pipeline_kwargs(self) -> dict:
        """Arguments for `pipeline.stream` (without the conditioning file, which the job store adds)."""
        return {
            "prompt": self.prompt,
            "chunk_prompts": dict(self.chunk_prompts) if self.chunk_prompts else None,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "num_inference_steps": self.steps,
            "seed": self.seed,
            "keep_aspect": self.keep_aspect,
            # only when given, so a pipeline without negative prompts still runs everything else
            **({"negative_prompt": self.negative_prompt} if self.negative_prompt else {}),
        }


def parse_job_fields(fields: Mapping[str, Any], settings: ServerSettings, *, upload_kind: str | None) -> JobRequest:
    """Check the fields of a submission; `upload_kind` is "image", "video" or None (no file sent)."""
    unknown = [name for name in fields if name not in KNOWN_FIELDS]
    if unknown:
        raise BadRequest(f"unknown field(s) {echo_names(unknown)}; known: {', '.join(KNOWN_FIELDS)}")
    mode = _mode(fields.get("mode"), upload_kind)
    prompt = _text(fields.get("prompt"), "prompt", settings)
    chunk_prompts = _chunk_prompts(fields.get("chunk_prompts"), settings)
    story = story_field(fields.get("story"), settings)
    enhance = check_enhancement(_bool(fields.get("enhance"), "enhance") if "enhance" in fields else None, story,
                                prompt, chunk_prompts)
    if not prompt and not (chunk_prompts and 0 in chunk_prompts) and story is None:
        raise BadRequest("a prompt is required (or chunk_prompts with an entry for chunk 0, or a story)")
    ints = {name: whole_number(fields.get(name), name) for name in INT_FIELDS}
    _check_limits(ints, settings)
    return JobRequest(mode=mode, prompt=prompt, chunk_prompts=chunk_prompts,
                      negative_prompt=_text(fields.get("negative_prompt"), "negative_prompt", settings),
                      keep_aspect=_bool(fields.get("keep_aspect")), enhance=enhance, story=story, **ints)


def _mode(value: Any, upload_kind: str | None) -> str:
    if value in (None, ""):
        mode = {"image": "i2v", "video": "v2v"}.get(upload_kind or "", "t2v")
    elif value in MODES:
        mode = value
    else:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}, got {str(value)[:40]!r}")
    needed = {"t2v": None, "i2v": "image", "v2v": "video"}[mode]
    if needed is None and upload_kind is not None:
        raise BadRequest("t2v takes no file; choose i2v for an image or v2v for a video")
    if needed is not None and upload_kind is None:
        raise BadRequest(f"{mode} needs an uploaded {needed} in the `{UPLOAD_FIELD}` field")
    if needed is not None and upload_kind != needed:
        raise BadRequest(f"{mode} needs {_a(needed)}, but the upload is {_a(upload_kind)}")
    return mode


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _text(value: Any, name: str, settings: ServerSettings) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be text, got {json_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} is not valid Unicode text (it holds a lone surrogate)") from None
    value = value.strip()
    if len(value) > settings.max_prompt_chars:
        raise BadRequest(f"{name} is {len(value)} characters; the limit is {settings.max_prompt_chars}")
    return value or None


def _chunk_prompts(value: Any, settings: ServerSettings) -> dict[int, str] | None:
    """A JSON list (one prompt per chunk) or object {"chunk index": prompt}; a form sends it as JSON text."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise BadRequest('chunk_prompts must be JSON: a list of prompts or an object like '
                             '{"2": "a new prompt"}') from None
    if isinstance(value, list):
        value = {str(i): p for i, p in enumerate(value)}
    if not isinstance(value, dict):
        raise BadRequest('chunk_prompts must be a list of prompts or an object like {"2": "a new prompt"}')
    if len(value) > settings.max_chunk_prompts:
        raise BadRequest(f"chunk_prompts has {len(value)} entries; the limit is {settings.max_chunk_prompts}")
    schedule: dict[int, str] = {}
    for key, text in value.items():
        index = whole_number(key, "a chunk_prompts key")
        if index is None or index < 0 or index >= settings.max_frames:
            raise BadRequest(f"chunk_prompts keys must be chunk indices from 0, got {str(key)[:20]!r}")
        prompt = _text(text, f"chunk_prompts[{index}]", settings)
        if not prompt:
            raise BadRequest(f"chunk_prompts[{index}] is empty")
        schedule[index] = prompt
    return schedule or None


def story_field(value: Any, settings: ServerSettings) -> str | list[str] | None:
    """Story mode's input: a story as text, or its beats as a list of texts (in order); None when not sent."""
    from magi1.prompting.story import MAX_BEATS, MAX_STORY_CHARS

    if value in (None, ""):
        return None
    if isinstance(value, str):
        story = _text(value, "story", settings)
        if story is not None and len(story) > MAX_STORY_CHARS:
            raise BadRequest(f"story is {len(story)} characters; the enhancer takes at most {MAX_STORY_CHARS}")
        return story
    if not isinstance(value, list):
        raise BadRequest(f"story must be text or a list of beats (texts), got {json_kind(value)}")
    limit = min(MAX_BEATS, settings.max_chunk_prompts)
    if not value or len(value) > limit:
        raise BadRequest(f"story has {len(value)} beats; it takes 1 to {limit}")
    beats = []
    for number, text in enumerate(value):
        beat = _text(text, f"story[{number}]", settings)
        if not beat:
            raise BadRequest(f"story[{number}] is empty")
        beats.append(beat)
    return beats


def check_enhancement(enhance: bool | None, story, prompt: str | None,
                      chunk_prompts: dict[int, str] | None) -> bool:
    """Whether the job's prompts are enhanced (`enhance` None: not sent); a story is always enhanced."""
    from magi1.prompting.enhancer import MAX_PROMPT_CHARS

    if story is not None:
        if enhance is False:
            raise BadRequest("a story is turned into captions by prompt enhancement; drop enhance: false")
        if prompt or chunk_prompts:
            raise BadRequest("story makes the run's captions; send it without prompt and chunk_prompts")
        return True
    if enhance:
        for text in [prompt or "", *(chunk_prompts or {}).values()]:
            if len(text) > MAX_PROMPT_CHARS:
                raise BadRequest(f"a prompt to enhance may be at most {MAX_PROMPT_CHARS} characters, got "
                                 f"{len(text)}")
    return bool(enhance)


def echo_names(names: list, limit: int = MAX_ECHOED_NAMES) -> str:
    """A few of `names`, each shortened, for an error message that must stay small however many were sent."""
    shown = ", ".join(repr(str(name)[:40]) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def short_number(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"a number of {len(text)} digits"


def json_kind(value: Any) -> str:
    return {list: "a list", dict: "an object", str: "text"}.get(type(value), type(value).__name__)


def whole_number(value: Any, name: str) -> int | None:
    """An int from a JSON number or from form text of ASCII digits; None when left empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise BadRequest(f"{name} must be a whole number, got {value!r}")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a whole number, got {json_kind(value)}")
    text = value.strip(" \t")
    if not WHOLE_NUMBER_TEXT.fullmatch(text):
        raise BadRequest(f"{name} must be a whole number written with the digits 0-9, got {text[:20]!r}")
    return int(text)


def _bool(value: Any, name: str = "keep_aspect") -> bool:
    if isinstance(value, bool):
        return value
    if value in (None, ""):
        return False
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise BadRequest(f"{name} must be true or false, got {text[:20]!r}")


def _check_limits(ints: dict[str, int | None], settings: ServerSettings) -> None:
    caps = {"num_frames": settings.max_frames, "height": settings.max_height, "width": settings.max_width,
            "steps": settings.max_steps}
    for name, cap in caps.items():
        value = ints[name]
        if value is not None and not 1 <= value <= cap:
            raise BadRequest(f"{name} must be between 1 and {cap} on this server, got {short_number(value)}")
    for name in ("height", "width"):
        if ints[name] is not None and ints[name] % 16:
            raise BadRequest(f"{name} must be a multiple of 16, got {short_number(ints[name])}")
    seed = ints["seed"]
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise BadRequest(f"seed must be between 0 and {MAX_SEED}, got {short_number(seed)}")
