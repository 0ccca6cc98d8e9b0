"""File downloads whose Range header is read as HTTP says (RFC 9110, section 14.2), in the server's error shape.

Starlette's FileResponse answers a Range header it cannot parse with a plain-text 400 and an unsatisfiable one
with an empty 416. HTTP lets a server ignore a Range it cannot parse and serve the whole file (200), which is
what players and download managers expect; an unsatisfiable range is a 416 that states the file's length in
Content-Range, and here it also carries the one JSON error body every other refusal has.
"""

from __future__ import annotations

import os
import re

from fastapi.responses import FileResponse

from .errors import send_error

# One range-spec: "first-last", "first-" or "-suffix" (whitespace around each is allowed, as Starlette does).
_RANGE_SPEC = re.compile(r"\s*(?:(\d+)\s*-\s*(\d*)|-\s*(\d+))\s*")


def parse_byte_ranges(value: str) -> list[tuple[int | None, int | None, int | None]] | None:
    """The (first, last, suffix) specs of a `bytes=` Range header; None when it is not well formed."""
    unit, sep, specs = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parsed = []
    for spec in specs.split(","):
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last, suffix = (int(g) if g else None for g in match.groups())
        if first is not None and last is not None and last < first:
            return None  # RFC 9110: a last position below the first makes the whole header invalid
        parsed.append((first, last, suffix))
    return parsed or None


def satisfiable(specs: list[tuple[int | None, int | None, int | None]], size: int) -> bool:
    """Whether any spec selects at least one byte of a file of `size` bytes."""
    return any((first is not None and first < size) or (first is None and suffix) for first, _, suffix in specs)


class MediaFileResponse(FileResponse):
    """A FileResponse that ignores a malformed Range and refuses an unsatisfiable one in the error shape."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.status_code == 200:
            value = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"range"), None)
            if value is not None:
                specs = parse_byte_ranges(value)
                if specs is None:  # not a range we can read: serve the whole file, as if none was asked
                    scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k != b"range"])
                else:
                    size = os.stat(self.path).st_size
                    if not satisfiable(specs, size):
                        return await send_error(
                            send, 416, f"the requested range {value[:60]!r} starts beyond the file's {size} bytes",
                            path=scope.get("path"), headers={"Content-Range": f"bytes */{size}"}, close=False)
        return await super().__call__(scope, receive, send)
