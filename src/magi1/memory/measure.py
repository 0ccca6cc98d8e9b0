"""Measured memory: the allocator's own counters, on the accelerator and on the CPU.

On an accelerator the caching allocator keeps a peak (`runtime.peak_memory_bytes`). The CPU allocator
keeps none, but torch's profiler records every allocation and free with the running total of bytes
allocated since it started, so the largest total is the peak above the starting point, exact to the byte.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

import torch

from ..models.kv_cache import KVCache
from ..runtime import allocated_memory_bytes, is_accelerator, peak_memory_bytes, reset_peak_memory, synchronize


def _cpu_peak_above_start(fn: Callable[[], Any]) -> tuple[Any, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    handle, path = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    return result, max([0] + totals)


def peak_bytes_during(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int]:
    """Run fn and return (its result, peak bytes allocated on `device` above what was there before)."""
    device = torch.device(device)
    if not is_accelerator(device):
        return _cpu_peak_above_start(fn)
    synchronize(device)
    before = allocated_memory_bytes(device)
    reset_peak_memory(device)
    result = fn()
    synchronize(device)
    return result, int(peak_memory_bytes(device)) - int(before)


class PeakTrackingCache(KVCache):
    """A KVCache that remembers its largest byte count, taken at every write (the peak lies inside a call)."""

    peak_bytes = 0

    def write(self, layer, start, kv):
        super().write(layer, start, kv)
        self.peak_bytes = max(self.peak_bytes, self.nbytes())


def measure_denoising(model, config, y: torch.Tensor, masks: torch.Tensor, *, noise: torch.Tensor,
                      offload_device: torch.device | None = None) -> dict:
    """Run the whole chunk loop once; return its allocator peak, the KV cache's peak and the chunks.

    y, masks, noise already on the model's device (they are not part of the measured peak).
    """
    from ..sampling.sampler import sample_chunks

    device = y.device
    cache = PeakTrackingCache(noise.shape[2] * 10**6, num_layers=config.model_config.num_layers,
                              offload_device=offload_device)

    steps = []

    def run():
        return [c for c in sample_chunks(model, config, y, masks, noise, kv_cache=cache, progress=False,
                                         callback=lambda step, latent: steps.append(step.index))]

    chunks, peak = peak_bytes_during(run, device)
    return {"peak_bytes": peak, "kv_peak_bytes": cache.peak_bytes, "chunks": chunks, "steps": len(steps)}
