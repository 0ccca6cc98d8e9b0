"""Where the official weights live on disk, and which file holds which tensor.

An official checkpoint root (`runtime_config.load`) holds one folder per weight kind:

    <load>/inference_weight               base
    <load>/inference_weight.distill       distilled
    <load>/inference_weight.fp8.distill   distilled + fp8 (".fp8" comes before ".distill")

Inside a folder there is either `model.safetensors.index.json` (a `weight_map` from tensor name to
shard file) plus the shards, or one `model.safetensors`. Any file `X` may instead be shipped as `X.zst`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

WEIGHT_DIR_BASE = "inference_weight"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"
ZST_SUFFIX = ".zst"


class CheckpointError(RuntimeError):
    """A checkpoint folder or file that cannot give the model its weights."""


@dataclass(frozen=True)
class ShardPlan:
    """One safetensors file to read, and the names to take from it (None: every tensor in it)."""

    path: Path  # the uncompressed name; the bytes may live in `path.zst`
    names: tuple[str, ...] | None

    @property
    def compressed_path(self) -> Path:
        return self.path.with_name(self.path.name + ZST_SUFFIX)

    @property
    def is_compressed(self) -> bool:
        # The official reader prefers the .zst copy whenever it exists; so do we.
        return self.compressed_path.is_file()

    @property
    def stored_path(self) -> Path:
        return self.compressed_path if self.is_compressed else self.path


def weight_dir_name(*, distill: bool, fp8_quant: bool) -> str:
    return WEIGHT_DIR_BASE + (".fp8" if fp8_quant else "") + (".distill" if distill else "")


def has_weights(folder: Path) -> bool:
    names = (INDEX_NAME, SINGLE_FILE_NAME, SINGLE_FILE_NAME + ZST_SUFFIX)
    return folder.is_dir() and any((folder / name).is_file() for name in names)


def _describe_weight_dir(name: str) -> str:
    """'inference_weight.fp8.distill' -> 'distill=True, fp8_quant=True' (what config it belongs to)."""
    suffixes = name[len(WEIGHT_DIR_BASE):].split(".")
    return f"distill={'distill' in suffixes}, fp8_quant={'fp8' in suffixes}"


def weight_dir(load_root: str | Path, *, distill: bool, fp8_quant: bool) -> Path:
    """The folder holding the weights for this kind of model, checked to contain some."""
    root = Path(load_root).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"checkpoint root {root} does not exist (runtime_config.load in the config; change it with --set runtime_config.load=FOLDER)")
    wanted = weight_dir_name(distill=distill, fp8_quant=fp8_quant)
    folder = root / wanted
    if has_weights(folder):
        return folder

    present = sorted(p.name for p in root.iterdir() if p.name.startswith(WEIGHT_DIR_BASE) and has_weights(p))
    if present:
        found = "; folders with weights here: " + ", ".join(f"{n} ({_describe_weight_dir(n)})" for n in present)
    else:
        found = "; no inference_weight* folder with weights exists there"
    if has_weights(root):
        found += f" ({root} itself holds weights: set load to its parent folder)"
    state = "is missing" if not folder.exists() else "has no model.safetensors or model.safetensors.index.json"
    raise CheckpointError(
        f"no weights in {folder} ({state}); for a config with distill={distill}, fp8_quant={fp8_quant} "
        f"the folder must be {wanted}{found}"
    )


def plan_shards(folder: str | Path) -> list[ShardPlan]:
    """The files of one weight folder, in the order they should be read."""
    folder = Path(folder)
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        return _plan_from_index(index_path)
    single = ShardPlan(folder / SINGLE_FILE_NAME, None)
    if single.path.is_file() or single.is_compressed:
        return [single]
    raise CheckpointError(f"no weights in {folder}: expected {INDEX_NAME} or {SINGLE_FILE_NAME}[.zst]")


def _plan_from_index(index_path: Path) -> list[ShardPlan]:
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path} is not a valid safetensors index ({type(err).__name__}: {err})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path}: weight_map must map tensor names to shard file names")

    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    plans = [ShardPlan(index_path.parent / shard, tuple(names)) for shard, names in by_shard.items()]
    absent = [p.path.name for p in plans if not p.path.is_file() and not p.is_compressed]
    if absent:
        raise CheckpointError(f"{index_path} lists shard(s) that are not in the folder: {', '.join(absent)}")
    return plans
