"""What POST /v1/videos/extensions refuses before anything is queued, beyond the fields every request has.

- The video named by id must be completed: one still queued or being made is a 409 (asking again later can
  succeed, as for its content), a failed or cancelled one a 400 (it never will). `param` is "video", the
  field that carries the id, and `code` is what the video's content route answers for the same video.
- The stitched result must fit the server's length limit (max_seconds, the frame cap in whole chunks), not
  only the continuation: otherwise a chain of extensions makes videos of any length.
"""

from __future__ import annotations

from .openai_errors import ApiError, invalid
from .video_request import ModelLimits, seconds_of, seconds_text


def check_extendable(video_id: str, status: str, record: dict) -> None:
    """Refuse to extend the video `video_id` unless its Videos API `status` is completed."""
    if status == "completed":
        return
    wanted = "an extension takes a completed video's id"
    if status in ("queued", "in_progress"):
        what = "is queued" if status == "queued" else "is still being made"
        raise ApiError(409, f"video {video_id} {what}; {wanted}: extend it once its status is completed",
                       param="video", code="video_not_ready")
    advice = ""
    if record["state"] == "cancelled":
        reason = "was cancelled"
        if record["has_video"]:  # its finished chunks can still be downloaded, and uploaded to continue them
            reason += f" after {record['chunks_ready']} chunk(s)"
            advice = "; to continue those, download its content and upload that mp4 as video"
    else:
        reason = f"failed ({record['error'] or 'no reason was recorded'})"
    raise ApiError(400, f"video {video_id} {reason}, so it cannot be extended ({wanted}){advice}", param="video",
                   code="video_failed")


def check_total_length(source_frames: int, extension_seconds: float, limits: ModelLimits) -> None:
    """Refuse an extension whose stitched video (source + continuation) would be longer than max_seconds."""
    source_seconds = seconds_of(source_frames, limits.fps)
    total = source_seconds + extension_seconds
    if total <= limits.max_seconds + 1e-9:
        return
    room_chunks = int((limits.max_seconds - source_seconds) / limits.chunk_seconds + 1e-9)  # seconds are chunks
    advice = (f"ask for at most {seconds_text(room_chunks * limits.chunk_seconds)} s" if room_chunks >= 1
              else "it cannot be extended here")
    raise invalid(f"the video to extend is {seconds_text(source_seconds)} s and the extension asks for "
                  f"{seconds_text(extension_seconds)} s, {seconds_text(total)} s in all; this server makes videos of "
                  f"at most {seconds_text(limits.max_seconds)} s, so {advice}", param="seconds",
                  code="unsupported_value")
