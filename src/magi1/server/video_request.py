"""A Videos API request (OpenAI's fields plus magi1's documented extras) checked against the loaded model.

OpenAI fields: prompt, model, seconds, size ("WxH"), input_reference (an image: i2v) and, for an extension,
video. magi1 extras: seed, num_inference_steps, chunk_prompts, negative_prompt, fps, keep_aspect, enhance,
story (prompt enhancement in the job: job_enhance.py). Anything
else is refused, naming the field. `seconds` and `size` are mapped with the model's own limits
(ModelLimits), which GET /v1/models states: a video is made of whole chunks, so seconds round up to the
next chunk, and a frame may hold at most as many pixels as the model's configured size.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .job_request import (BadRequest, JobRequest, _bool, _chunk_prompts, _check_limits, _text, check_enhancement,
                          short_number, story_field, whole_number)
from .openai_errors import ApiError, invalid
from .settings import ServerSettings

SIZE_PATTERN = re.compile(r"^ *([0-9]{1,5}) *[xX] *([0-9]{1,5}) *$", re.ASCII)
# A positive decimal number in ASCII digits ("1", "2.5", ".5"); not "١", "²", "1_0", "1e3", "inf".
SECONDS_PATTERN = re.compile(r"^ *([0-9]{1,6}(?:\.[0-9]{0,6})?|\.[0-9]{1,6}) *$", re.ASCII)
SIZE_MULTIPLE = 16  # VAE stride 8 times the DiT's 2x2 patches
EXTRA_FIELDS = ("seed", "num_inference_steps", "chunk_prompts", "negative_prompt", "fps", "keep_aspect", "enhance",
                "story")
CREATE_FIELDS = ("prompt", "model", "seconds", "size", "input_reference", *EXTRA_FIELDS)
EXTEND_FIELDS = ("prompt", "model", "seconds", "video", "size", *EXTRA_FIELDS)
# How much of the video an extension conditions on: its last frames, as many as the official prefix_frame.
EXTENSION_CONTEXT_FRAMES = 32


@dataclass(frozen=True)
class ModelLimits:
    """What the loaded model can make, as GET /v1/models states it under "magi1"."""

    fps: int
    frames_per_chunk: int
    temporal_downsample: int
    default_width: int
    default_height: int
    default_seconds: float
    max_seconds: float
    max_pixels: int          # width * height of one frame: the model's configured size
    max_width: int
    max_height: int
    size_multiple: int
    default_steps: int
    max_steps: int
    window_size: int
    negative_prompt: bool    # False for a guidance-distilled model (cfg_number 1)

    @property
    def chunk_seconds(self) -> float:
        return self.frames_per_chunk / self.fps

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("temporal_downsample")
        data["chunk_seconds"] = self.chunk_seconds
        data["default_size"] = f"{self.default_width}x{self.default_height}"
        return data


def model_limits(config, settings: ServerSettings, fps: int | None = None) -> ModelLimits:
    """The limits of the model `config` (a MagiConfig) describes: known before the model has loaded.

    fps: the loaded pipeline's, where it differs from the config's.
    """
    runtime = config.runtime_config
    fps = int(fps or runtime.fps)
    downsample = int(runtime.temporal_downsample_factor)
    frames_per_chunk = int(runtime.chunk_width) * downsample
    max_chunks = max(1, settings.max_frames // frames_per_chunk)
    default_chunks = math.ceil(runtime.num_frames / frames_per_chunk)
    return ModelLimits(
        fps=fps, frames_per_chunk=frames_per_chunk, temporal_downsample=downsample,
        default_width=int(runtime.video_size_w), default_height=int(runtime.video_size_h),
        default_seconds=seconds_of(min(default_chunks, max_chunks) * frames_per_chunk, fps),
        max_seconds=seconds_of(max_chunks * frames_per_chunk, fps),
        max_pixels=int(runtime.video_size_w) * int(runtime.video_size_h),
        max_width=settings.max_width, max_height=settings.max_height, size_multiple=SIZE_MULTIPLE,
        default_steps=int(runtime.num_steps), max_steps=settings.max_steps,
        window_size=int(getattr(runtime, "window_size", 1)),
        negative_prompt=int(getattr(runtime, "cfg_number", 3)) != 1,
    )


def seconds_of(frames: int, fps: float) -> float:
    return round(frames / fps, 3)


def seconds_text(seconds: float) -> str:
    """OpenAI sends seconds as text ("4"); whole seconds print without a decimal point."""
    return f"{seconds:g}"


@dataclass
class VideoRequest:
    job: JobRequest
    # Kept in job.json (JobRequest.video_api) so a restarted server still shows the same video object.
    meta: dict


def parse_video_request(fields: Mapping[str, Any], limits: ModelLimits, settings: ServerSettings, *,
                        model_id: str, kind: str, upload_kind: str | None = None) -> VideoRequest:
    """kind: "create" (t2v, or i2v when upload_kind == "image") or "extension" (v2v of an earlier video)."""
    allowed = CREATE_FIELDS if kind == "create" else EXTEND_FIELDS
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise invalid(f"unknown parameter {unknown[0][:40]!r}; this endpoint takes {', '.join(allowed)}",
                      param=unknown[0][:40], code="unknown_parameter")
    model = fields.get("model")
    if model not in (None, "", model_id):
        raise ApiError(400, f"this server runs the model {model_id!r}, not {str(model)[:60]!r} "
                            "(GET /v1/models lists it)", param="model", code="model_not_found")
    with field_errors("prompt"):
        prompt = _text(fields.get("prompt"), "prompt", settings)
    with field_errors("chunk_prompts"):
        chunk_prompts = _chunk_prompts(fields.get("chunk_prompts"), settings)
    with field_errors("enhance"):
        enhance = _bool(fields.get("enhance"), "enhance") if "enhance" in fields else None
    with field_errors("story"):
        story = story_field(fields.get("story"), settings)
        enhance = check_enhancement(enhance, story, prompt, chunk_prompts)
    if not prompt and not (chunk_prompts and 0 in chunk_prompts) and story is None:
        raise invalid("a prompt is required", param="prompt", code="missing_required_parameter")
    with field_errors("negative_prompt"):
        negative_prompt = _text(fields.get("negative_prompt"), "negative_prompt", settings)
    if negative_prompt and not limits.negative_prompt:
        raise invalid("this model is guidance-distilled (cfg_number 1), so it takes no negative_prompt",
                      param="negative_prompt", code="unsupported_value")
    width, height = parse_size(fields.get("size"), limits)
    seconds = parse_seconds(fields.get("seconds"), limits, default=None if kind == "extension" else
                            limits.default_seconds)
    chunks = math.ceil(round(seconds * limits.fps, 6) / limits.frames_per_chunk)
    num_frames = chunks * limits.frames_per_chunk
    if upload_kind == "image":
        # The image is the first latent frame of chunk 0: ask for one latent frame less so the video keeps
        # the chunks it was asked for (the image frame comes out as the video's first frame).
        num_frames -= limits.temporal_downsample
    with field_errors("seed"):
        seed = whole_number(fields.get("seed"), "seed")
    with field_errors("num_inference_steps"):
        steps = whole_number(fields.get("num_inference_steps"), "num_inference_steps")
    with field_errors("keep_aspect"):
        keep_aspect = _bool(fields.get("keep_aspect"))
    fps = fields.get("fps")
    if fps not in (None, ""):
        with field_errors("fps"):
            fps = whole_number(fps, "fps")
        if fps != limits.fps:
            raise invalid(f"this model makes {limits.fps} fps video; fps may only be {limits.fps}", param="fps",
                          code="unsupported_value")
    ints = {"num_frames": max(1, num_frames), "height": height, "width": width, "steps": steps, "seed": seed}
    try:
        _check_limits(ints, settings)
    except BadRequest as err:
        name = str(err).split(" ", 1)[0]
        raise invalid(str(err).replace("steps ", "num_inference_steps ", 1),
                      param={"steps": "num_inference_steps", "num_frames": "seconds"}.get(name, name)) from None
    mode = "t2v" if kind == "create" and upload_kind is None else ("i2v" if kind == "create" else "v2v")
    job = JobRequest(mode=mode, prompt=prompt, chunk_prompts=chunk_prompts, negative_prompt=negative_prompt,
                     keep_aspect=keep_aspect, enhance=enhance, story=story, **ints)
    meta = {"model": model_id, "size": f"{width}x{height}", "seconds": seconds_text(chunks * limits.chunk_seconds),
            "extends": None, "stitched": False, "source_seconds": None}
    return VideoRequest(job=job, meta=meta)


class field_errors:
    """Turn a job_request check's BadRequest into the OpenAI error naming the field."""

    def __init__(self, param: str):
        self.param = param

    def __enter__(self):
        return self

    def __exit__(self, kind, err, _traceback):
        if isinstance(err, BadRequest):
            raise invalid(str(err), param=self.param) from None
        return False


