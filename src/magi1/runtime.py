"""The one place that picks devices, dtypes, threads and seeds.

No other module names a device type as a string: they ask this module.
torch is imported inside the functions that need it, so checking a dtype or device *name* (the CLI does it
before anything heavy loads) stays instant.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager, nullcontext
from typing import Iterator

from .errors import InputError

# Every spelling a user or an official config may give -> the torch attribute name.
_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "torch.float32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16", "torch.bfloat16": "bfloat16",
    "float16": "float16", "fp16": "float16", "torch.float16": "float16",
}
# Device types magi1 runs on; anything else torch may know (xla, mps, ...) is refused up front.
_DEVICE_TYPES = ("cpu", "cuda")


def canonical_dtype_name(name) -> str:
    """'bf16', 'bfloat16', 'torch.bfloat16', ... -> 'bfloat16', without importing torch.

    fp8 is not a compute dtype here: fp8 checkpoints (engine_config.fp8_quant) compute in bf16.
    """
    key = str(name).strip().lower()
    if key in _DTYPE_NAMES:
        return _DTYPE_NAMES[key]
    hint = (" (fp8 is a weight format: use an fp8 checkpoint, engine_config.fp8_quant, which computes in bf16)"
            if "fp8" in key or "float8" in key else "")
    raise InputError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16{hint}")


def parse_dtype(name):
    """Map 'bf16', 'bfloat16', 'torch.bfloat16', ... (or a torch dtype) to a torch dtype."""
    import torch

    if isinstance(name, torch.dtype):
        if not name.is_floating_point:  # torch.int8 is refused like "int8", not deep in a load
            raise InputError(f"dtype must be a floating-point type (float32, bfloat16, float16), got {name}")
        return name
    return getattr(torch, canonical_dtype_name(name))


def dtype_name(dtype: torch.dtype) -> str:
    """The official JSON spelling of a dtype, e.g. 'torch.bfloat16'."""
    return str(dtype)


def accelerator_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_device_name(name) -> None:
    """Refuse a device string magi1 cannot use (unknown type, bad index, no GPU) before anything loads.

    The name is parsed by hand, so a refusal costs no torch import; only cuda names ask torch whether
    a GPU is there.
    """
    if name is None or not isinstance(name, str) or name == "auto":
        return
    kind, _, index = name.strip().partition(":")
    if kind not in _DEVICE_TYPES or (index and not index.isdigit()) or (kind == "cpu" and index not in ("", "0")):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} was asked for but torch sees no CUDA device; use the device cpu "
                             f"(or auto, which takes a GPU when there is one)")
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"device {name!r} does not exist: torch sees {torch.cuda.device_count()} CUDA "
                             f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def pick_device(name=None):
    """Resolve a user's device choice; None or 'auto' takes the GPU when there is one."""
    import torch

    if isinstance(name, torch.device):
        check_device_name(str(name))  # torch.device("cuda") on a machine without CUDA: the same one sentence
        return name
    if name is None or name == "auto":
        return torch.device("cuda" if accelerator_available() else "cpu")
    check_device_name(name)
    return torch.device(name)


def is_accelerator(device) -> bool:
    import torch

    return torch.device(device).type == "cuda"


def default_dtype_for(device):
    """bf16 on GPUs (the official regime); float32 on CPU, where it is the reference for parity."""
    import torch

    return torch.bfloat16 if is_accelerator(device) else torch.float32


def set_threads(num_threads: int | None) -> None:
    if num_threads:
        import torch

        torch.set_num_threads(int(num_threads))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, as the official pipeline does once at start-up."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cpu_generator(seed: int):
    """Noise is drawn on the CPU so that one seed gives one video on every device."""
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed))


def synchronize(device) -> None:
    if is_accelerator(device):
        import torch

        torch.cuda.synchronize(device)


def peak_memory_bytes(device) -> int | None:
    """Peak allocated accelerator memory since the last reset; None on CPU (measure RSS there)."""
    if is_accelerator(device):
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return None


def allocated_memory_bytes(device) -> int | None:
    """Accelerator memory held by live tensors now; None on CPU."""
    if is_accelerator(device):
        import torch

        return int(torch.cuda.memory_allocated(device))
    return None


