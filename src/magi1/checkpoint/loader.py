"""Reading official MAGI-1 weights and assigning them to a model built on the meta device.

Only safetensors are read (memory-mapped, or from bytes after zstd decompression); nothing is ever
unpickled. Before any tensor data is read, every name, shape and fp8-ness is checked against the model
from the file headers alone, so a wrong checkpoint fails in seconds with one message listing everything
that is wrong, not after reading 48 GB.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import zstandard
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes
from torch import nn

from .layout import CheckpointError, ShardPlan, plan_shards, weight_dir
from .packed_layout import packed_layer_keys, packed_layout_message

if TYPE_CHECKING:
    from ..config import MagiConfig
    from ..models.dit import MagiDiT

# safetensors header dtype names -> torch dtypes
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_HEADER_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 100 * 2**20  # a real header is a few hundred KB; more means the file is not safetensors
_READ_CHUNK = 16 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


# ============================================================================================ reading
def _parse_header(raw: bytes, source: Path) -> tuple[dict[str, TensorInfo], int]:
    """Tensor infos, and the number of data bytes the header says follow it."""
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source} is corrupt: its safetensors header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{source} is corrupt: its safetensors header is not a JSON object")
    infos, data_bytes = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            infos[name] = TensorInfo(tuple(int(n) for n in entry["shape"]), _SAFETENSORS_DTYPES[entry["dtype"]])
            data_bytes = max(data_bytes, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{source} is corrupt or uses an unsupported dtype at tensor {name!r}") from None
    return infos, data_bytes


def _read_header_bytes(stream, source: Path) -> bytes:
    prefix = stream.read(_HEADER_LENGTH_BYTES)
    if len(prefix) < _HEADER_LENGTH_BYTES:
        raise CheckpointError(f"{source} is truncated or empty ({len(prefix)} bytes where a header was expected)")
    (length,) = struct.unpack("<Q", prefix)
    if length > _MAX_HEADER_BYTES:
        raise CheckpointError(f"{source} is not a safetensors file (header length {length})")
    raw = stream.read(length)
    if len(raw) < length:
        raise CheckpointError(f"{source} is truncated inside its header")
    return raw


def read_shard_header(plan: ShardPlan) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of one shard, from its header only (for .zst: decompressing only the header)."""
    path = plan.stored_path
    try:
        with open(path, "rb") as fh:
            if plan.is_compressed:
                with zstandard.ZstdDecompressor().stream_reader(fh) as reader:
                    return _parse_header(_read_header_bytes(reader, path), path)[0]
            raw = _read_header_bytes(fh, path)
    except zstandard.ZstdError as err:
        raise CheckpointError(f"{path} is not a readable zstd file: {err}") from None
    infos, data_bytes = _parse_header(raw, path)
    # Catch a cut-off download now, before anything is read (a .zst is checked when decompressed).
    expected_size = _HEADER_LENGTH_BYTES + len(raw) + data_bytes
    actual_size = path.stat().st_size
    if actual_size < expected_size:
        raise CheckpointError(f"{path} is truncated: {actual_size} bytes, its header describes {expected_size}")
    return infos


def _decompress_zst(path: Path) -> bytes:
    """Stream-decompress a .zst file into one bytes object (what safetensors' loader takes)."""
    try:
        with open(path, "rb") as fh:
            expected = zstandard.frame_content_size(fh.read(18))
            fh.seek(0)
            with zstandard.ZstdDecompressor().stream_reader(fh) as reader:
                if expected > 0:
                    # Known size: one allocation, no join copy.
                    data = reader.read(expected)
                    if len(data) < expected:
                        rest = [data]
                        while chunk := reader.read(_READ_CHUNK):
                            rest.append(chunk)
                        data = b"".join(rest)
                else:
                    parts = []
                    while chunk := reader.read(_READ_CHUNK):
                        parts.append(chunk)
                    data = b"".join(parts)
    except zstandard.ZstdError as err:
        raise CheckpointError(f"{path} is truncated or corrupt (zstd: {err})") from None
    if expected > 0 and len(data) != expected:
        # zstandard returns a short read, not an error, when the compressed stream is cut off.
        raise CheckpointError(f"{path} is truncated: decompressed {len(data)} of {expected} bytes")
    return data


