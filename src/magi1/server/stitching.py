"""An extension's whole video (its source, then its continuation), made without re-encoding the source.

Re-encoding decoded frames loses a little each time (about 3/255 on average, up to ~50 on edges at CRF 23),
so a video extended again and again would blur its oldest seconds a little more with every extension.
The server's own videos are all encoded with the same settings (libx264, yuv420p, CRF 23, medium): every
part starts with a keyframe and carries the same SPS/PPS (codec extradata), so the parts' H.264 packets can
simply be copied one after the other into one mp4, their timestamps shifted; the source frames come out
bit for bit as they were.

That is only done when it is safe, and checked afterwards:
- `faithful_copy` decides at submission whether the source file itself can stand for the extension's source
  (an H.264 mp4 at the extension's size and fps, every frame kept); otherwise the source is re-encoded at the
  extension's size, as before;
- `stitch` copies packets only when the parts' codec settings match, then decodes the result and keeps it
  only if it shows exactly the parts' frames; anything else (an uploaded video from another encoder, say)
  falls back to decoding both parts and encoding them once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np


class _NotJoinable(Exception):
    """The parts' packets cannot be joined as they are (a reason for the log, not for the client)."""


def faithful_copy(video: Path, frames: np.ndarray, fps: int) -> bool:
    """Whether `video` holds exactly `frames` (its frames as the extension loaded them) as H.264 in mp4:
    the same size and rate and every frame kept, so its packets can be copied instead of re-encoded."""
    import av

    try:
        with av.open(str(video)) as container:
            if "mp4" not in container.format.name.split(","):
                return False
            stream = container.streams.video[0]
            codec = stream.codec_context
            if (codec.name, codec.pix_fmt, codec.height, codec.width) != ("h264", "yuv420p", *frames.shape[1:3]):
                return False
            if stream.average_rate != fps:
                return False
            return sum(1 for packet in container.demux(stream) if packet.size) == len(frames)
    except (av.FFmpegError, IndexError, OSError):
        return False


def stitch(parts: list[Path], target: Path, fps: int, metadata: dict[str, str]) -> bool:
    """Write `target`: the parts' frames one after the other. True when their packets were copied, False when
    they had to be decoded and encoded again."""
    import av

    from magi1.io.video import VideoWriter, partial_path_for

    partial = partial_path_for(target)
    try:
        _copy_packets(parts, partial, metadata)
        copied = _shows_frames_of(partial, parts)
    except (_NotJoinable, av.FFmpegError):  # the muxer refusing the join too: encode again
        copied = False
    if not copied:
        partial.unlink(missing_ok=True)
        with VideoWriter(target, fps=fps, metadata=metadata) as writer:
            for part in parts:
                writer.append(_decode_all(part))
        return False
    os.replace(partial, target)
    return True


def _copy_packets(parts: list[Path], target: Path, metadata: dict[str, str]) -> None:
    import av

    with contextlib.ExitStack() as stack:
        inputs = [stack.enter_context(av.open(str(part))) for part in parts]
        streams = [container.streams.video[0] for container in inputs]
        for stream in streams[1:]:
            _check_joinable(streams[0], stream)
        with av.open(str(target), "w", format="mp4") as out:
            out.metadata.update(metadata)
            joined = out.add_stream_from_template(streams[0])
            offset, last_dts = 0, None
            for container, stream in zip(inputs, streams):
                end, first = offset, True
                for packet in container.demux(stream):
                    if not packet.size:  # the demuxer's end-of-stream marker
                        continue
                    if packet.pts is None or packet.dts is None or not packet.duration:
                        raise _NotJoinable("a packet without timestamps")
                    if first and not packet.is_keyframe:
                        raise _NotJoinable("a part does not start with a keyframe")
                    first = False
                    packet.pts += offset
                    packet.dts += offset
                    if last_dts is not None and packet.dts <= last_dts:
                        raise _NotJoinable("decode times would go backwards where the parts meet")
                    last_dts = packet.dts
                    end = max(end, packet.pts + packet.duration)
                    packet.stream = joined
                    out.mux(packet)
                offset = end  # the next part starts where this one's last frame ends


def _check_joinable(first, other) -> None:
    a, b = first.codec_context, other.codec_context
    if a.name != "h264" or b.name != "h264":
        raise _NotJoinable("not H.264")
    if not a.extradata or a.extradata != b.extradata:
        raise _NotJoinable("different encoder settings (SPS/PPS)")
    if (a.width, a.height, a.pix_fmt) != (b.width, b.height, b.pix_fmt) or first.time_base != other.time_base:
        raise _NotJoinable("different frame size, pixel format or time base")


def _shows_frames_of(joined: Path, parts: list[Path]) -> bool:
    """Whether `joined` decodes to exactly the parts' frames, in order (compared one frame at a time)."""
    import av

    with av.open(str(joined)) as container:
        frames = (frame.to_ndarray() for frame in container.decode(video=0))
        for part in parts:
            with av.open(str(part)) as source:
                for wanted in source.decode(video=0):
                    got = next(frames, None)
                    if got is None or not np.array_equal(got, wanted.to_ndarray()):
                        return False
        return next(frames, None) is None


def _decode_all(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