def parse_size(value: Any, limits: ModelLimits) -> tuple[int, int]:
    if value in (None, ""):
        return limits.default_width, limits.default_height
    match = SIZE_PATTERN.match(str(value))
    if match is None:
        raise invalid(f"size must be WIDTHxHEIGHT like {limits.default_width}x{limits.default_height}, "
                      f"got {str(value)[:40]!r}", param="size")
    width, height = int(match.group(1)), int(match.group(2))
    if width % limits.size_multiple or height % limits.size_multiple or not width or not height:
        raise invalid(f"size {width}x{height}: width and height must be positive multiples of {limits.size_multiple}",
                      param="size", code="unsupported_value")
    if width * height > limits.max_pixels or width > limits.max_width or height > limits.max_height:
        raise invalid(f"size {width}x{height} is larger than this model makes: at most {limits.max_pixels} pixels "
                      f"a frame (its configured {limits.default_width}x{limits.default_height}), each side at most "
                      f"{limits.max_width}x{limits.max_height}", param="size", code="unsupported_value")
    return width, height


def _shown(value: Any) -> str:
    """A client's value in a message: short, whatever its type or size."""
    return repr(value)[:20] if not isinstance(value, int) else repr(short_number(value))


def parse_seconds(value: Any, limits: ModelLimits, default: float | None) -> float:
    if value in (None, ""):
        if default is None:
            raise invalid("seconds is required", param="seconds", code="missing_required_parameter")
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # a JSON integer beyond any float
            seconds = math.inf if value > 0 else math.nan
    elif isinstance(value, str) and SECONDS_PATTERN.match(value):
        seconds = float(value)
    else:
        seconds = math.nan
    if math.isnan(seconds) or seconds <= 0:
        raise invalid(f"seconds must be a positive decimal number such as \"4\" or \"2.5\", got {_shown(value)}",
                      param="seconds")
    if seconds > limits.max_seconds + 1e-9:
        raise invalid(f"seconds must be at most {seconds_text(limits.max_seconds)} on this server "
                      f"({limits.frames_per_chunk}-frame chunks at {limits.fps} fps)", param="seconds",
                      code="unsupported_value")
    return seconds