class CheckpointReader(Mapping):
    """A weight folder as a read-only mapping name -> tensor, reading lazily, one shard at a time.

    Uncompressed shards are memory-mapped; a .zst shard is decompressed when first touched and kept
    until a tensor of another compressed shard is asked for, so reading in `ordered()` order holds at
    most one decompressed shard in memory.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.plans = plan_shards(self.folder)
        self._shard_of: dict[str, int] = {}
        self._info: dict[str, TensorInfo] = {}
        for i, plan in enumerate(self.plans):
            header = read_shard_header(plan)
            names = plan.names if plan.names is not None else tuple(header)
            absent = [n for n in names if n not in header]
            if absent:
                raise CheckpointError(
                    f"{self.folder / 'model.safetensors.index.json'} places {len(absent)} tensor(s) in "
                    f"{plan.stored_path.name} that it does not contain: {', '.join(absent)}"
                )
            for name in names:  # names the index gives to other shards are not taken from this one
                self._shard_of[name] = i
                self._info[name] = header[name]
        self._open_files: dict[int, object] = {}
        self._decompressed: tuple[int, dict[str, torch.Tensor]] | None = None

    # -- Mapping
    def __getitem__(self, name: str) -> torch.Tensor:
        index = self._shard_of[name]  # KeyError for unknown names, as a Mapping should
        plan = self.plans[index]
        try:
            if plan.is_compressed:
                if self._decompressed is None or self._decompressed[0] != index:
                    self._decompressed = None  # free the previous shard first
                    self._decompressed = (index, load_safetensors_bytes(_decompress_zst(plan.compressed_path)))
                return self._decompressed[1][name]
            handle = self._open_files.get(index)
            if handle is None:
                handle = self._open_files[index] = safe_open(str(plan.path), framework="pt")
            return handle.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own error type for a short or damaged file
            raise CheckpointError(f"{plan.stored_path} is truncated or corrupt: {err}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._shard_of)

    def __len__(self) -> int:
        return len(self._shard_of)

    # -- extras
    def info(self, name: str) -> TensorInfo:
        return self._info[name]

    def ordered(self, names: Iterable[str]) -> list[str]:
        """`names` sorted by the shard that holds them, so each shard is visited once."""
        return sorted(names, key=lambda n: self._shard_of[n])

    def close(self) -> None:
        self._open_files.clear()
        self._decompressed = None


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weight folder, as stored (dtypes unchanged)."""
    reader = CheckpointReader(folder)
    try:
        return {name: reader[name] for name in reader.ordered(reader)}
    finally:
        reader.close()


def _info_of(source: Mapping, name: str) -> TensorInfo:
    if isinstance(source, CheckpointReader):
        return source.info(name)
    tensor = source[name]
    return TensorInfo(tuple(tensor.shape), tensor.dtype)


# ============================================================================================ precision
_PROMOTED_TOP_MODULES = {"x_embedder", "y_embedder", "t_embedder", "final_linear", "rope"}
_PROMOTED_LAYER_MODULES = {"q_layernorm", "k_layernorm", "self_attn_post_norm", "mlp_post_norm"}
_FP8_SCALE_NAMES = {"weight_scale", "input_scale", "smooth_scale"}


def is_high_precision(name: str) -> bool:
    """True for a state-dict key the official `_high_precision_promoter` casts to float32.

    Embedders (null caption table included), rotary bands, the final linear, the self-attention QK
    norms, both post norms and the final norm. The cross-attention QK norms (`q_layernorm_xattn`,
    `k_layernorm_xattn`) are not promoted: matching whole path segments keeps them out.
    """
    parts = name.split(".")
    if parts[0] in _PROMOTED_TOP_MODULES:
        return True
    if name.startswith("videodit_blocks.final_layernorm."):
        return True
    return any(part in _PROMOTED_LAYER_MODULES for part in parts[:-1])


