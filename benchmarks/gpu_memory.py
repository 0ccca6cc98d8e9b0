"""Measured peak memory and speed of each offload mode, with the planner's prediction beside it.

    python benchmarks/gpu_memory.py                      # GPU: 4.5B at 720x720, random weights, bf16
    python benchmarks/gpu_memory.py --config 4.5B_distill_quant
    python benchmarks/gpu_memory.py --tiny               # CPU (or anywhere): a tiny model, seconds

The DiT runs the sampler's whole chunk loop (4 chunks, `--steps` steps per chunk, the config's window) once
per mode: none, blocks k=2 and k=1 (model offload equals none while the DiT runs). Measured peak:
`torch.cuda.max_memory_allocated` on a GPU, the CPU allocator's counter (torch profiler) plus the resident
weights on the CPU. Predicted: the planner's denoising phase without the VAE (this script runs no VAE).
Measures and prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from common import machine_line, require_accelerator, run_main  # noqa: E402
from magi1.config import MagiConfig, load_config  # noqa: E402
from magi1.memory.measure import measure_denoising  # noqa: E402
from magi1.memory.offload import LayerStreamer, resident_bytes  # noqa: E402
from magi1.memory.planner import RunShape, format_bytes, plan_memory  # noqa: E402
from magi1.models.dit import MagiDiT  # noqa: E402
from magi1.runtime import is_accelerator, pick_device, synchronize  # noqa: E402
from magi1.testing import random_dit_state, tiny_config_dict  # noqa: E402

MODES = (("none", None), ("blocks", 2), ("blocks", 1))


def build_model(config: MagiConfig, dtype: torch.dtype) -> MagiDiT:
    """Random weights in the official dtypes (fp8 layers for *_quant configs), on the CPU."""
    e = config.engine_config
    if config.model_config.num_layers <= 4:
        model = MagiDiT(config.model_config, distill=e.distill, fp8_quant=e.fp8_quant)
        model.load_state_dict(random_dit_state(config.model_config, distill=e.distill), strict=not e.fp8_quant)
    else:
        model = MagiDiT(config.model_config, distill=e.distill, fp8_quant=e.fp8_quant)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dtype.is_floating_point and p.element_size() > 1 and "scale" not in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.apply_precision(dtype)


def run_mode(model: MagiDiT, config: MagiConfig, mode: str, k: int | None, device: torch.device,
             inputs: tuple, shape: RunShape, dtype: torch.dtype) -> list:
    streamer = None
    if mode == "blocks":
        streamer = LayerStreamer(model.videodit_blocks.layers, device, k)
    model.to(device)
    y, masks, noise = (t.to(device) for t in inputs)
    resident = resident_bytes(model)
    synchronize(device)
    start = time.perf_counter()
    result = measure_denoising(model, config, y, masks, noise=noise,
                               offload_device=torch.device("cpu") if config.engine_config.kv_offload else None)
    seconds = time.perf_counter() - start
    if streamer is not None:
        streamer.remove()
    model.to("cpu")
    steps = result["steps"]
    measured = result["peak_bytes"] + (0 if is_accelerator(device) else resident)
    plan = plan_memory(config, shape, dtype=dtype, offload=mode, blocks_on_device=k or 2,
                       accelerator=is_accelerator(device))
    predicted = plan.dit_resident + (0 if plan.kv_offload else plan.kv_cache) + plan.dit_activations + plan.latents
    label = plan.label
    return [label, format_bytes(predicted), format_bytes(measured), f"{measured / predicted:.2f}",
            f"{seconds / steps:.3f}", result["chunks"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="4.5B_base")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (what CI runs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=4, help="steps per chunk (a multiple of the window)")
    parser.add_argument("--size", type=int, default=720)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if not args.tiny:
        require_accelerator(device, "--tiny runs a tiny random model anywhere")
    if args.tiny:
        data = tiny_config_dict(height=64, width=64, num_frames=96, num_steps=2, window_size=2, distill=True)
        data["model_config"]["num_layers"] = 4
        config, size = MagiConfig.from_dict(data), 64
        dtype = torch.float32 if not is_accelerator(device) else torch.bfloat16
    else:
        config, size = load_config(args.config), args.size
        config = config.replace(num_steps=args.steps, video_size_h=size, video_size_w=size)
        dtype = torch.bfloat16
    r, m = config.runtime_config, config.model_config
    shape = RunShape(size, size, r.num_frames, r.window_size)
    chunks = -(-(r.num_frames // 4) // r.chunk_width)
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(2, chunks, m.caption_max_length, m.caption_channels, generator=gen)
    masks = torch.zeros(2, chunks, m.caption_max_length, dtype=torch.long)
    masks[:, :, :32] = 1
    noise = torch.randn(1, m.latent_channels, chunks * r.chunk_width, size // 8, size // 8, generator=gen)
    model = build_model(config, dtype)
    print(machine_line())  # the CPU and its bf16 path, or the GPU: which machine the table below is from
    print(f"{args.config if not args.tiny else 'tiny'}: {size}x{size}, {r.num_frames} frames, window {r.window_size}, "
          f"{r.num_steps} steps, {str(dtype).replace('torch.', '')}, {device}, kv_offload "
          f"{config.engine_config.kv_offload}")
    rows, reference = [], None
    for mode, k in MODES:
        row = run_mode(model, config, mode, k, device, (y, masks, noise), shape, dtype)
        chunks_out = row.pop()
        same = "yes" if reference is None else ("yes" if all(torch.equal(a, b) for a, b in zip(reference, chunks_out))
                                                 else "NO")
        reference = reference or chunks_out
        rows.append(row + [same])
    header = ["mode", "predicted peak", "measured peak", "measured/predicted", "s per window step", "same output"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in [header] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    return 0


if __name__ == "__main__":
    run_main(main)
