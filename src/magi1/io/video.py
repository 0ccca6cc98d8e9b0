"""Video read (prefix clips for v2v) and streaming write (generated chunks), with PyAV.

Reading follows the official ffmpeg graph `-ss 0 ... fps=<fps>,scale=w:h` (reference-vae-t5-infra.md
§3.2): timestamps start at the container's start time, frames are re-timed to a constant rate by
the rule of ffmpeg's fps filter (below), stretched to W x H with swscale bicubic (the ffmpeg CLI's
default scaler, here the same library through PyAV), and the first `max_frames` are kept.

Writing matches the official output (§3.3: libx264, yuv420p, codec defaults, i.e. CRF 23, preset
medium) but streams: every `append` is encoded at once, into a hidden partial file that becomes
the target only when the writer closes cleanly.
"""

from __future__ import annotations

import io
import itertools
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator, NamedTuple

import av
import numpy as np

from magi1.io.image import center_crop, cover_size

# ffmpeg CLI default for scale filters (sws_flags=bicubic): swscale's cubic with B=0, C=0.6.
SCALER = "BICUBIC"


class VideoInfo(NamedTuple):
    num_frames: int
    fps: float
    height: int
    width: int


def _as_rate(fps: float | int | Fraction) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001 * 1000)  # keeps 24000/1001 and friends exact
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def _round_half_away(value: Fraction) -> int:
    """AV_ROUND_NEAR_INF, the fps filter's default rounding."""
    magnitude = int(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


def _open_input(path: str | Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise ValueError(f"cannot read {path} as a video: {error}") from error
    if not container.streams.video:
        container.close()
        raise ValueError(f"cannot read {path} as a video: it has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def probe_video(path: str | Path) -> VideoInfo:
    """(num_frames, fps, height, width) of the first video stream, its size as shown (a portrait phone video's
    display matrix turns its stored landscape frames), decoding one frame at most."""
    container, stream = _open_input(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        num_frames = stream.frames
        if not num_frames:  # not in the header: count the packets (one per frame)
            num_frames = sum(1 for packet in container.demux(stream) if packet.size)
        height, width = stream.height, stream.width
    if height and width and _turned_sideways(path):
        height, width = width, height
    return VideoInfo(int(num_frames), float(rate) if rate else 0.0, height, width)


def _turned_sideways(path: str | Path) -> bool:
    """Whether the first frame's display matrix turns it by a quarter (the matrix travels with the frames)."""
    container, stream = _open_input(path)
    with container:
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError:
            return False
        return first is not None and _quarter_turns(first) % 2 == 1


def is_still_image(path: str | Path) -> bool:
    """True when FFmpeg opens `path` as a picture (PNG, JPEG, ...), not a video container."""
    container, _ = _open_input(path)
    with container:
        # FFmpeg reads single pictures with its image demuxers: "image2" or "<codec>_pipe" (png_pipe, ...).
        return any(name == "image2" or name.endswith("_pipe") for name in container.format.name.split(","))


def _timed_frames(path: str | Path) -> Iterator[tuple[av.VideoFrame, Fraction, Fraction]]:
    """(frame, start time in s, duration in s), times measured from the container start as ffmpeg does."""
    container, stream = _open_input(path)
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    nominal_duration = 1 / Fraction(rate)
    origin = Fraction(container.start_time, 1_000_000) if container.start_time is not None else None
    with container:
        try:
            for index, frame in enumerate(container.decode(stream)):
                if frame.pts is None:
                    time = index * nominal_duration
                else:
                    time = frame.pts * Fraction(frame.time_base)
                if origin is None:
                    origin = time
                duration = frame.duration * Fraction(frame.time_base) if frame.duration else nominal_duration
                time -= origin
                if time < 0:
                    continue  # before the `-ss 0` seek point: ffmpeg trims these
                yield frame, time, duration
        except av.FFmpegError as error:
            raise ValueError(f"cannot decode {path}: {error}") from error


def resample_frames(
    timed_frames: Iterator[tuple[object, Fraction, Fraction]], fps: float | Fraction
) -> Iterator[object]:
    """Re-time frames to a constant `fps` like ffmpeg's fps filter (rounding "near", eof "round").

    Each input frame gets the output slot round(time * fps). Output slot k, counted from the first
    frame's slot, shows the latest frame whose slot is <= k: frames are repeated to fill gaps and
    dropped when several land on one slot. Slots continue until round(end_time * fps), where
    end_time = last frame's time + its duration.
    """
    rate = _as_rate(fps)
    current = None
    next_slot = first_slot = end_slot = None
    for frame, time, duration in timed_frames:
        slot = _round_half_away(time * rate)
        if next_slot is None:
            next_slot = first_slot = slot
        while current is not None and next_slot < slot:
            yield current
            next_slot += 1
        current = frame
        end_slot = _round_half_away((time + duration) * rate)
    if current is None:
        return
    # The last frame fills the slots up to the end; a clip too short for any slot still gives one frame.
    if next_slot == first_slot and next_slot >= end_slot:
        end_slot = next_slot + 1
    while next_slot < end_slot:
        yield current
        next_slot += 1


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that show the frame upright (its display matrix: a phone's portrait video)."""
    return round((frame.rotation or 0) / 90) % 4


def _frame_to_rgb(frame: av.VideoFrame, height: int, width: int, keep_aspect: bool) -> np.ndarray:
    # The ffmpeg CLI (the official reader) turns a video upright by its display matrix before scaling
    # (autorotate); here it is scaled as stored, to the turned size, then turned: the same frame to a level or two.
    turns = _quarter_turns(frame)
    shown_h, shown_w = (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)
    if keep_aspect:
        scaled_h, scaled_w = cover_size(shown_h, shown_w, height, width)
    else:
        scaled_h, scaled_w = height, width
    rgb = frame.reformat(
        width=scaled_h if turns % 2 else scaled_w,
        height=scaled_w if turns % 2 else scaled_h,
        format="rgb24",
        interpolation=SCALER,
        src_color_range=frame.color_range or None,  # honour full-range (yuvj) sources
    ).to_ndarray()
    if turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=turns))
    return np.ascontiguousarray(center_crop(rgb, height, width)) if keep_aspect else rgb


def iter_video_frames(path: str | Path, height: int, width: int, fps: float, *,
                      keep_aspect: bool = False) -> Iterator[np.ndarray]:
    """Every frame at `fps`, as uint8 (height, width, 3) RGB, one at a time (a long clip never sits in memory).

    A repeated frame (the fps filter filling a gap) is the same array object as the one before it.
    """
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"target size must be positive, got height={height}, width={width}")
    last_frame, last_rgb = None, None
    timed = _timed_frames(path)
    try:
        for frame in resample_frames(timed, fps):
            if frame is not last_frame:  # repeated frames are converted once
                last_frame, last_rgb = frame, _frame_to_rgb(frame, height, width, keep_aspect)
            yield last_rgb
    finally:
        timed.close()  # closes the file even when the caller stops early


def load_video(
    path: str | Path,
    height: int,
    width: int,
    fps: float,
    max_frames: int | None = 32,
    *,
    keep_aspect: bool = False,
    from_end: bool = False,
) -> np.ndarray:
    """The first `max_frames` frames at `fps` (from_end: the last ones), as uint8 (T, height, width, 3) RGB.

    keep_aspect=False stretches to width x height (official); True scales to cover, then crops
    the centre. max_frames=None keeps the whole clip (official prefix_frame is 32).
    Decoding stops as soon as `max_frames` frames are collected; from_end decodes the whole clip but holds
    only the newest `max_frames` of it, so an hour-long clip costs no more memory than a short one.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1 or None, got {max_frames}")
    from collections import deque

    frames = iter_video_frames(path, height, width, fps, keep_aspect=keep_aspect)
    try:
        if from_end:
            kept = list(deque(frames, maxlen=max_frames))
        else:
            kept = list(itertools.islice(frames, max_frames))
    finally:
        frames.close()
    if not kept:
        raise ValueError(f"cannot read {path} as a video: no frames could be decoded")
    return np.stack(kept)


def resize_frames(frames: np.ndarray, height: int, width: int, *, keep_aspect: bool = False) -> np.ndarray:
    """uint8 (T, H, W, 3) frames at height x width, scaled as video files are (swscale bicubic)."""
    frames = _check_frames(frames)
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([_frame_to_rgb(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"),
                                   height, width, keep_aspect) for rgb in frames])


# ---------------------------------------------------------------------------------------------
# Writing


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) or (H, W, 3); got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8; got {frames.dtype}")
    return frames


class _StreamEncoder:
    """Adds one video stream to an open output container and encodes frames into it."""

    def __init__(self, container, fps, codec: str, pix_fmt: str, options: dict[str, str]) -> None:
        self.container = container
        self.rate = _as_rate(fps)
        self.codec, self.pix_fmt, self.options = codec, pix_fmt, options
        self.stream = None
        self.frames_written = 0

    def _start(self, height: int, width: int) -> None:
        if self.pix_fmt in ("yuv420p", "nv12") and (height % 2 or width % 2):
            raise ValueError(f"{self.pix_fmt} needs an even frame size; got {width}x{height}")
        stream = self.container.add_stream(self.codec, rate=self.rate)
        stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
        stream.options = dict(self.options)
        self.stream = stream

    def encode(self, frames: np.ndarray) -> None:
        frames = _check_frames(frames)
        if self.stream is None:
            self._start(frames.shape[1], frames.shape[2])
        elif frames.shape[1:3] != (self.stream.height, self.stream.width):
            raise ValueError(
                f"frame size changed from {self.stream.width}x{self.stream.height} "
                f"to {frames.shape[2]}x{frames.shape[1]}"
            )
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            # rgb24 -> yuv with the ffmpeg CLI's default scaler, as the official ffmpeg call does.
            frame = frame.reformat(format=self.pix_fmt, interpolation=SCALER)
            frame.pts = self.frames_written
            frame.time_base = 1 / self.rate
            self.container.mux(self.stream.encode(frame))
            self.frames_written += 1

    def finish(self) -> None:
        if self.stream is None:
            raise ValueError("no frames were appended; an empty video cannot be written")
        self.container.mux(self.stream.encode(None))  # drain the encoder's lookahead


def _encoder_options(codec: str, crf: int | None, preset: str | None, options: dict[str, str] | None) -> dict[str, str]:
    # One encoder thread unless asked otherwise, so the bytes of a chunk never depend on how the encoder's
    # threads were scheduled: a resumed run must write the very bytes of an uninterrupted one. The encode is a
    # small share of a chunk's time.
    merged = {"threads": "1"}
    if crf is not None:
        merged["crf"] = str(crf)
    if preset is not None:
        merged["preset"] = preset
    cap = x264_asm_cap() if codec == "libx264" else None
    if cap is not None:
        merged["x264-params"] = f"asm={cap}"
    for key, value in (options or {}).items():
        if key == "x264-params" and cap is not None and "asm=" not in str(value):
            value = f"{merged['x264-params']}:{value}"  # the caller's x264 settings, on top of the cap
        merged[key] = str(value)
    return merged


def x264_asm_cap(flags: frozenset[str] | None = None) -> str | None:
    """The instruction set libx264 is limited to here ("AVX2"), or None to let it pick its own.

    On CPUs with AVX-512, libx264's AVX-512 kernels read memory they never wrote on small frames (seen on
    32x32 and 64x64 chunks; under valgrind, which hides AVX-512, there is no such read): the same frames
    then encode to different bytes depending on what the heap held before, i.e. a resumed or re-run video
    is not the same file (tests/test_video_encoding_determinism.py poisons the heap to show it). Its AVX2
    kernels, which every AVX-512 CPU has, encode the bytes the AVX-512 ones give on clean memory.
    """
    if flags is None:
        from magi1.ops.cpu_paths import cpu_report

        flags = cpu_report().flags
    return "AVX2" if "avx512f" in flags and "avx2" in flags else None


def partial_path_for(path: str | Path) -> Path:
    """Hidden sibling written while encoding: out.mp4 -> .out.partial.mp4."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{path.suffix}")


