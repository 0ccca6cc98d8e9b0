"""A local Hugging Face cache laid out exactly as huggingface_hub lays it out (no network).

    <cache>/models--<owner>--<name>/blobs/<sha256>            file contents
    <cache>/models--<owner>--<name>/refs/main                 the commit hash
    <cache>/models--<owner>--<name>/snapshots/<commit>/<path> relative symlink to ../../blobs/<sha256>
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """Put `files` ({path in repo: local file}) into the cache as one snapshot; returns the snapshot folder."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    for path_in_repo, source in files.items():
        data = Path(source).read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path_in_repo
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def add_tree_listing(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """The tree listing newer huggingface_hub versions keep beside a snapshot (trees/<commit>.json)."""
    import json

    storage = cache / ("models--" + repo_id.replace("/", "--"))
    listing = {"format_version": 1, "files": {
        path: {"size": Path(source).stat().st_size, "blob_id": hashlib.sha1(Path(source).read_bytes()).hexdigest()}
        for path, source in files.items()}}
    target = storage / "trees" / f"{commit}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(listing))
    return target


def tiny_official_repo_files(model_root: Path, variant: str, special_tokens: Path) -> dict[str, Path]:
    """The files of a tiny model folder (magi1.testing layout) at their places in the official repo."""
    weight_dirs = [p for p in (model_root / "dit").iterdir() if p.is_dir()]
    files = {}
    for weight_dir in weight_dirs:
        for f in weight_dir.iterdir():
            files[f"ckpt/magi/{variant}/{weight_dir.name}/{f.name}"] = f
    for f in (model_root / "vae").iterdir():
        files[f"ckpt/vae/{f.name}"] = f
    for f in (model_root / "t5" / "t5-v1_1-xxl").iterdir():
        files[f"ckpt/t5/t5-v1_1-xxl/{f.name}"] = f
    files["example/assets/special_tokens.npz"] = special_tokens
    return files


def fake_special_tokens(path: Path, channels: int) -> Path:
    """An npz shaped like the official special_tokens.npz (random vectors, `channels` wide)."""
    rng = np.random.default_rng(0)
    np.savez(path, caption_token=rng.normal(size=(1, channels)), logo_token=rng.normal(size=(1, channels)),
             other_tokens=rng.normal(size=(100, channels)))
    return path
