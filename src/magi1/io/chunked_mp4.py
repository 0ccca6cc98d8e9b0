"""An mp4 that grows by one self-contained fragment per chunk, readable the moment each chunk is appended.

    with ChunkedMp4Writer("out.mp4", fps=24, in_place=True) as writer:
        for chunk in chunks:             # uint8 (T, H, W, 3)
            writer.append_chunk(chunk)   # in out.mp4 when this returns (without in_place: .out.partial.mp4)

Why not one long encoder stream: libx264 holds frames back (lookahead, B-frames) and the mp4 muxer keeps a
fragment in memory until the next keyframe arrives, so a growing file lags the run by a chunk or more and a
killed run loses what was held. Here every chunk is encoded on its own (its first frame a keyframe, the encoder
drained at its end) into an in-memory fragmented mp4; its fragment (moof + mdat) is renumbered and re-timed to
follow the chunks before it and appended to the file in one write. The file is ftyp + moov (from the first
chunk) followed by one fragment per chunk, so:

- after `append_chunk` returns, the file decodes to exactly the frames appended so far;
- a kill at any moment leaves every chunk whose append had returned (a fragment cut short is ignored);
- a chunk's bytes depend on its frames and the encoder settings only, so a resumed run that appends the same
  frames writes the same file, byte for byte.

Encoder settings follow the official output (libx264, yuv420p, CRF 23, preset medium) unless given.
in_place=True writes the target itself, so whoever watches `out.mp4` sees it grow (what `magi1 generate`
promises); otherwise the file is a hidden partial one, renamed onto the target when the writer closes cleanly
and left as it is on an error (the server's job folders, where only a finished video may carry the name).
"""

from __future__ import annotations

import io
import os
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .video import _StreamEncoder, _as_rate, _check_frames, _encoder_options, partial_path_for

# Fragment per keyframe, no sample tables up front, data offsets relative to each moof (position independent).
_FRAGMENTED = {"movflags": "frag_keyframe+delay_moov+default_base_moof"}


