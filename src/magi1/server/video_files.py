"""Files behind the Videos API: request bodies in OpenAI's shapes, uploads given inline, and extensions.

An extension (POST /v1/videos/extensions) continues a video: the job conditions on the video's last
EXTENSION_CONTEXT_FRAMES frames (v2v) and, once done, its content is the whole video followed by the
continuation ("stitched", as OpenAI's extensions are), built once on first download without re-encoding
the source where its encoding allows (stitching.py).
"""

from __future__ import annotations

import base64
import binascii
import shutil
import threading
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.requests import Request

from .openai_errors import ApiError, invalid
from .settings import ServerSettings
from .stitching import faithful_copy, stitch
from .uploads import check_upload
from .video_request import EXTENSION_CONTEXT_FRAMES

MAX_FORM_FIELDS = 64
LOSSLESS_CONDITIONING = {"codec": "libx264rgb", "pix_fmt": "rgb24", "crf": 0}
SOURCE_FILE = "source.mp4"        # an extension's whole source video, at the extension's size and fps
STITCHED_FILE = "stitched.mp4"    # source + continuation: what an extension's content is
THUMBNAIL_FILE = "thumbnail.png"
_stitch_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


async def read_body(request: Request, file_fields: tuple[str, ...]) -> tuple[dict, dict[str, UploadFile]]:
    """Fields and files of a multipart form (as the `openai` package sends) or a JSON object.

    The `openai` package flattens nested values the way `qs` does: {"video": {"id": x}} arrives as the
    form field `video[id]`, a list as repeated `chunk_prompts[]`; both are folded back here.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        from .submission import read_json_object  # strict UTF-8, nesting depth and size already bounded

        return await read_json_object(request), {}
    if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(415, "send multipart/form-data or JSON", code="unsupported_media_type")
    form = await request.form(max_files=len(file_fields), max_fields=MAX_FORM_FIELDS)
    fields: dict = {}
    files: dict[str, UploadFile] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in file_fields:
                raise invalid(f"files go in {' or '.join(file_fields)}, not {key[:40]!r}", param=key[:40])
            if value.filename or (value.size or 0) > 0:
                files[key] = value
            continue
        name, _, rest = key.partition("[")
        if not rest:
            if name in fields:
                raise invalid(f"field {name[:40]!r} was sent twice", param=name[:40])
            fields[name] = value
        elif rest == "]":
            fields.setdefault(name, [])
            if not isinstance(fields[name], list):
                raise invalid(f"field {name[:40]!r} was sent twice", param=name[:40])
            fields[name].append(value)
        else:
            fields.setdefault(name, {})
            if not isinstance(fields[name], dict):
                raise invalid(f"field {name[:40]!r} was sent twice", param=name[:40])
            fields[name][rest.rstrip("]")] = value
    return fields, files


def decode_data_url(value, param: str) -> bytes:
    """The bytes of a base64 data URL; other URLs are refused (the server fetches nothing)."""
    if not isinstance(value, str) or not value.startswith("data:") or ";base64," not in value[:200]:
        raise invalid(f"{param} must be a base64 data URL (data:image/png;base64,...); this server does not "
                      "fetch remote URLs", param=param, code="unsupported_value")
    try:
        return base64.b64decode(value.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{param} is not valid base64", param=param) from None


def store_bytes(data: bytes, folder: Path, settings: ServerSettings):
    """Like app.save_and_check_upload, for bytes given inline; returns the CheckedUpload."""
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, f"the upload is larger than {settings.max_upload_bytes} bytes", code="file_too_large")
    received = folder / "upload.part"
    received.write_bytes(data)
    checked = check_upload(received, settings)
    received.rename(folder / f"input{checked.suffix}")
    return checked


def prepare_extension(source: Path, folder: Path, width: int, height: int, fps: int, keep_aspect: bool,
                      frames_per_chunk: int) -> int:
    """Write the job's conditioning (input.mp4: the source's last frames, lossless) and its source.mp4; frames
    of the source.

    source.mp4 is the source file itself where it already is the video at the extension's size and fps (then
    the stitched video copies its packets: stitching.py), else the source re-encoded at that size and fps.
    The context is whole chunks (the most within EXTENSION_CONTEXT_FRAMES): a prefix that ends inside a chunk
    would make the continuation longer than the seconds asked for, so a source shorter than one chunk is a 400.
    """
    from magi1.io.video import load_video, write_video

    frames = load_video(source, height, width, fps, max_frames=None, keep_aspect=keep_aspect)
    if len(frames) < frames_per_chunk:
        # A shorter prefix ends inside the first chunk: the run would round that chunk up and come out
        # longer than the seconds asked for (and than the video object said when it was created).
        raise invalid(f"the video to extend has {len(frames)} frame(s) at {fps} fps; an extension continues whole "
                      f"chunks of {frames_per_chunk} frames, so the video needs at least {frames_per_chunk}",
                      param="video", code="video_too_short")
    if faithful_copy(source, frames, fps):
        shutil.copyfile(source, folder / SOURCE_FILE)
    else:
        write_video(folder / SOURCE_FILE, frames, fps)
    context = max(frames_per_chunk, EXTENSION_CONTEXT_FRAMES // frames_per_chunk * frames_per_chunk)
    # Lossless (RGB H.264 at CRF 0): the job conditions on exactly the frames the source holds, as
    # `magi1 generate --mode v2v` does on the same clip, not on a re-encoded copy of them.
    write_video(folder / "input.mp4", frames[-context:], fps, **LOSSLESS_CONDITIONING)
    return len(frames)


def stitched_video(folder: Path, fps: int) -> Path:
    """The extension's whole video: its source, then its continuation (built once, then served from disk)."""
    target = folder / STITCHED_FILE
    with _lock_for(str(folder)):
        if not target.is_file():
            # The continuation's tags (its enhanced captions, if any) are the whole video's.
            stitch([folder / SOURCE_FILE, folder / "video.mp4"], target, fps,
                   metadata=container_tags(folder / "video.mp4"))
    return target


def container_tags(video: Path, names: tuple[str, ...] = ("description", "comment")) -> dict[str, str]:
    """The tags of `video` a copy should keep (not the muxer's own, such as major_brand or encoder)."""
    import av

    with av.open(str(video)) as container:
        return {k: v for k, v in container.metadata.items() if k in names}


def thumbnail(video: Path) -> Path:
    """A PNG of the video's first frame, next to it."""
    from PIL import Image

    target = video.parent / THUMBNAIL_FILE
    with _lock_for(str(target)):
        if not target.is_file():
            import av

            with av.open(str(video)) as container:
                frame = next(container.decode(video=0))
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(target)
    return target


def frame_count(video: Path) -> int:
    import av

    with av.open(str(video)) as container:
        return sum(1 for _ in container.demux(video=0) if _.size)


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _stitch_locks.setdefault(key, threading.Lock())
