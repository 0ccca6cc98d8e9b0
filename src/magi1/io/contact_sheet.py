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


def video_contact_sheet(video_path: str | Path, png_path: str | Path, *, every: int = 6, columns: int = 8,
                        gap: int = 2, scale: int = 1) -> Path:
    """Read a video file (all its frames, at its own size and rate) and save its contact sheet as a PNG."""
    from PIL import Image

    from .video import load_video, probe_video

    info = probe_video(video_path)
    frames = load_video(video_path, info.height, info.width, info.fps, max_frames=None)
    sheet = Image.fromarray(contact_sheet(frames, every=every, columns=columns, gap=gap))
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
