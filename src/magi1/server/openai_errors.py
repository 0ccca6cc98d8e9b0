"""Errors of the OpenAI-style routes (/v1/videos, /v1/models, /v1/realtime), in OpenAI's words.

    {"error": {"message": "one sentence", "type": "invalid_request_error", "param": "size", "code": "..."}}

They are the server's one ApiError (errors.py), whose handler answers these routes with OpenAI's envelope
alone; clients built on the `openai` package turn it into their own exception types (BadRequestError,
NotFoundError, AuthenticationError, ...) with the message shown.
"""

from __future__ import annotations

from .errors import ApiError

__all__ = ["ApiError", "invalid", "not_found"]


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(video_id: str, param: str = "video_id") -> ApiError:
    """param: the field that named the video (the path's video_id, an extension's video, a list's after)."""
    return ApiError(404, f"no video {video_id[:60]!r} (it may have been deleted or expired)", param=param,
                    code="video_not_found")
