"""API keys: who may use `magi1 serve`, and whose jobs are whose.

    magi1 serve --api_key sk-alice --api_key sk-bob        # or MAGI1_API_KEYS=sk-alice,sk-bob
    curl -H "Authorization: Bearer sk-alice" http://host:8000/v1/videos

- With keys, every API route (/v1/...) and the WebSocket need `Authorization: Bearer <key>`; a missing or
  wrong key is 401 (the `openai` package raises AuthenticationError). Browsers cannot set headers on a
  WebSocket, so there the key may come as the offered subprotocol `bearer.<key>` (next to
  realtime_video.SUBPROTOCOL, the one the server picks). The page, its static files, /health and the docs
  stay open: the page asks for the key and sends it.
- Each key is its own client (clients.py): it sees, downloads, cancels and deletes only its own jobs;
  another key's job is 404, as if it did not exist, so ids do not leak. The per-client caps
  (--max_jobs_per_client unfinished jobs, the bytes of results) hold per key.
- Listening beyond loopback without a key is refused at start (serve_command.py).
"""

from __future__ import annotations

import hmac
import re

from magi1.errors import InputError

from .clients import SHARED_CLIENT
from .errors import send_error
from .middleware import header

ENV_VAR = "MAGI1_API_KEYS"
# Visible ASCII without separators, so a key fits a header, a subprotocol token and a comma-separated list.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._~+/=-]{8,256}$", re.ASCII)
OPEN_PATHS = ("/", "/health", "/docs", "/openapi.json", "/favicon.ico")
OPEN_PREFIXES = ("/static/", "/docs-assets/")
BEARER_PROTOCOL = "bearer."


def api_keys_from(cli_keys, environ) -> tuple[str, ...]:
    """The keys of --api_key (repeatable, or comma-separated) and of MAGI1_API_KEYS, checked; () for none."""
    given = [*(cli_keys or ()), environ.get(ENV_VAR, "")]
    keys: list[str] = []
    for text in given:
        for key in re.split(r"[,\s]+", text.strip()):
            if not key:
                continue
            if not KEY_PATTERN.match(key):
                raise InputError(f"an API key must be 8 to 256 characters of letters, digits and ._~+/=- "
                                 f"(got one of {len(key)} characters that is not)")
            if key not in keys:
                keys.append(key)
    return tuple(keys)


def presented_key(scope) -> str | None:
    """The key a request or WebSocket handshake carries (Authorization: Bearer, or a bearer.<key> subprotocol)."""
    authorization = header(scope, b"authorization") or ""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scope.get("type") == "websocket":
        for offered in (header(scope, b"sec-websocket-protocol") or "").split(","):
            offered = offered.strip()
            if offered.startswith(BEARER_PROTOCOL):
                return offered[len(BEARER_PROTOCOL):]
    return None


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class KeyRing:
    def __init__(self, keys: tuple[str, ...]):
        if not keys:
            raise ValueError("a KeyRing needs at least one key")
        self._keys = tuple(k.encode() for k in keys)

    def knows(self, key: str | None) -> bool:
        if not key:
            return False
        candidate = key.encode("utf-8", "replace")
        # Compare with every key, each in constant time, so timing tells nothing about a near miss.
        return sum(hmac.compare_digest(candidate, known) for known in self._keys) > 0

    def identity(self, connection) -> str:
        """The client a request (or WebSocket) is: its key (only a hash of it is ever stored with a job)."""
        key = presented_key(connection.scope)
        return f"key:{key}" if self.knows(key) else SHARED_CLIENT


class ApiKeyAuth:
    """ASGI: 401 for a request to an API route without a known key (before the route reads anything)."""

    def __init__(self, app, keys: KeyRing):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or is_open(scope.get("path", "")):
            return await self.app(scope, receive, send)
        key = presented_key(scope)
        if self.keys.knows(key):
            return await self.app(scope, receive, send)
        message = ("this server needs an API key: send the header Authorization: Bearer <key>" if key is None
                   else "the API key is not valid on this server")
        if scope["type"] == "http":
            return await send_error(send, 401, message, path=scope.get("path"),
                                    headers={"WWW-Authenticate": 'Bearer realm="magi1"'}, close=False)
        # A WebSocket handshake: answer it with a plain HTTP 401 where the server can, else refuse it.
        if "websocket.http.response" in scope.get("extensions", {}):
            return await send_error(_as_denial(send), 401, message, path=scope.get("path"),
                                    headers={"WWW-Authenticate": 'Bearer realm="magi1"'}, close=False)
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


def _as_denial(send):
    """send() for an ASGI WebSocket denial response: http.response.* events renamed websocket.http.response.*."""
    async def denial_send(event):
        await send({**event, "type": "websocket." + event["type"]})
    return denial_send


def install_api_keys(app, keys: tuple[str, ...]) -> None:
    """Require one of `keys` on every API route of `app` and make each key its own client."""
    ring = KeyRing(keys)
    app.state.client_identity = ring.identity
    app.add_middleware(ApiKeyAuth, keys=ring)
