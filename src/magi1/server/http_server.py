"""The uvicorn set-up of `magi1 serve`: connection timeouts, a header size limit, and HTTP-level errors in the
API's one error shape.

uvicorn's keep-alive timer only runs between requests and restarts on every byte, so a client that opens a
connection and then sends its headers a byte at a time (or nothing at all) would hold it forever. The
protocol below gives every request head a deadline from the moment the connection opens or the previous
answer ends; the body's deadline is RequestLimits' (middleware.py). A head that grows past the limit, or one that
is not HTTP, is answered 400 with the error shape and the security headers, instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_bytes
from .middleware import SECURITY_HEADERS
from .settings import ServerSettings


def guarded_protocol(settings: ServerSettings) -> type[H11Protocol]:
    """An h11 protocol class with the header deadline and the shaped 400 (one class per settings)."""
    head_timeout_s = settings.header_timeout_s
    head_limit = settings.max_header_bytes

    class GuardedH11Protocol(H11Protocol):
        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def connection_lost(self, exc) -> None:
            self._disarm_head_deadline()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm_head_deadline()  # a whole request head has arrived

        def handle_websocket_upgrade(self, event) -> None:
            # From here on the connection carries WebSocket frames: a head deadline firing later would write
            # an HTTP answer into the middle of them.
            self._disarm_head_deadline()
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_deadline()

        def _arm_head_deadline(self) -> None:
            self._disarm_head_deadline()
            self._head_deadline = self.loop.call_later(head_timeout_s, self._head_too_slow)

        def _disarm_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_too_slow(self) -> None:
            self._head_deadline = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
                self.transport.close()  # an idle keep-alive connection: nothing to answer
                return
            self._send_shaped_error(408, f"the request headers did not arrive within {head_timeout_s:g} s")

        def send_400_response(self, msg: str) -> None:
            self._send_shaped_error(400, f"the request is not valid HTTP, or its headers are larger than "
                                         f"{head_limit} bytes")

        def _send_shaped_error(self, status: int, message: str) -> None:
            body = error_bytes(status, message)
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close"), *SECURITY_HEADERS]
            try:
                if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers)))
                    self.transport.write(self.conn.send(h11.Data(data=body)))
                    self.transport.write(self.conn.send(h11.EndOfMessage()))
                else:
                    raise h11.LocalProtocolError("cannot answer in this state")
            except h11.LocalProtocolError:
                # h11 cannot frame an answer in its state (e.g. the head was unparseable): write it raw.
                status_line = f"HTTP/1.1 {status} {'Bad Request' if status == 400 else 'Request Timeout'}\r\n"
                raw = status_line.encode() + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body
                self.transport.write(raw)
            self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app, settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 8000,
                   log_level: str = "info", **extra) -> uvicorn.Config:
    """The one uvicorn.Config for this app: used by `magi1 serve` and by `serve_in_background`."""
    from .realtime_video import max_message_bytes

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on",
        http=guarded_protocol(settings),
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # A live session.start may carry its image or video inline (uvicorn's own default is 16 MiB).
        ws_max_size=max_message_bytes(settings),
        # Open connections (a download, a stream) are given this long after Ctrl-C / SIGTERM, then closed.
        timeout_graceful_shutdown=max(1, int(round(settings.graceful_shutdown_s))),
        **extra,
    )
