"""Writing weights in the official folder layout, so that the official code and `magi1` both read them.

Used to convert weights, by the trainer, and by tests that need a checkpoint on disk.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
import zstandard
from safetensors.torch import save_file

from .layout import INDEX_NAME, SINGLE_FILE_NAME, ZST_SUFFIX

_ZSTD_LEVEL = 3  # the zstd default: fast, and weights barely compress further at higher levels


def _prepared(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; a tensor sharing storage with an earlier one is cloned,
    because safetensors refuses aliased tensors."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(tensor).__name__}")
        if tensor.is_meta:
            raise ValueError(f"{name} is on the meta device and has no data to save")
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def _split_into_shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int | None) -> list[list[str]]:
    """Names grouped greedily, in order, into shards of at most max_shard_bytes (a bigger tensor
    gets a shard of its own)."""
    if max_shard_bytes is None:
        return [list(tensors)]
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _compress(path: Path) -> Path:
    """Write `path.zst` (streaming) and remove `path`, as the official release ships shards."""
    target = path.with_name(path.name + ZST_SUFFIX)
    partial = target.with_name(target.name + ".partial")
    with open(path, "rb") as src, open(partial, "wb") as dst:
        compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        # size known up front, so readers can decompress into one buffer and detect truncation
        with compressor.stream_writer(dst, size=path.stat().st_size, closefd=False) as writer:
            shutil.copyfileobj(src, writer, 16 * 2**20)
    os.replace(partial, target)
    path.unlink()
    return target


def _remove_previous_weights(folder: Path) -> None:
    """Delete weight files an earlier save left here: a stale index or .zst would shadow the new files."""
    stale = [folder / INDEX_NAME, folder / SINGLE_FILE_NAME, folder / (SINGLE_FILE_NAME + ZST_SUFFIX)]
    stale += folder.glob("model-*-of-*.safetensors")
    stale += folder.glob("model-*-of-*.safetensors" + ZST_SUFFIX)
    for path in stale:
        if path.is_file():
            path.unlink()


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={"format": "pt"})
    os.replace(partial, path)  # a crash leaves no half-written file under the real name


def save_official(
    state_dict: Mapping[str, torch.Tensor],
    folder: str | Path,
    *,
    max_shard_bytes: int | None = None,
    compress_zst: bool = False,
) -> list[Path]:
    """Write `state_dict` to `folder` in the official layout; returns the files written.

    max_shard_bytes None (or everything fits in one shard): a single `model.safetensors`.
    Otherwise `model-0000i-of-0000n.safetensors` shards and `model.safetensors.index.json`
    ({"metadata": {"total_size": bytes}, "weight_map": {name: shard}}).
    compress_zst: each safetensors file is replaced by its `.zst` (the index still names the
    uncompressed file, as the official reader expects).
    Dtypes are written as given (bf16, float8_e4m3fn, fp32 scales, ...). Weight files of an earlier
    save in `folder` are removed first.
    """
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _prepared(state_dict)
    _remove_previous_weights(folder)
    shards = _split_into_shards(tensors, max_shard_bytes)

    written: list[Path] = []
    if len(shards) == 1:
        file_names = [SINGLE_FILE_NAME]
    else:
        file_names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for file_name, names in zip(file_names, shards):
        path = folder / file_name
        _write_safetensors({n: tensors[n] for n in names}, path)
        written.append(_compress(path) if compress_zst else path)

    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {name: file_name for file_name, names in zip(file_names, shards) for name in names},
        }
        index_path = folder / INDEX_NAME
        index_path.write_text(json.dumps(index, indent=2) + "\n")
        written.append(index_path)
    return written


VAE_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def save_vae_folder(vae, folder: str | Path) -> Path:
    """Save a ViTVAE in the official pretrained-folder layout (config.json + diffusion_pytorch_model.safetensors)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "ViTVAE", "ddconfig": vae.config.to_ddconfig(), "model_type": "vit"}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _write_safetensors(_prepared(vae.state_dict()), folder / VAE_WEIGHTS_NAME)
    return folder