class ChunkedMp4Writer:
    """Appends chunks of frames to a fragmented mp4 as independently encoded fragments (see the module doc)."""

    def __init__(self, path: str | Path, fps: float, *, codec: str = "libx264", pix_fmt: str = "yuv420p",
                 crf: int | None = None, preset: str | None = None, options: dict[str, str] | None = None,
                 metadata: dict[str, str] | None = None, in_place: bool = False) -> None:
        self.path = Path(path)
        self.partial_path = self.path if in_place else partial_path_for(self.path)  # where the bytes go
        self.fps = _as_rate(fps)
        self._codec, self._pix_fmt = codec, pix_fmt
        self._options = _encoder_options(codec, crf, preset, options)
        self._metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self._fd: int | None = None
        self._size: tuple[int, int] | None = None
        self._ticks_per_frame: int | None = None   # track timescale / fps, from the first chunk's moov
        self.frames_written = 0
        self.chunks_written = 0
        self._fragments = 0
        self._closed = False

    def append_chunk(self, frames: np.ndarray) -> bytes:
        """Encode uint8 frames (T, H, W, 3) as one chunk and append it to the file before returning.

        Returns the bytes appended: the chunk's fragment (moof + mdat), after the init segment (ftyp + moov)
        for the first chunk, so a live viewer fed these in order holds the same file.
        """
        if self._closed:
            raise ValueError(f"writer for {self.path} is already closed")
        frames = _check_frames(frames)
        if self._size is not None and frames.shape[1:3] != self._size:
            raise ValueError(f"frame size changed from {self._size[1]}x{self._size[0]} "
                             f"to {frames.shape[2]}x{frames.shape[1]}")
        encoded = self._encode(frames)
        boxes = list(_boxes(encoded))
        out = bytearray()
        if self._fd is None:
            moov = next((b for b in boxes if b[0] == "moov"), None)
            if moov is None:
                raise ValueError("the encoder wrote no moov box")
            self._ticks_per_frame = _ticks_per_frame(encoded, moov, self.fps)
            out += b"".join(encoded[start:start + size] for kind, start, _, size in boxes if kind in ("ftyp", "moov"))
        base = self.frames_written * self._ticks_per_frame
        for kind, start, _, size in boxes:
            if kind in ("moof", "mdat"):
                box = bytearray(encoded[start:start + size])
                if kind == "moof":
                    self._fragments += 1
                    _renumber_fragment(box, self._fragments, base)
                out += box
        if self._fd is None:
            if not self.path.parent.is_dir():
                raise FileNotFoundError(f"output folder does not exist: {self.path.parent}")
            self._fd = os.open(self.partial_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._size = frames.shape[1:3]
        _write_all(self._fd, bytes(out))
        self.frames_written += len(frames)
        self.chunks_written += 1
        return bytes(out)

    def append(self, frames: np.ndarray) -> None:
        """VideoWriter's interface: `frames` as the next chunk."""
        self.append_chunk(frames)

    def close(self) -> Path:
        """Finish the file (moving it onto `path` unless written in place); returns `path`."""
        if self._closed:
            return self.path
        if self._fd is None:
            raise ValueError("no frames were appended; an empty video cannot be written")
        os.close(self._fd)
        self._closed = True
        if self.partial_path != self.path:
            os.replace(self.partial_path, self.path)
        return self.path

    def abort(self) -> None:
        """Stop; the file stays (partial or in place), holding every chunk appended so far."""
        if not self._closed and self._fd is not None:
            os.close(self._fd)
        self._closed = True

    def __enter__(self) -> "ChunkedMp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _encode(self, frames: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        container = av.open(buffer, "w", format="mp4", options=dict(_FRAGMENTED))
        try:
            if self._fd is None:
                container.metadata.update(self._metadata)  # tags live in the moov, taken from the first chunk
            encoder = _StreamEncoder(container, self.fps, self._codec, self._pix_fmt, self._options)
            encoder.encode(frames)
            encoder.finish()
        finally:
            container.close()
        return buffer.getvalue()


def mime_type(init_segment: bytes) -> str:
    """The MIME type with codecs (RFC 6381) of a fragmented mp4 whose init segment starts `init_segment`,
    e.g. 'video/mp4; codecs="avc1.64000a"': what Media Source Extensions' addSourceBuffer asks for."""
    moov = next((box for box in _boxes(init_segment) if box[0] == "moov"), None)
    path = ("trak", "mdia", "minf", "stbl", "stsd")
    box = moov
    for kind in path:
        box = _child(init_segment, box, kind) if box is not None else None
    if box is None:
        raise ValueError("the init segment has no trak/mdia/minf/stbl/stsd box")
    _, start, header, size = box
    entry = next(_boxes(init_segment, start + header + 8, start + size), None)  # after version/flags, count
    if entry is None or entry[0] not in ("avc1", "avc3"):
        raise ValueError(f"not an H.264 track ({entry[0] if entry else 'no sample entry'})")
    sample_entry_fields = 78  # the visual sample entry's fixed fields before its child boxes
    config = next((b for b in _boxes(init_segment, entry[1] + entry[2] + sample_entry_fields, entry[1] + entry[3])
                   if b[0] == "avcC"), None)
    if config is None:
        raise ValueError("the H.264 sample entry has no avcC box")
    body = config[1] + config[2]
    profile, constraints, level = init_segment[body + 1], init_segment[body + 2], init_segment[body + 3]
    return f'video/mp4; codecs="{entry[0]}.{profile:02x}{constraints:02x}{level:02x}"'


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _boxes(data, start: int = 0, end: int | None = None):
    """(type, offset, header length, size) of each box in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"malformed mp4 box {kind!r} at byte {pos}")
        yield kind.decode("latin-1"), pos, header, size
        pos += size


def _child(data, parent: tuple, kind: str) -> tuple | None:
    _, start, header, size = parent
    return next((box for box in _boxes(data, start + header, start + size) if box[0] == kind), None)


def _ticks_per_frame(data: bytes, moov: tuple, fps: Fraction) -> int:
    """The track timescale's ticks per frame (the muxer picks a timescale that is a multiple of the rate)."""
    trak = _child(data, moov, "trak")
    mdia = _child(data, trak, "mdia") if trak else None
    mdhd = _child(data, mdia, "mdhd") if mdia else None
    if mdhd is None:
        raise ValueError("the encoder's moov has no trak/mdia/mdhd box")
    body = mdhd[1] + mdhd[2]
    version = data[body]
    timescale = struct.unpack_from(">I", data, body + (20 if version == 1 else 12))[0]
    ticks = Fraction(timescale) / fps
    if ticks.denominator != 1:
        raise ValueError(f"track timescale {timescale} is not a whole number of ticks per frame at {fps} fps")
    return int(ticks)


def _renumber_fragment(moof: bytearray, sequence: int, base_ticks: int) -> None:
    """Set the fragment's sequence number and shift its decode time (tfdt) by base_ticks, in place."""
    whole = ("moof", 0, 8, len(moof))
    mfhd = _child(moof, whole, "mfhd")
    if mfhd is not None:
        struct.pack_into(">I", moof, mfhd[1] + mfhd[2] + 4, sequence)
    for traf in (box for box in _boxes(moof, 8, len(moof)) if box[0] == "traf"):
        tfdt = _child(moof, traf, "tfdt")
        if tfdt is None:
            continue
        body = tfdt[1] + tfdt[2]
        if moof[body] == 1:
            struct.pack_into(">Q", moof, body + 4, struct.unpack_from(">Q", moof, body + 4)[0] + base_ticks)
        else:
            struct.pack_into(">I", moof, body + 4, struct.unpack_from(">I", moof, body + 4)[0] + base_ticks)
