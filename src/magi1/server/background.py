"""Run the server in a background thread of this process (tests, notebooks), stopping it on exit.

    with serve_in_background(create_app(factory, settings)) as base_url:
        httpx.get(f"{base_url}/health")

The socket is bound before the thread starts, so the URL is usable at once and port 0 picks a free port.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def serve_in_background(app, host: str = "127.0.0.1", port: int = 0, *, start_timeout: float = 20.0,
                        stop_timeout: float = 30.0) -> Iterator[str]:
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    from .http_server import uvicorn_config
    from .settings import ServerSettings

    settings = getattr(app.state, "settings", None) or ServerSettings()
    server = uvicorn.Server(uvicorn_config(app, settings, host=host, port=bound_port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="magi1-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        shown_host = f"[{host}]" if ":" in host else host
        yield f"http://{shown_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(stop_timeout)
        if thread.is_alive():
            logger.warning("the background server did not stop within %.0fs", stop_timeout)
        sock.close()
