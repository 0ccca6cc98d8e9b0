"""The memory planner: where each weight and cache block lives, and what that costs at the peak.

A pure function of the config, the video size, the frames, the window, the dtypes, the offload mode and
the memory there is: it reads no weights and touches no device. `plan_memory` prices one placement;
`plan_every_mode` prices them all; `choose_plan` takes the fastest that fits the free memory, or raises
`MemoryPlanError` with the numbers when none does.

Placements (fastest first):
  none    every component on the device for the whole run
  model   the DiT's layers on the device only while the DiT runs, the VAE only while it encodes or
          decodes, a device T5 only while it encodes; they wait in host memory otherwise (the DiT's
          embedders and final layer stay)
  blocks  as model, and the DiT's transformer layers themselves wait in (pinned) host memory: at most k
          consecutive layers are on the device, the next ones copied in ahead of use
`kv_offload` (the official configs set it) puts the KV cache rows in host memory in every mode; the
device then holds only the rows one layer reads back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch

from ..config import MagiConfig
from ..errors import InputError
from .sizes import (
    OFFICIAL_VAE_PARAMETERS,
    T5_XXL_DIMS,
    dit_activation_bytes,
    dit_weights,
    dtype_bytes,
    kv_row_bytes,
    latent_state_bytes,
    t5_parameters,
    vae_decode_bytes,
    window_shape,
)

from .modes import DEFAULT_BLOCKS_ON_DEVICE, OFFLOAD_MODES, WEIGHT_FORMATS  # noqa: F401  (re-exported)

GIB = 1024**3


class MemoryPlanError(InputError):
    """No placement fits the memory there is (the message gives the numbers)."""


@dataclass(frozen=True)
class RunShape:
    """The per-run values memory depends on."""

    height: int
    width: int
    num_frames: int
    window_size: int
    batch: int = 1

    @classmethod
    def from_config(cls, config: MagiConfig, **overrides) -> "RunShape":
        r = config.runtime_config
        values = dict(height=r.video_size_h, width=r.video_size_w, num_frames=r.num_frames, window_size=r.window_size)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class Components:
    """Bytes of the parts that are not the DiT (defaults: the official T5-XXL and VAE)."""

    t5_parameters: int = t5_parameters(**T5_XXL_DIMS)
    t5_dtype: torch.dtype = torch.float32  # the official T5 runs in float32
    vae_parameters: int = OFFICIAL_VAE_PARAMETERS
    vae_width: int = 1024

    def t5_bytes(self) -> int:
        return self.t5_parameters * dtype_bytes(self.t5_dtype)

    def vae_bytes(self, dtype: torch.dtype) -> int:
        return self.vae_parameters * dtype_bytes(dtype)


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted bytes of one placement. `device_*` are on the accelerator, `host_*` in CPU memory."""

    mode: str
    blocks_on_device: int | None
    kv_offload: bool
    fp8: bool
    dit_resident: int           # DiT weights on the device while it runs (what a residency count finds)
    dit_total: int
    kv_cache: int               # at its fullest, wherever it lives
    dit_activations: int        # the largest window step, beyond weights and cache
    latents: int
    vae_weights: int
    vae_decode: int
    t5_weights: int
    t5_on_device: bool
    peak_device: int
    peak_host: int
    phases: dict = field(default_factory=dict, compare=False)  # device bytes of each phase

    @property
    def label(self) -> str:
        return f"blocks (k={self.blocks_on_device})" if self.mode == "blocks" else self.mode

    def fits(self, free_device: int | None, free_host: int | None = None) -> bool:
        ok_device = free_device is None or self.peak_device <= free_device
        ok_host = free_host is None or self.peak_host <= free_host
        return ok_device and ok_host

    def describe(self) -> str:
        kv_where = "host" if self.kv_offload else "device"
        return (f"memory plan: offload {self.label}, weights {'fp8' if self.fp8 else 'bf16/fp32'}, KV cache on "
                f"{kv_where}: peak device {format_bytes(self.peak_device)} (DiT weights "
                f"{format_bytes(self.dit_resident)}, KV {format_bytes(self.kv_cache if not self.kv_offload else 0)}, "
                f"activations {format_bytes(self.dit_activations)}), peak host {format_bytes(self.peak_host)}")