def _is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def runtime_dtype_for(name: str, stored: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a loaded tensor runs in: fp32 islands promoted, fp8 data and scales untouched,
    every other float tensor in `dtype` (None: as stored, the official `assign=True` behaviour)."""
    if not stored.is_floating_point or _is_fp8(stored):
        return stored
    if is_high_precision(name):
        return torch.float32
    if name.rpartition(".")[2] in _FP8_SCALE_NAMES:
        return stored
    return dtype or stored


def promote_high_precision(model: nn.Module) -> nn.Module:
    """Cast, in place, every parameter and buffer named by `is_high_precision` to float32."""
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is None or not tensor.is_floating_point() or not is_high_precision(prefix + key):
                    continue
                if tensor.dtype != torch.float32:
                    cast = tensor.detach().float()
                    store[key] = nn.Parameter(cast, requires_grad=tensor.requires_grad) if isinstance(
                        tensor, nn.Parameter
                    ) else cast
    return model


# ============================================================================================ pipeline parallel
_LAYER_KEY = re.compile(r"^videodit_blocks\.layers\.(\d+)\.(.+)$")


def pipeline_stage_layers(num_layers: int, pp_size: int, rank: int) -> list[int]:
    """Global indices of the layers held by pipeline stage `rank` (the official array_split)."""
    if pp_size < 1 or not 0 <= rank < pp_size:
        raise ValueError(f"pipeline rank {rank} is outside 0..{pp_size - 1}")
    if num_layers % pp_size:
        raise ValueError(f"num_layers ({num_layers}) must be divisible by pp_size ({pp_size})")
    return [int(i) for i in np.array_split(np.arange(num_layers), pp_size)[rank]]


def rename_kept_layers(
    keys: Iterable[str], keep_layers: Sequence[int], num_layers: int | None = None
) -> dict[str, str]:
    """{stage name: checkpoint name}: layers in `keep_layers` renumbered 0.., other layers dropped,
    non-layer keys kept. Layer indices >= num_layers (when given) keep their name, so that strict
    loading reports them as unexpected instead of hiding them."""
    position = {int(g): i for i, g in enumerate(keep_layers)}
    renamed = {}
    for key in keys:
        match = _LAYER_KEY.match(key)
        if match is None:
            renamed[key] = key
            continue
        layer = int(match.group(1))
        if layer in position:
            renamed[f"videodit_blocks.layers.{position[layer]}.{match.group(2)}"] = key
        elif num_layers is not None and layer >= num_layers:
            renamed[key] = key
    return renamed


def select_pipeline_stage(state_dict_keys: Iterable[str], num_layers: int, pp_size: int, rank: int) -> dict[str, str]:
    """{stage name: checkpoint name} for pipeline stage `rank` of `pp_size`."""
    return rename_kept_layers(state_dict_keys, pipeline_stage_layers(num_layers, pp_size, rank), num_layers)


# ============================================================================================ assigning
MAX_LISTED_KEYS = 10  # per kind of problem in a LoadReport message; the count says how many there are


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # human-readable, with both shapes/dtypes

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def message(self, where: str) -> str:
        lines = [f"checkpoint {where} does not fit the model:"]
        for title, items in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                             ("shape/dtype mismatches", self.mismatched)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items[:MAX_LISTED_KEYS])
                if len(items) > MAX_LISTED_KEYS:  # a checkpoint of another model mismatches every tensor
                    lines.append(f"    ... and {len(items) - MAX_LISTED_KEYS} more")
        return "\n".join(lines)


def _module_exists(model: nn.Module, key: str) -> bool:
    try:
        model.get_submodule(key.rpartition(".")[0])
        return True
    except AttributeError:
        return False


def _describe(info: TensorInfo) -> str:
    return f"{tuple(info.shape)} {str(info.dtype).replace('torch.', '')}"


def load_state_dict_into(
    model: nn.Module,
    state_dict_source: Mapping[str, torch.Tensor] | str | Path,
    *,
    strict: bool = True,
    keep_layers: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    defaults: Mapping[str, object] | None = None,
) -> LoadReport:
    """Assign checkpoint tensors to `model`'s parameters and buffers (`assign=True`: no copy into
    existing storage, so `model` may live on the meta device). Returns what was loaded.

    state_dict_source: a mapping name -> tensor, or a weight folder (read lazily, see CheckpointReader).
    strict: raise one CheckpointError listing every missing key, unexpected key and shape mismatch.
    keep_layers: global indices of the transformer layers this model holds (pipeline parallel); they
        are renumbered from 0. Non-layer keys whose module this stage does not build are then ignored.
    dtype: runtime dtype of ordinary float tensors (None: as stored); see `runtime_dtype_for`.
    defaults: name -> callable giving a value for a key the checkpoint may lack (e.g. rope.bands).
    """
    source = CheckpointReader(state_dict_source) if isinstance(state_dict_source, (str, Path)) else state_dict_source
    where = str(state_dict_source) if isinstance(state_dict_source, (str, Path)) else "(in-memory state dict)"
    defaults = dict(defaults or {})
    try:
        names = rename_kept_layers(source.keys(), keep_layers) if keep_layers is not None else {k: k for k in source}
        expected = {
            name: TensorInfo(tuple(t.shape), t.dtype) for name, t in model.state_dict(keep_vars=True).items()
        }

        packed = packed_layout_message(where, {n: _info_of(source, n).shape for n in packed_layer_keys(source.keys())})
        if packed:
            raise CheckpointError(packed)

        report = LoadReport()
        report.missing = [n for n in expected if n not in names and n not in defaults]
        for name, original in names.items():
            if name in expected:
                continue
            lenient = keep_layers is not None and not _LAYER_KEY.match(name) and not _module_exists(model, name)
            if not lenient:
                report.unexpected.append(original)
        to_load = []
        for name, want in expected.items():
            if name not in names:
                continue
            have = _info_of(source, names[name])
            if have.shape != want.shape or _is_fp8(have.dtype) != _is_fp8(want.dtype):
                report.mismatched.append(
                    f"{names[name]}: checkpoint {_describe(have)}, model {_describe(want)}"
                )
            else:
                to_load.append(name)
        if strict and not report.ok:
            raise CheckpointError(report.message(where))

        by_original = {names[n]: n for n in to_load}
        order = source.ordered(by_original) if isinstance(source, CheckpointReader) else list(by_original)
        tensors = {}
        for original in order:
            name = by_original[original]
            tensor = source[original]
            tensors[name] = tensor.to(runtime_dtype_for(name, tensor.dtype, dtype))
        for name, make in defaults.items():
            if name in expected and name not in tensors:
                value = torch.as_tensor(make() if callable(make) else make)
                tensors[name] = value.to(runtime_dtype_for(name, value.dtype, dtype))
        model.load_state_dict(tensors, strict=False, assign=True)
        report.loaded = sorted(tensors)
    finally:
        if isinstance(source, CheckpointReader) and source is not state_dict_source:
            source.close()

    if strict:
        left = [name for name, t in _named_tensors(model) if t.is_meta]
        if left:
            raise CheckpointError(
                f"after loading {where}, these tensors still have no data (not in the state dict and not "
                f"computed by the model): {', '.join(left)}"
            )
    return report


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


# ============================================================================================ the DiT
def load_dit(
    config: "MagiConfig",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    load_root: str | Path | None = None,
    pp_rank: int = 0,
) -> "MagiDiT":
    """Build the DiT on the meta device, assign the official weights, promote the fp32 islands,
    move it to `device` (None: the runtime's choice) and put it in eval mode.

    dtype: None keeps each tensor's stored dtype (as the official loader does); a dtype casts every
    non-promoted, non-fp8 float tensor to it. With engine_config.pp_size > 1 the model holds only
    stage `pp_rank`'s layers, renumbered from 0 (their `layer_number` stays global, so the fp8
    first/last-layer rule and KV-cache layer indices are as in the full model).
    """
    from ..models.dit import MagiDiT
    from ..models.rope import default_bands
    from ..runtime import own_host_storage, parse_dtype, pick_device

    model_config, engine = config.model_config, config.engine_config
    root = load_root if load_root is not None else config.resolve_path(config.runtime_config.load)
    if root is None:
        raise CheckpointError("no checkpoint root: set runtime_config.load in the config or pass load_root")
    folder = weight_dir(root, distill=engine.distill, fp8_quant=engine.fp8_quant)

    with torch.device("meta"):
        model = MagiDiT(model_config, distill=engine.distill, fp8_quant=engine.fp8_quant)
    keep_layers = None
    if engine.pp_size > 1:
        keep_layers = pipeline_stage_layers(model_config.num_layers, engine.pp_size, pp_rank)
        layers = model.videodit_blocks.layers
        model.videodit_blocks.layers = nn.ModuleList(layers[i] for i in keep_layers)

    # The official model computes rope.bands at construction (it is never on meta), so a checkpoint
    # without it still loads; give it the same default values.
    bands = {"rope.bands": lambda: default_bands(model_config.rope_dim // 8)}
    load_state_dict_into(
        model, folder, strict=True, keep_layers=keep_layers,
        dtype=parse_dtype(dtype) if dtype is not None else None, defaults=bands,
    )
    # Tensors kept in host memory are views into the mmap'd shards until copied; own them, so the
    # CPU kernels see the alignment an offloaded copy will have (runtime.own_host_storage).
    return own_host_storage(model.to(pick_device(device))).eval()