class VideoWriter:
    """Streaming video file writer; the target appears only when the writer closes cleanly.

        with VideoWriter("out.mp4", fps=24) as writer:
            for chunk in chunks:            # uint8 (T, H, W, 3)
                writer.append(chunk)        # encoded now; memory stays flat

    Frames go to `partial_path_for(path)`. `close()` finishes the stream and renames it onto
    `path` atomically; an exception inside the `with` block (or `abort()`) deletes it instead,
    unless keep_partial=True (then abort() flushes the encoder, so the partial file is a complete
    video of every appended frame). fragmented=True writes fragmented MP4, playable up to its last
    fragment even if the process is killed; fragments start at keyframes (libx264: every 250
    frames unless options={"g": ...}). Frames are encoded on `append`, but libx264 holds a
    lookahead of a few dozen frames before bytes reach the file (options={"tune": "zerolatency"}
    removes it, at some cost in quality per bit).
    crf / preset / options go to the encoder; None keeps libx264's defaults (CRF 23, medium),
    which is what the official pipeline uses. metadata: container tags ({"description": ..., "comment": ...}),
    written in the header, so a fragmented file carries them from its first byte.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        *,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        crf: int | None = None,
        preset: str | None = None,
        options: dict[str, str] | None = None,
        container_format: str | None = None,
        fragmented: bool = False,
        keep_partial: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.partial_path = partial_path_for(self.path)
        self.fps = _as_rate(fps)
        self.keep_partial = keep_partial
        self._codec, self._pix_fmt = codec, pix_fmt
        self._options = _encoder_options(codec, crf, preset, options)
        self._format = container_format or (None if self.path.suffix else "mp4")
        self._container_options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"} if fragmented else {}
        self._encoder: _StreamEncoder | None = None
        self._closed = False

    @property
    def frames_written(self) -> int:
        return self._encoder.frames_written if self._encoder else 0

    def _open(self) -> _StreamEncoder:
        if self._closed:
            raise ValueError(f"writer for {self.path} is already closed")
        if self._encoder is None:
            if not self.path.parent.is_dir():
                raise FileNotFoundError(f"output folder does not exist: {self.path.parent}")
            container = av.open(
                str(self.partial_path), "w", format=self._format, options=self._container_options
            )
            container.metadata.update(self._metadata)
            self._encoder = _StreamEncoder(container, self.fps, self._codec, self._pix_fmt, self._options)
        return self._encoder

    def append(self, frames: np.ndarray) -> None:
        """Encode uint8 frames (T, H, W, 3) or one frame (H, W, 3) now."""
        self._open().encode(frames)

    def close(self) -> Path:
        """Finish the file and move it onto `path`; returns `path`."""
        if self._closed:
            return self.path
        encoder = self._open()
        try:
            encoder.finish()
            encoder.container.close()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        os.replace(self.partial_path, self.path)
        return self.path

    def abort(self) -> None:
        """Stop without producing `path`; the partial file is removed unless keep_partial."""
        if self._closed:
            return
        self._closed = True
        if self._encoder is not None:
            try:
                if self.keep_partial and self._encoder.frames_written:
                    self._encoder.finish()  # a kept partial file holds every appended frame
                self._encoder.container.close()
            except (av.FFmpegError, ValueError, OSError):
                pass  # the file is being discarded (or kept as a best-effort partial)
        if not self.keep_partial:
            self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | Path, frames: np.ndarray, fps: float, **writer_options) -> Path:
    """Write uint8 (T, H, W, 3) frames to `path` in one call (atomic, like VideoWriter)."""
    with VideoWriter(path, fps, **writer_options) as writer:
        writer.append(frames)
    return Path(path)


def frames_to_mp4_bytes(
    frames: np.ndarray,
    fps: float,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    crf: int | None = None,
    preset: str | None = None,
) -> bytes:
    """An in-memory MP4 of uint8 (T, H, W, 3) frames (e.g. a chunk preview for the server)."""
    frames = _check_frames(frames)
    buffer = io.BytesIO()
    container = av.open(buffer, "w", format="mp4")
    try:
        encoder = _StreamEncoder(container, fps, codec, pix_fmt, _encoder_options(codec, crf, preset, None))
        encoder.encode(frames)
        encoder.finish()
    finally:
        container.close()
    return buffer.getvalue()