def format_bytes(n: int) -> str:
    if n >= GIB / 10:
        return f"{n / GIB:.2f} GiB"
    # Below 0.1 MiB in KiB: `--memory 1KB` read "0.0 MiB free on the device"
    return f"{n / 1024**2:.1f} MiB" if n >= 1024**2 / 10 else f"{n / 1024:.1f} KiB"


_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": GIB, "gb": GIB, "gib": GIB, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_memory(text: str) -> int:
    """'12GB', '12 GiB', '800MB', '1.5g', '123456B' -> bytes (binary units: a GB here is a GiB).

    A unit is required: a bare "12" is far more often 12 GB meant than 12 bytes, so it is refused, not guessed.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise InputError(f"cannot read {text!r} as an amount of memory; write e.g. 12GB or 800MB")
    if not match.group(2) and float(match.group(1)) > 0:  # "0" is refused below as no memory, not as unitless
        raise InputError(f"memory {text!r} needs a unit: write e.g. {match.group(1)}GB or {match.group(1)}MB")
    amount = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if amount <= 0:
        raise InputError(f"memory {text!r} is no memory at all; give the free amount, e.g. 12GB")
    return amount


def uses_fp8(config: MagiConfig, weights: str = "auto") -> bool:
    if weights not in WEIGHT_FORMATS:
        raise InputError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    if weights == "bf16" and config.engine_config.fp8_quant:
        raise InputError(FP8_CHECKPOINT_NOT_BF16)
    return config.engine_config.fp8_quant or weights == "fp8"


# bf16 asked of an fp8 checkpoint was taken silently (the plan and the run kept fp8 weights).
FP8_CHECKPOINT_NOT_BF16 = ("weights bf16 asks for bf16 weights, but this config's checkpoint is stored in fp8 "
                           "(engine_config.fp8_quant): use the variant without _quant, or weights auto")


def plan_memory(config: MagiConfig, shape: RunShape | None = None, *, dtype: torch.dtype = torch.bfloat16,
                offload: str = "none", blocks_on_device: int = DEFAULT_BLOCKS_ON_DEVICE,
                kv_offload: bool | None = None, weights: str = "auto", components: Components | None = None,
                t5_on_device: bool | None = None, accelerator: bool = True,
                materialised_scores: bool = False) -> MemoryPlan:
    """Predict the peak device and host memory of one generation under one placement.

    dtype: the compute and weight dtype (float32 islands are counted as such). kv_offload: None follows
    engine_config.kv_offload. weights: "fp8" quantises the transformer layers as the *_quant checkpoints
    are. t5_on_device: None follows runtime_config.t5_device. accelerator: count activations as the GPU
    kernels allocate them (False: as the CPU path does, which is what the tiny-model tests measure).
    """
    if offload not in OFFLOAD_MODES:
        raise InputError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    shape = shape or RunShape.from_config(config)
    components = components or Components()
    fp8 = uses_fp8(config, weights)
    kv_offload = config.engine_config.kv_offload if kv_offload is None else bool(kv_offload)
    t5_on_device = (config.runtime_config.t5_device != "cpu") if t5_on_device is None else bool(t5_on_device)

    weights_ = dit_weights(config, dtype, fp8)
    window = window_shape(config, height=shape.height, width=shape.width, num_frames=shape.num_frames,
                          window_size=shape.window_size)
    kv = window.peak_cached_chunks * window.tokens_per_chunk * kv_row_bytes(config, dtype) \
        * config.model_config.num_layers * shape.batch
    activations = dit_activation_bytes(config, window, dtype, batch=shape.batch, accelerator=accelerator,
                                       materialised_scores=materialised_scores)
    latents = latent_state_bytes(config, window, height=shape.height, width=shape.width, batch=shape.batch)
    vae = components.vae_bytes(dtype)
    vae_act = vae_decode_bytes(config, height=shape.height, width=shape.width, dtype=dtype,
                               vae_width=components.vae_width)
    t5 = components.t5_bytes()

    k = blocks_on_device if offload == "blocks" else None
    if offload == "blocks" and (not isinstance(k, int) or k < 1):
        raise InputError(f"blocks_on_device must be a whole number >= 1, got {blocks_on_device!r}")
    dit_resident = weights_.resident_with_blocks(k) if offload == "blocks" else weights_.total
    kv_device = 0 if kv_offload else kv

    everything = offload == "none"
    t5_dev = t5 if t5_on_device else 0
    # While another component runs, the DiT keeps its non-layer parts on the device (and, for blocks, the
    # k - 1 layers its last layer prefetched for the next call: 0 .. k-2); offloaded, the VAE is there only
    # while it encodes or decodes.
    dit_idle = weights_.total if everything else weights_.other_bytes
    if offload == "blocks":
        dit_idle += sum(weights_.layer_bytes[: k - 1])
    vae_idle = vae if everything else 0
    phases = {
        "text": t5_dev + dit_idle + vae_idle,
        "denoise": dit_resident + kv_device + activations + latents + vae_idle + (t5_dev if everything else 0),
        "decode": vae + vae_act + kv_device + latents + dit_idle + (t5_dev if everything else 0),
    }
    peak_device = max(phases.values())

    # Host: what waits there (offloaded components, every DiT layer for blocks mode), the cached rows
    # with kv_offload, and a CPU-resident T5.
    host = 0 if t5_on_device and everything else t5
    if not everything:
        host += weights_.total + vae
    if kv_offload:
        host += kv
    return MemoryPlan(offload, k, kv_offload, fp8, dit_resident, weights_.total, kv, activations, latents, vae,
                      vae_act, t5, t5_on_device, peak_device, host, phases)


def plan_every_mode(config: MagiConfig, shape: RunShape | None = None, *, block_counts=(1, DEFAULT_BLOCKS_ON_DEVICE),
                    **kwargs) -> list[MemoryPlan]:
    """One plan per placement, fastest first: none, model, then blocks with the larger k first."""
    plans = [plan_memory(config, shape, offload="none", **kwargs), plan_memory(config, shape, offload="model", **kwargs)]
    for k in sorted(set(block_counts), reverse=True):
        plans.append(plan_memory(config, shape, offload="blocks", blocks_on_device=k, **kwargs))
    return plans


def choose_plan(config: MagiConfig, shape: RunShape | None = None, *, free_device: int | None,
                free_host: int | None = None, max_blocks_on_device: int | None = None, **kwargs) -> MemoryPlan:
    """The fastest placement whose peak fits; blocks mode takes the largest k that fits, up to
    max_blocks_on_device when given.

    Raises MemoryPlanError naming the smallest peak there is when nothing fits.
    """
    base = plan_memory(config, shape, offload="none", **kwargs)
    if base.fits(free_device, free_host):
        return base
    model = plan_memory(config, shape, offload="model", **kwargs)
    if model.fits(free_device, free_host):
        return model
    layers = config.model_config.num_layers
    smallest = None
    for k in range(min(layers, max_blocks_on_device or layers), 0, -1):
        plan = plan_memory(config, shape, offload="blocks", blocks_on_device=k, **kwargs)
        if plan.fits(free_device, free_host):
            return plan
        smallest = plan
    need = f"{format_bytes(smallest.peak_device)} of device memory and {format_bytes(smallest.peak_host)} of host memory"
    have = [f"{format_bytes(free_device)} free on the device" if free_device is not None else None,
            f"{format_bytes(free_host)} free in host memory" if free_host is not None else None]
    # The advice follows what is short: a smaller window does little for host memory, which holds every
    # DiT weight (and a CPU T5) once the DiT is offloaded.
    device_short = free_device is not None and smallest.peak_device > free_device
    advice = ["lower the size, the frames or the window (window_size 1 keeps one chunk in flight)"] if device_short \
        else ["host memory is what is short: free some"]
    if not smallest.fp8:
        advice.append("use fp8 weights (--weights fp8)")
    raise MemoryPlanError(
        f"this run does not fit: even block offload with one layer on the device needs {need}, and there is "
        f"{' and '.join(h for h in have if h)}; {', or '.join(advice)}")


def with_window(shape: RunShape, window_size: int) -> RunShape:
    return replace(shape, window_size=window_size)
