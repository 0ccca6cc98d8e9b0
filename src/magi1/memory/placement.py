"""Put a pipeline's weights where an offload mode says, and choose the mode for `--offload auto`.

The plan comes from `planner`; this module obeys it: `enable_offload(pipe, "model" | "blocks")` parks the
DiT's layers in host memory (`offload.HostCopies`) and hooks them so they come in to run; the VAE waits
in host memory too and comes in to encode or decode; a T5 on the device leaves it after each encode.
"""

from __future__ import annotations

import logging

import torch

from ..errors import InputError
from .offload import ComponentSwapper, LayerStreamer
from .planner import (
    DEFAULT_BLOCKS_ON_DEVICE,
    OFFLOAD_MODES,
    Components,
    MemoryPlan,
    RunShape,
    choose_plan,
    plan_memory,
)
from .sizes import t5_parameters

logger = logging.getLogger(__name__)

NO_OFFLOAD_UNDER_TORCHRUN = ("weight offload runs in one process; under torchrun each rank keeps its own share "
                             "on its device: drop the offload, or split the layers with engine_config.pp_size")


def disable_offload(pipe) -> None:
    """Bring everything back to the compute device and remove the hooks."""
    for part in getattr(pipe, "_offload_parts", ()):
        part.remove()
    pipe._offload_parts = []
    pipe.offload_mode = "none"


def enable_offload(pipe, mode: str, *, blocks_on_device: int | None = DEFAULT_BLOCKS_ON_DEVICE,
                   device: torch.device | str | None = None) -> None:
    """Switch `pipe` to an offload mode ("none", "model" or "blocks"); outputs do not change.

    blocks_on_device None (not given) is DEFAULT_BLOCKS_ON_DEVICE."""
    if blocks_on_device is None:
        blocks_on_device = DEFAULT_BLOCKS_ON_DEVICE
    # Checked before anything moves (a bad k used to fail half-way, after the old offload was removed); a bool
    # is no count (True ran as k=1).
    if mode == "blocks" and (isinstance(blocks_on_device, bool) or not isinstance(blocks_on_device, int)
                             or blocks_on_device < 1):
        raise InputError(f"blocks_on_device must be a whole number >= 1, got {blocks_on_device!r}")
    if mode not in OFFLOAD_MODES:
        raise InputError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {mode!r}")
    if getattr(pipe, "parallel", None) is not None and mode != "none":
        raise InputError(NO_OFFLOAD_UNDER_TORCHRUN)
    disable_offload(pipe)
    compute = torch.device(device) if device is not None else torch.device(pipe.device)
    if mode == "none":
        pipe.dit.to(compute)
        if pipe.vae is not None:
            pipe.vae.to(compute)
        return
    swapper = ComponentSwapper(compute)
    parts = [swapper]
    if mode == "model":
        # The transformer layers are 99% of the DiT; its embedders (the null caption the pipeline reads
        # before the first call among them) and final layer stay on the device.
        swapper.add_module("dit", pipe.dit.videodit_blocks, called_as=pipe.dit)
    else:
        parts.append(LayerStreamer(pipe.dit.videodit_blocks.layers, compute, blocks_on_device))
        # The streamer places the layers; a DiT call only sends the VAE back to host memory.
        swapper.add_module("dit", pipe.dit.videodit_blocks, called_as=pipe.dit, park=False)
    pipe.dit.to(compute)  # what is left: everything but the parked layers (placeholders move for free)
    if pipe.vae is not None:  # the VAE (1.2 GB in bf16) comes in to encode or decode; the DiT's layers leave
        swapper.add_module("vae", pipe.vae, methods=("encode", "decode", "posterior"))
    _unload_text_encoder_after_use(pipe.text_encoder)
    pipe._offload_parts = parts
    pipe.offload_mode = mode
    pipe.blocks_on_device = blocks_on_device if mode == "blocks" else None


def _unload_text_encoder_after_use(encoder) -> None:
    """A T5 on the accelerator leaves it after each encode (reloaded on the next new prompt; cached ones
    never run it again), as the official OFFLOAD_T5_CACHE does."""
    from ..runtime import is_accelerator

    if encoder is None or not is_accelerator(getattr(encoder, "device", "cpu")) or hasattr(encoder, "_offload_run"):
        return
    run = encoder._run_t5

    def run_then_unload(prompt):
        try:
            return run(prompt)
        finally:
            encoder.unload()

    encoder._offload_run = run
    encoder._run_t5 = run_then_unload


def components_for(config) -> Components:
    """The T5 and VAE sizes of the folders the config names, where they can be read; else the official ones."""
    import json

    found = {}
    try:
        from ..models.vae import ViTVAE, load_vae_config

        vae_config = load_vae_config(config.resolve_path(config.runtime_config.vae_pretrained))
        with torch.device("meta"):
            vae = ViTVAE(vae_config)
        found.update(vae_parameters=sum(p.numel() for p in vae.parameters()), vae_width=vae_config.embed_dim)
    except Exception:  # noqa: BLE001 - not downloaded yet (or not readable): plan with the official VAE
        pass
    try:
        from ..models.text_encoder import resolve_t5_folder

        folder = resolve_t5_folder(config.resolve_path(config.runtime_config.t5_pretrained))
        t5 = json.loads((folder / "config.json").read_text())
        found["t5_parameters"] = t5_parameters(t5["d_model"], t5["d_ff"], t5["num_layers"], t5["num_heads"],
                                               t5["d_kv"], t5["vocab_size"])
    except Exception:  # noqa: BLE001 - likewise: the official T5-XXL
        pass
    return Components(**found)


def plan_for_run(config, *, device: torch.device, dtype: torch.dtype | None, offload: str,
                 blocks_on_device: int | None = None, free_device: int | None = None,
                 weights: str = "auto") -> MemoryPlan:
    """The plan a generation runs with: the one asked for, or for "auto" the fastest that fits.

    blocks_on_device: k for "blocks" (None: DEFAULT_BLOCKS_ON_DEVICE); for "auto", the most layers block
    offload may keep on the device when it is picked (None: as many as fit).

    Raises planner.MemoryPlanError (one sentence with the numbers) when "auto" finds nothing that fits.
    """
    from ..runtime import default_dtype_for, free_memory_bytes, is_accelerator

    # Said before any weights load (it came after every rank had loaded the whole model).
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        raise InputError(NO_OFFLOAD_UNDER_TORCHRUN)
    dtype = dtype or default_dtype_for(device)
    shape = RunShape.from_config(config)
    kwargs = dict(dtype=dtype, accelerator=is_accelerator(device), weights=weights, components=components_for(config))
    if offload == "auto":
        free = free_device if free_device is not None else free_memory_bytes(device)
        return choose_plan(config, shape, free_device=free, max_blocks_on_device=blocks_on_device, **kwargs)
    k = DEFAULT_BLOCKS_ON_DEVICE if blocks_on_device is None else blocks_on_device
    return plan_memory(config, shape, offload=offload, blocks_on_device=k, **kwargs)
