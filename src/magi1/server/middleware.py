"""ASGI wrappers that protect every route: a cap on request bodies, same-origin writes, and safe headers.

They are plain ASGI (not Starlette's BaseHTTPMiddleware) so that file responses stream through untouched.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # The page loads only its own script, style and media (chunks come back as same-origin URLs).
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; script-src 'self'; "
     b"style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]


async def send_json_error(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Answer 413 as soon as a request body passes `max_bytes`, whether or not it declared its length."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request is larger than this server accepts ({self.max_bytes} bytes)"
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_json_error(send, 413, message)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return event

        async def tracking_send(event):
            nonlocal started
            if event["type"] == "http.response.start":
                started = True
            await send(event)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_json_error(send, 413, message)


class SameOriginWrites:
    """Refuse writes that a browser sends on behalf of another site (a page elsewhere posting to localhost).

    Browsers add Origin to cross-site POSTs; API clients such as curl send none and pass.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") in WRITE_METHODS:
            origin = _header(scope, b"origin")
            host = _header(scope, b"host")
            if origin is not None and (origin == "null" or urlsplit(origin).netloc != host):
                return await send_json_error(send, 403, "cross-origin requests are refused; use the page this "
                                                        "server serves, or an API client without an Origin header")
        return await self.app(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def add_headers(event):
            if event["type"] == "http.response.start":
                event = dict(event)
                event["headers"] = list(event.get("headers", [])) + SECURITY_HEADERS
            await send(event)

        return await self.app(scope, receive, add_headers)
