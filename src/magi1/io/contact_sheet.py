"""A contact sheet: frames of a video tiled into one image, to see a video at a glance (docs, checks).

    magi1 contact-sheet video.mp4 sheet.png --every 6 --columns 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..arg_types import non_negative_int, positive_int


def contact_sheet(frames, every: int = 6, columns: int = 16, gap: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3) → one uint8 image: every `every`-th frame, `columns` per row, `gap` white pixels apart."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    if every < 1 or columns < 1 or gap < 0:
        raise ValueError("every and columns must be at least 1, gap at least 0")
    picked = list(frames[::every])
    columns = min(columns, len(picked))  # a short video makes one row, not a row of black padding
    while len(picked) % columns:
        picked.append(np.zeros_like(picked[0]))
    if gap:
        picked = [np.pad(f, ((0, gap), (0, gap), (0, 0)), constant_values=255) for f in picked]
    rows = [np.concatenate(picked[i : i + columns], axis=1) for i in range(0, len(picked), columns)]
    return np.concatenate(rows, axis=0)


# The largest sheet written: Pillow's decompression-bomb threshold, so every viewer built on it opens the sheet.
MAX_SHEET_PIXELS = 89_478_485


def sheet_size(frames: int, height: int, width: int, *, every: int, columns: int, gap: int,
               scale: int) -> tuple[int, int]:
    """(height, width) in pixels of the sheet `contact_sheet` makes of `frames` frames, `scale`d."""
    picked = -(-frames // every)
    columns = max(1, min(columns, picked))
    rows = -(-picked // columns)
    return rows * (height + gap) * scale, columns * (width + gap) * scale


def video_contact_sheet(video_path: str | Path, png_path: str | Path, *, every: int = 6, columns: int = 8,
                        gap: int = 2, scale: int = 1) -> Path:
    """Read a video file (at its own size and rate) and save its contact sheet as a PNG.

    Frames are decoded one at a time and only the kept ones are held, and a sheet larger than
    MAX_SHEET_PIXELS is refused before any decoding (an hour of video, or a --scale of 1000, would otherwise
    fill the memory).
    """
    from PIL import Image

    from .video import iter_video_frames, probe_video

    info = probe_video(video_path)
    if info.width < 1 or info.height < 1 or info.num_frames < 1:
        raise ValueError(f"cannot read {video_path} as a video: it has no decodable frames")
    height, width = sheet_size(info.num_frames, info.height, info.width, every=every, columns=columns, gap=gap,
                               scale=scale)
    if height * width > MAX_SHEET_PIXELS:
        raise ValueError(f"the sheet of {video_path} ({info.num_frames} frames of {info.width}x{info.height}, one in "
                         f"{every}, scale {scale}) would be {width}x{height} pixels, more than the "
                         f"{MAX_SHEET_PIXELS} a sheet may have; raise --every or lower --scale")
    frames = iter_video_frames(video_path, info.height, info.width, info.fps)
    try:
        kept = [frame for index, frame in enumerate(frames) if index % every == 0]
    finally:
        frames.close()
    if not kept:
        raise ValueError(f"cannot read {video_path} as a video: no frames could be decoded")
    sheet = Image.fromarray(contact_sheet(np.stack(kept), every=1, columns=columns, gap=gap))
    if scale > 1:
        sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(png_path)
    return Path(png_path)


def add_contact_sheet_parser(subparsers) -> None:
    p = subparsers.add_parser("contact-sheet", help="tile a video's frames into one PNG (see a video at a glance)")
    p.add_argument("video", help="input video (mp4, ...)")
    p.add_argument("output", help="PNG to write")
    p.add_argument("--every", type=positive_int, default=6, help="keep every n-th frame")
    p.add_argument("--columns", type=positive_int, default=8, help="frames per row")
    p.add_argument("--gap", type=non_negative_int, default=2, help="white pixels between frames")
    p.add_argument("--scale", type=positive_int, default=1, help="enlarge the sheet n times (nearest neighbour)")
    p.set_defaults(func=run_contact_sheet)


def run_contact_sheet(args: argparse.Namespace) -> int:
    from ..errors import InputError

    if not Path(args.video).is_file():
        raise InputError(f"no video at {args.video}")
    if Path(args.output).suffix.lower() != ".png":
        raise InputError(f"the contact sheet is a PNG: give an output name ending in .png, got {args.output}")
    try:
        path = video_contact_sheet(args.video, args.output, every=args.every, columns=args.columns, gap=args.gap,
                                   scale=args.scale)
    except ValueError as err:  # load_video's "cannot read X as a video: ..."
        raise InputError(str(err)) from None
    print(f"wrote {path}")
    return 0
