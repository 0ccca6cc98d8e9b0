"""VAE encode and decode: frames per second and peak memory, tiled (the official tile processor) and untiled.

Random weights (the speed does not depend on them). Configs: `small` (embed 256, depth 4, a CPU-sized
stand-in) and `official` (the released VAE's shapes: embed 1024, depth 24, 16 heads). Every (mode,
direction) runs in its own process so that its peak RSS is its own; on an accelerator the peak allocated
device memory is reported too.

    python benchmarks/vae.py [--config small|official] [--size 384] [--frames 24] [--dtype fp32] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from common import (clock_name, machine_line, markdown_table, peak_rss_mb, run_isolated, save_section, sync,
                    time_it)

CONFIGS = {
    "small": dict(embed_dim=256, depth=4, num_heads=4),
    "official": dict(embed_dim=1024, depth=24, num_heads=16),
}


def build_vae(config_name: str, dtype: torch.dtype, device):
    from magi1.models.vae import VAEConfig, ViTVAE

    config = VAEConfig(video_size=256, video_length=16, patch_size=8, patch_length=4, in_chans=3, z_chans=16,
                       double_z=True, mlp_ratio=4.0, qkv_bias=True, ln_in_attn=True, conv_last_layer=True,
                       **CONFIGS[config_name])
    return ViTVAE(config).init_weights(seed=0).to(device=device, dtype=dtype).eval()


def worker(config_name: str, mode: str, direction: str, size: int, frames: int, dtype_name: str, repeat: int,
           device_name: str) -> dict:
    from magi1.models.vae_tiling import TileSettings, encoded_frame_count, tiled_decode, tiled_encode
    from magi1.runtime import parse_dtype, peak_memory_bytes, pick_device, reset_peak_memory

    device = pick_device(device_name)
    dtype = parse_dtype(dtype_name)
    vae = build_vae(config_name, dtype, device)
    g = torch.Generator().manual_seed(0)
    settings = TileSettings()
    if direction == "encode":
        data = (torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1).to(device=device, dtype=dtype)
        run = (lambda: tiled_encode(vae, data, settings)) if mode == "tiled" else (lambda: vae.encode(data))
        out_frames = frames
    else:
        latents = encoded_frame_count(frames, settings)
        data = torch.randn(1, 16, latents, size // 8, size // 8, generator=g).to(device=device, dtype=dtype)
        run = (lambda: tiled_decode(vae, data, settings)) if mode == "tiled" else (lambda: vae.decode(data))
        out_frames = None
    reset_peak_memory(device)
    with torch.inference_mode():
        result = run()
        sync(device)
        if out_frames is None:
            out_frames = result.shape[2]
        seconds = time_it(run, device=device, warmup=0, repeat=repeat)
    device_peak = peak_memory_bytes(device)
    return dict(seconds=seconds, frames=out_frames, peak_rss_mb=peak_rss_mb(),
                device_peak_mb=None if device_peak is None else device_peak / 2**20)


HEADERS = ["mode", "direction", "frames", "seconds", "frames/s", "peak RSS MB", "peak device MB"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--size", type=int, default=384, help="square frame size in pixels (multiple of 8)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=["tiled", "untiled"], choices=["tiled", "untiled"])
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "DIRECTION"), help=argparse.SUPPRESS)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    common_args = ["--config", args.config, "--size", str(args.size), "--frames", str(args.frames),
                   "--dtype", args.dtype, "--repeat", str(args.repeat), "--device", args.device]
    if args.worker:
        mode, direction = args.worker
        print(json.dumps(worker(args.config, mode, direction, args.size, args.frames, args.dtype, args.repeat,
                                args.device)))
        return
    rows = []
    for mode in args.modes:
        for direction in ("encode", "decode"):
            r = run_isolated([__file__, "--worker", mode, direction, *common_args])
            device_peak = "-" if r["device_peak_mb"] is None else f"{r['device_peak_mb']:.0f}"
            rows.append([mode, direction, r["frames"], f"{r['seconds']:.2f}", f"{r['frames'] / r['seconds']:.2f}",
                         f"{r['peak_rss_mb']:.0f}", device_peak])
            print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    c = CONFIGS[args.config]
    body = (f"{machine_line()}\n\n`python benchmarks/vae.py --config {args.config} --size {args.size} --frames "
            f"{args.frames} --dtype {args.dtype}`: ViT VAE ({args.config}: embed {c['embed_dim']}, depth {c['depth']}, "
            f"{c['num_heads']} heads), {args.frames} frames of {args.size}x{args.size}, random weights; tiled = "
            f"official 256 px tiles (stride 192) x 12 frames; {clock_name()}, median of {args.repeat}; one process "
            f"per row.\n\n{markdown_table(HEADERS, rows)}")
    print(body)
    if not args.no_save:
        save_section("VAE encode / decode", body)


if __name__ == "__main__":
    sys.exit(main())