def free_memory_bytes(device) -> int | None:
    """Memory the accelerator can still hand out (`cudaMemGetInfo`); None on CPU."""
    if is_accelerator(device):
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def reset_peak_memory(device) -> None:
    if is_accelerator(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------------------------- copies
def new_copy_stream(device):
    """A side stream for host-to-device copies that overlap compute; None where streams do not exist."""
    if is_accelerator(device):
        import torch

        return torch.cuda.Stream(device)
    return None


def on_stream(stream):
    """Context manager running the enclosed work on `stream` (a no-op for None)."""
    if stream is None:
        return nullcontext()
    import torch

    return torch.cuda.stream(stream)


def record_copy_done(stream):
    """An event marking the copies issued on `stream` so far; None without streams."""
    if stream is None:
        return None
    import torch

    event = torch.cuda.Event()
    event.record(stream)
    return event


def wait_for_copy(event, device, tensors=()) -> None:
    """Make the compute stream wait for a copy event and tell the allocator it uses `tensors` there."""
    if event is None:
        return
    import torch

    current = torch.cuda.current_stream(device)
    current.wait_event(event)
    for tensor in tensors:
        tensor.record_stream(current)


def host_buffer(tensor):
    """A host-memory copy of `tensor`, pinned when an accelerator exists (so copies to it can overlap)."""
    import torch

    out = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=accelerator_available())
    out.copy_(tensor.detach())
    return out


# The CPU allocator's alignment (c10's gAlignment): tensors torch allocates start on it.
HOST_ALIGNMENT = 64


def _borrows_memory(tensor) -> bool:
    """True for a host tensor whose bytes torch did not allocate (a view into a memory-mapped file) or that
    starts off the allocator's alignment. safetensors hands out such views, 8-byte aligned at best."""
    storage = tensor.untyped_storage()
    return not storage.resizable() or tensor.data_ptr() % HOST_ALIGNMENT != 0


def own_host_storage(module):
    """Re-home every host parameter and buffer of `module` that borrows its memory into storage torch owns.

    Why: the CPU GEMM kernels choose their code path by the operands' alignment and the paths round
    differently, so a model whose weights are views into the mmap'd checkpoint computes other bits than
    the same weights once copied, and offloading copies them (host copies, device copies brought back).
    Owning the storage from load on makes every mode compute with equally aligned weights, so offload
    stays bit-identical to no offload. Device tensors are left alone (their copies are torch's); tied
    tensors stay tied. Returns `module`.
    """
    import torch

    replaced: dict[int, tuple] = {}  # id of a tensor seen -> (it, what its slots hold now): ties kept
    for owner in module.modules():
        for table in (owner._parameters, owner._buffers):
            for name, tensor in list(table.items()):
                if tensor is None or tensor.device.type != "cpu" or tensor.is_meta:
                    continue
                if id(tensor) in replaced:
                    table[name] = replaced[id(tensor)][1]
                    continue
                replaced[id(tensor)] = (tensor, tensor)
                if not _borrows_memory(tensor):
                    continue
                fresh = torch.empty(tensor.shape, dtype=tensor.dtype)  # contiguous, allocator-aligned
                fresh.copy_(tensor.detach())
                if isinstance(tensor, torch.nn.Parameter):
                    tensor.data = fresh  # the Parameter object (and any tie to it) stays
                else:
                    table[name] = fresh
                    replaced[id(tensor)] = (tensor, fresh)
    return module


def distributed_backend_for(device) -> str:
    return "nccl" if is_accelerator(device) else "gloo"


def env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "y", "on", "enabled"}


@contextmanager
def side_stream(device: torch.device | None) -> Iterator[None]:
    """Run the enclosed work on a fresh accelerator stream (so it overlaps the default stream's work), and
    wait for it at the end; nothing on a CPU, where the caller's thread is what overlaps."""
    if device is None or not is_accelerator(device):
        with nullcontext():
            yield
        return
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))  # inputs made on the default stream are ready
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()


def release_accelerator_cache() -> None:
    """Hand the accelerator's cached free blocks back (after a model is deleted, before the next one loads)."""
    import torch

    if accelerator_available():
        torch.cuda.empty_cache()


def bf16_autocast_available(device: torch.device) -> bool:
    """Whether bf16 autocast pays on `device`: GPUs with bf16, CPUs whose native bf16 GEMMs are the fast path."""
    import torch

    device = torch.device(device)
    if is_accelerator(device):
        return bool(torch.cuda.is_bf16_supported())
    from .ops import cpu_paths

    return cpu_paths.half_path(torch.bfloat16).choice == "native"
