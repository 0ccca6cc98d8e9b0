"""A training folder: videos and images, each with a caption in the `.txt` file of the same name.

    my_clips/
      cat_jump.mp4     cat_jump.txt      "a cat jumps onto the table"
      dog_run.mov      dog_run.txt
      still_life.png   still_life.txt    (images train as one-frame clips)
      more/clip3.webm  more/clip3.txt    (sub-folders are scanned too)

This is the layout musubi-tuner and diffusion-pipe read. The Hugging Face `imagefolder` / `videofolder` layout
works too: a `metadata.jsonl` or `metadata.csv` in a folder, one row per file, with its path relative to that
folder in `file_name` and its caption in `text` (or `caption`, or `prompt`); a same-name `.txt` beside a file
wins over its row. Every file that cannot be used is reported with its reason (no caption, empty caption,
unreadable, too short for one chunk, a caption with nothing beside it, a file type that is neither), never
dropped silently; the good ones are returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption", "prompt")  # the first one a row has is its caption


@dataclass(frozen=True)
class MediaItem:
    path: Path
    caption: str
    kind: str                 # "video" or "image"
    height: int
    width: int
    num_frames: int           # at the training fps (images: 1)


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class DatasetScan:
    root: Path
    items: list[MediaItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def videos(self) -> list[MediaItem]:
        return [i for i in self.items if i.kind == "video"]

    @property
    def images(self) -> list[MediaItem]:
        return [i for i in self.items if i.kind == "image"]

    def summary(self) -> str:
        text = f"{self.root}: {len(self.videos)} videos and {len(self.images)} images with captions"
        if self.problems:
            count = len(self.problems)  # files, captions and metadata rows alike
            text += f"; {count} {'entry' if count == 1 else 'entries'} not used (listed above)"
        return text


def _read_caption(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _metadata_rows(path: Path) -> list[dict]:
    """The rows of a metadata.jsonl (one JSON object per line) or metadata.csv (a header row)."""
    import csv
    import json

    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number} is not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"line {number} is not a JSON object")
            rows.append(row)
    return rows


def _metadata_captions(files: list[Path], problems: list[Problem]) -> dict[Path, str]:
    """Captions from every metadata.jsonl / metadata.csv among `files`, keyed by the media path they name."""
    captions: dict[Path, str] = {}
    for meta in (f for f in files if f.name in METADATA_NAMES):
        try:
            rows = _metadata_rows(meta)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            problems.append(Problem(meta, f"not a readable metadata file ({err})"))
            continue
        for number, row in enumerate(rows, 1):
            name = row.get("file_name")
            column = next((c for c in CAPTION_COLUMNS if c in row), None)
            if not name or column is None:
                problems.append(Problem(meta, f"row {number} needs file_name and one of {', '.join(CAPTION_COLUMNS)} "
                                              f"(has {', '.join(map(str, row)) or 'nothing'})"))
                continue
            target = meta.parent / str(name)
            if not target.is_file():
                problems.append(Problem(meta, f"row {number} names {name}, which is not there"))
                continue
            captions[target.resolve()] = str(row[column] if row[column] is not None else "").strip()
    return captions


def _frames_at(num_frames: int, source_fps: float, fps: float) -> int:
    """Frames a clip gives when re-timed to `fps` (the loader's fps filter): its duration times fps."""
    if not source_fps:
        return num_frames
    return int(num_frames / source_fps * fps + 1e-6)


def scan_folder(root: str | Path, *, fps: float, min_frames: int) -> DatasetScan:
    """Pair every video / image under `root` with its caption; report what cannot be used and why.

    min_frames: the frames of one whole chunk at `fps` (shorter videos cannot train a chunk).
    """
    from PIL import Image, UnidentifiedImageError

    from ..io.video import probe_video

    root = Path(root)
    scan = DatasetScan(root)
    if not root.is_dir():
        scan.problems.append(Problem(root, "is not a folder"))
        return scan
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                          for part in p.relative_to(root).parts))
    media_stems = set()
    from_metadata = _metadata_captions(files, scan.problems)
    for path in files:
        suffix = path.suffix.lower()
        if suffix == CAPTION_SUFFIX or path.name in METADATA_NAMES:
            continue
        if suffix not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
            scan.problems.append(Problem(path, f"not a video ({', '.join(VIDEO_SUFFIXES)}) or image "
                                               f"({', '.join(IMAGE_SUFFIXES)})"))
            continue
        media_stems.add(path.with_suffix(""))
        caption_path = path.with_suffix(CAPTION_SUFFIX)
        if caption_path.is_file():
            caption = _read_caption(caption_path)
        elif path.resolve() in from_metadata:
            caption, caption_path = from_metadata[path.resolve()], path  # an empty one is reported against the file
        else:
            scan.problems.append(Problem(path, f"no caption file {caption_path.name} (nor a metadata.jsonl / "
                                               f"metadata.csv row)"))
            continue
        if caption is None:
            scan.problems.append(Problem(caption_path, "caption is not readable UTF-8 text"))
            continue
        if not caption:
            scan.problems.append(Problem(caption_path, "caption is empty"))
            continue
        if suffix in IMAGE_SUFFIXES:
            try:
                with Image.open(path) as image:
                    image.verify()
                    width, height = image.size
            except (UnidentifiedImageError, OSError, SyntaxError) as err:
                scan.problems.append(Problem(path, f"not a readable image ({err})"))
                continue
            scan.items.append(MediaItem(path, caption, "image", height, width, 1))
            continue
        try:
            info = probe_video(path)
        except (ValueError, OSError) as err:
            scan.problems.append(Problem(path, f"not a readable video ({err})"))
            continue
        frames = _frames_at(info.num_frames, info.fps, fps)
        if frames < min_frames:
            scan.problems.append(Problem(path, f"{frames} frames at {fps:g} fps, shorter than one chunk "
                                               f"({min_frames} frames)"))
            continue
        scan.items.append(MediaItem(path, caption, "video", info.height, info.width, frames))
    for path in files:
        if path.suffix.lower() == CAPTION_SUFFIX and path.with_suffix("") not in media_stems:
            scan.problems.append(Problem(path, "caption with no video or image of the same name"))
    return scan
