"""The OpenAI error envelope for the OpenAI-style routes (/v1/videos, /v1/models, /v1/realtime).

    {"error": {"message": "one sentence", "type": "invalid_request_error", "param": "size", "code": "..."}}

Clients built on the `openai` package turn it into their own exception types (BadRequestError,
NotFoundError, AuthenticationError, ...) with the message shown. The older /v1/jobs routes keep
{"detail": ...}.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
         409: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
         429: "rate_limit_error", 503: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers={"Cache-Control": "no-store", **err.headers})


async def handle_api_error(_request: Request, err: ApiError) -> JSONResponse:
    return error_response(err)


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(video_id: str) -> ApiError:
    return ApiError(404, f"no video {video_id[:60]!r} (it may have been deleted or expired)", param="video_id",
                    code="video_not_found")
