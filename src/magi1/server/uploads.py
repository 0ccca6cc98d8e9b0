"""Checks on an uploaded conditioning file: it must decode as an allowed image or video, within size limits.

The client's file name and declared content type are ignored; only the bytes decide. Videos are recognised
by their leading bytes and then opened with that one demuxer forced, because letting FFmpeg guess would let
a playlist-style upload (HLS, concat) make it open other files or URLs. Every frame is decoded, so a video
that breaks after its first frames is refused now rather than failing the job later. Refusals name no
server path (the decoder's own message, which does, goes to the log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .settings import IMAGE_FORMATS, VIDEO_FORMATS, ServerSettings

logger = logging.getLogger(__name__)

# Each decoded frame is also converted to RGB at this small size, as the pipeline will convert it.
CHECK_SIZE = 16


class UploadRejected(ValueError):
    """An upload that cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 415):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CheckedUpload:
    kind: str        # "image" or "video"
    format: str      # a key of IMAGE_FORMATS or VIDEO_FORMATS
    suffix: str      # the suffix the stored copy gets
    width: int
    height: int
    frames: int = 1


def accepted_formats_text(settings: ServerSettings) -> str:
    images = ", ".join(settings.image_formats)
    videos = ", ".join("MP4/MOV" if f == "mp4" else "MKV/WebM" if f == "matroska" else f.upper()
                       for f in settings.video_formats)
    return f"images: {images}; videos: {videos}"


def sniff_video_format(head: bytes) -> str | None:
    """The container family of a file from its first bytes, or None."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def check_upload(path: Path, settings: ServerSettings) -> CheckedUpload:
    """Decode enough of `path` to know it is a usable image or video; raise UploadRejected otherwise."""
    size = path.stat().st_size
    if size == 0:
        raise UploadRejected("the uploaded file is empty", status=400)
    if size > settings.max_upload_bytes:
        raise UploadRejected(f"the upload is {size} bytes; the limit is {settings.max_upload_bytes}", status=413)
    with path.open("rb") as handle:
        head = handle.read(64)
    video_format = sniff_video_format(head)
    if video_format is not None:
        if video_format not in settings.video_formats:
            raise UploadRejected(f"{video_format} videos are not accepted here; accepted "
                                 f"{accepted_formats_text(settings)}")
        return _check_video(path, video_format, settings)
    return _check_image(path, settings)


def _check_pixels(width: int, height: int, settings: ServerSettings, what: str) -> None:
    if width < 1 or height < 1:
        raise UploadRejected(f"the uploaded {what} has no pixels ({width}x{height})")
    if width * height > settings.max_input_pixels:
        raise UploadRejected(f"the uploaded {what} is {width}x{height}; at most {settings.max_input_pixels} "
                             f"pixels per frame are accepted", status=413)


def _check_image(path: Path, settings: ServerSettings) -> CheckedUpload:
    from PIL import Image, UnidentifiedImageError

    not_usable = (f"the upload is not a decodable image or video; accepted {accepted_formats_text(settings)}")
    try:
        # Only the allowed decoders are tried, so an exotic format never reaches a rarely used plugin.
        with Image.open(path, formats=list(settings.image_formats)) as image:
            fmt = image.format or ""
            width, height = image.size
            _check_pixels(width, height, settings, "image")  # before decoding: the header is enough
            image.load()
    except UploadRejected:
        raise
    except UnidentifiedImageError:
        raise UploadRejected(not_usable) from None
    except Image.DecompressionBombError:
        # Pillow refuses, before the header reaches _check_pixels, images past twice its own pixel cap
        raise UploadRejected(f"the uploaded image has more than {settings.max_input_pixels} pixels; at most "
                             f"{settings.max_input_pixels} pixels per frame are accepted", status=413) from None
    except (OSError, ValueError, SyntaxError) as err:
        logger.info("upload %s refused: %s", path.parent.name, err)
        raise UploadRejected("the uploaded image cannot be decoded (it is damaged or truncated)") from None
    if fmt not in settings.image_formats:
        raise UploadRejected(not_usable)
    return CheckedUpload("image", fmt, IMAGE_FORMATS[fmt], width, height)


def _check_video(path: Path, video_format: str, settings: ServerSettings) -> CheckedUpload:
    import av

    frames = 0
    try:
        with av.open(str(path), format=video_format) as container:
            if not container.streams.video:
                raise UploadRejected("the uploaded video has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            width, height = stream.width, stream.height
            _check_pixels(width, height, settings, "video")
            for frame in container.decode(stream):
                _check_pixels(frame.width, frame.height, settings, "video")
                frame.reformat(width=CHECK_SIZE, height=CHECK_SIZE, format="rgb24")
                frames += 1
                if frames > settings.max_input_frames:
                    raise UploadRejected(f"the uploaded video has more than {settings.max_input_frames} frames; "
                                         f"send a shorter clip", status=413)
    except UploadRejected:
        raise
    except (av.FFmpegError, ValueError, OSError) as err:
        logger.info("upload %s refused after %d frame(s): %s", path.parent.name, frames, err)
        where = f" after frame {frames}" if frames else ""
        raise UploadRejected(f"the uploaded video cannot be decoded{where} (it is damaged or truncated)") from None
    if frames == 0:
        raise UploadRejected("the uploaded video has no decodable frame")
    return CheckedUpload("video", video_format, VIDEO_FORMATS[video_format], width, height, frames)
