"""The one place that picks devices, dtypes, threads and seeds.

No other module names a device type as a string: they ask this module.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np
import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "torch.float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "torch.bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "torch.float16": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map 'bf16', 'bfloat16', 'torch.bfloat16', ... to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The official JSON spelling of a dtype, e.g. 'torch.bfloat16'."""
    return str(dtype)


def accelerator_available() -> bool:
    return torch.cuda.is_available()


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """Resolve a user's device choice; None or 'auto' takes the GPU when there is one."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        return torch.device("cuda" if accelerator_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not accelerator_available():
        raise RuntimeError(f"device {name!r} was asked for but torch sees no CUDA device; use --device cpu")
    return device


def is_accelerator(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


def default_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (the official regime); float32 on CPU, where it is the reference for parity."""
    return torch.bfloat16 if is_accelerator(device) else torch.float32


def set_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(int(num_threads))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, as the official pipeline does once at start-up."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cpu_generator(seed: int) -> torch.Generator:
    """Noise is drawn on the CPU so that one seed gives one video on every device."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def synchronize(device: torch.device) -> None:
    if is_accelerator(device):
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak allocated accelerator memory since the last reset; None on CPU (measure RSS there)."""
    if is_accelerator(device):
        return int(torch.cuda.max_memory_allocated(device))
    return None


def reset_peak_memory(device: torch.device) -> None:
    if is_accelerator(device):
        torch.cuda.reset_peak_memory_stats(device)


def distributed_backend_for(device: torch.device) -> str:
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
