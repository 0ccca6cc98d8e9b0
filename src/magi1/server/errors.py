"""The error shapes of `magi1 serve`, made here for every 4xx and 5xx answer of every route and wrapper.

The API's own routes (/v1/jobs, /health, the page, ...):

    {"error": {"message": "a sentence", "type": "invalid_request_error", "code": null, "param": null},
     "detail": "the same sentence"}

`error` is the OpenAI API's shape (its SDKs read `error.message`); `detail` is FastAPI's, kept so clients
written against either read the sentence without special cases. The OpenAI-style routes (/v1/videos,
/v1/models, /v1/realtime: OPENAI_ROUTES) answer OpenAI's envelope alone, `{"error": {...}}`, with OpenAI's
error types, as the `openai` package expects. Which one a request gets depends only on its path, so the
wrappers that answer before the app runs (body too large, wrong host) pick the same one. The security
headers of middleware.py are added to every one of these answers, the 500 of an unexpected exception too.

Messages built from exceptions go through `scrub_paths` first: a client never sees a path on the server.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000

# The OpenAI API's error types, by status.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 408: "timeout_error", 409: "conflict_error", 413: "invalid_request_error",
               415: "invalid_request_error", 431: "invalid_request_error", 422: "invalid_request_error", 425: "not_ready_error",
               429: "rate_limit_error", 503: "service_unavailable_error", 507: "insufficient_storage_error"}

# The OpenAI API's own types on its routes: these by status, else invalid_request_error / server_error.
OPENAI_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
OPENAI_ROUTES = ("/v1/videos", "/v1/models", "/v1/realtime")

# An absolute POSIX path (two or more characters after the slash), a Windows drive path, or a file:// URL.
_PATH = re.compile(r"(?:file://)?(?<![\w.~:/-])(?:/|[A-Za-z]:[\\/])[^\s'\"<>()\[\],;]+")


class ApiError(Exception):
    """Raise from anywhere in a request to answer `status` with `message` in the one error shape."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


def scrub_paths(text: str) -> str:
    """`text` with every filesystem path shortened to its last name: 'cannot open …/input.png'."""

    def last_name(match: re.Match) -> str:
        parts = [p for p in re.split(r"[\\/]+", match.group(0).rstrip("/\\.:")) if p and p != "file:"]
        return f"…/{parts[-1]}" if parts else "…"

    return _PATH.sub(last_name, text)


def is_openai_route(path: str | None) -> bool:
    """Whether `path` is one of the OpenAI-style routes, which answer errors in OpenAI's envelope alone."""
    path = path or ""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in OPENAI_ROUTES)


def error_type(status: int, openai: bool = False) -> str:
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    return (OPENAI_ERROR_TYPES if openai else ERROR_TYPES).get(status, fallback)


def error_payload(status: int, message: str, *, code: str | None = None, param: str | None = None,
                  path: str | None = None) -> dict:
    """The error body for a request to `path` (OpenAI's envelope on its routes, the API's shape elsewhere)."""
    message = (message or HTTPStatus(status).phrase)[:MAX_MESSAGE_CHARS]
    openai = is_openai_route(path)
    error = {"message": message, "type": error_type(status, openai), "param": param, "code": code}
    return {"error": error} if openai else {"error": error, "detail": message}


def error_bytes(status: int, message: str, **fields) -> bytes:
    return json.dumps(error_payload(status, message, **fields)).encode()


async def send_error(send, status: int, message: str, *, path: str | None = None,
                     headers: dict[str, str] | None = None, close: bool = True) -> None:
    """Answer a raw ASGI request to `path` with its error shape (for wrappers that run outside FastAPI)."""
    body = error_bytes(status, message, path=path)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"cache-control", b"no-store")]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def validation_message(errors: list[dict]) -> str:
    """One sentence from FastAPI's list of validation problems (query or path parameters)."""
    if not errors:
        return "the request is malformed"
    first = errors[0]
    where = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body", "header")]
    name = ".".join(where) or "the request"
    kind = first.get("type", "")
    if kind.startswith("bool"):
        what = "must be true or false"
    elif kind.startswith("int"):
        what = "must be a whole number"
    elif kind == "missing":
        what = "is required"
    else:
        what = str(first.get("msg", "is not valid")).lower()
    return f"{name[:60]} {what}"


def install_error_handlers(app) -> None:
    """Make FastAPI's own errors (unknown route, wrong method, bad query parameter) use the one shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def respond(request, status: int, message: str, headers: dict | None = None, **fields) -> JSONResponse:
        return JSONResponse(error_payload(status, message, path=request.url.path, **fields), status_code=status,
                            headers={"Cache-Control": "no-store", **(headers or {})})

    @app.exception_handler(ApiError)
    async def on_api_error(request, exc: ApiError):
        return respond(request, exc.status, exc.message, exc.headers, code=exc.code, param=exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_exception(request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and message == "Not Found":
            message = "no such page or API route"
        elif exc.status_code == 405 and message == "Method Not Allowed":
            message = "this route does not answer that HTTP method"
        return respond(request, exc.status_code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, exc: RequestValidationError):
        return respond(request, 400, validation_message(list(exc.errors())))
