"""ASGI wrappers that protect every route, whoever registered it: safe headers and the one error shape on
every answer (an unexpected exception included), the Host check, same-origin writes, a cap on the size of
the request head, and a cap and a deadline on request bodies.

They are plain ASGI (not Starlette's BaseHTTPMiddleware) so that file responses stream through untouched.
Order, outermost first: ErrorGuard, HostCheck, SameOriginWrites, RequestLimits, then FastAPI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

from .errors import send_error

logger = logging.getLogger(__name__)

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Only a multipart body can carry a file; every other kind is capped at the small limit before it is parsed.
FILE_BODY_TYPES = ("multipart/form-data",)

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    # The page loads only its own script, style and media (chunks come back as same-origin URLs).
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; script-src 'self'; "
     b"style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]
_SECURITY_NAMES = {name for name, _ in SECURITY_HEADERS}


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class ErrorGuard:
    """Outermost: adds the security headers to every response, and turns an exception that escaped the app
    into a 500 in the one error shape (Starlette's own would be plain text, outside these headers)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def add_headers(event):
            nonlocal started
            if event["type"] == "http.response.start":
                started = True
                event = dict(event)
                kept = [(k, v) for k, v in event.get("headers", []) if k.lower() not in _SECURITY_NAMES]
                event["headers"] = kept + SECURITY_HEADERS
            await send(event)

        try:
            await self.app(scope, receive, add_headers)
        except Exception:
            logger.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_error(add_headers, 500, "internal error in the server; its log has the details",
                                 path=scope.get("path"))


class HostCheck:
    """Refuse requests whose Host header is not one of `allowed_hosts` (a page on another site reaching a
    loopback server through DNS rebinding names its own host)."""

    def __init__(self, app, allowed_hosts):
        self.app = app
        self.allowed = {h.lower() for h in allowed_hosts}

    def _host_allowed(self, scope) -> bool:
        value = (header(scope, b"host") or "").strip().lower()
        if value.startswith("["):                       # [::1]:8000
            host = value.split("]")[0] + "]"
        else:
            host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
        return bool(host) and (host in self.allowed or host.strip("[]") in self.allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self._host_allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await send_error(send, 400, "this server answers only requests addressed to its loopback name "
                                    "(the Host header names another host)", path=scope.get("path"))


class SameOriginWrites:
    """Refuse writes that a browser sends on behalf of another site (a page elsewhere posting to localhost).

    Browsers add Origin to cross-site POSTs; API clients such as curl send none and pass.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") in WRITE_METHODS:
            origin = header(scope, b"origin")
            host = header(scope, b"host")
            if origin is not None and (origin == "null" or urlsplit(origin).netloc != host):
                return await send_error(send, 403, "cross-origin requests are refused; use the page this server "
                                                   "serves, or an API client without an Origin header",
                                         path=scope.get("path"))
        return await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class RequestLimits:
    """Cap the request head, cap request bodies by kind and give them a deadline, declared length or not.

    The head (target and headers) may be `head_bytes` long: h11 limits only a head that arrives in pieces.

    A multipart body (the only kind that carries a file) may be `file_body_bytes` long and is streamed to disk
    by the form parser; any other body is capped at `body_bytes`, small enough to parse in memory. The whole
    body must arrive within `body_timeout_s` of the request's start, so a stalled client cannot hold a
    connection and a half-read upload forever.
    """

    def __init__(self, app, *, head_bytes: int, body_bytes: int, file_body_bytes: int, body_timeout_s: float,
                 upload_bytes: int | None = None):
        self.app = app
        self.head_bytes = head_bytes
        self.body_bytes, self.file_body_bytes, self.body_timeout_s = body_bytes, file_body_bytes, body_timeout_s
        self.upload_bytes = upload_bytes  # the per-file limit /v1/info states (file_body_bytes adds the fields)

    def limit_for(self, scope) -> int:
        content_type = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
        return self.file_body_bytes if content_type in FILE_BODY_TYPES else self.body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(name) + len(value) + 4 for name, value in scope.get("headers", []))
        if head > self.head_bytes:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1009})
            return await send_error(send, 431, f"the request's URL and headers are larger than this server "
                                               f"accepts ({self.head_bytes} bytes)", path=scope.get("path"))
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope)
        too_large = f"the request body is larger than this server accepts for its kind ({limit} bytes)"
        if limit == self.file_body_bytes and self.upload_bytes is not None:
            too_large = f"the upload is larger than this server accepts (max_upload_bytes: {self.upload_bytes})"
        declared = header(scope, b"content-length")
        if declared is not None and declared.strip().isascii() and declared.strip().isdigit() \
                and int(declared) > limit:
            return await send_error(send, 413, too_large, path=scope.get("path"))
        deadline = time.monotonic() + self.body_timeout_s
        received, body_done, started = 0, False, False

        async def guarded_receive():
            nonlocal received, body_done
            if body_done:  # after the body, receive() only waits for the disconnect: no deadline
                return await receive()
            try:
                event = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise BodyTooSlow from None
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
                body_done = not event.get("more_body", False)
            return event

        async def tracking_send(event):
            nonlocal started
            if event["type"] == "http.response.start":
                started = True
            await send(event)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, too_large, path=scope.get("path"))
        except BodyTooSlow:
            if not started:
                await send_error(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s",
                                 path=scope.get("path"))
