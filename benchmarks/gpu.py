"""For a GPU machine: the 4.5B DiT with random bf16 weights at 720x720, one window step and one full chunk.

Window step: the steady-state window of 4 chunks (steps 48, 32, 16, 0 of 64; key spans 2, 3, 4, 5 chunks;
4 clean chunks in the KV cache), one conditional forward. Full chunk: everything the sampler runs per
generated chunk once the window is full: one stage = num_steps / window_size forward steps, each with the
three guidance passes (text, no-text writing the cache, unconditional), the first step also re-encoding
the chunk that just finished, plus the Euler updates. FLOPs are counted from every call's arguments.
MFU = achieved FLOP/s / the bf16 GEMM rate measured in the same run; the roofline adds attention at the
measured attention rate.

    python benchmarks/gpu.py [--config 4.5B_base] [--size 720] [--repeat 2]
    python benchmarks/gpu.py --smoke        # a tiny config on the CPU: checks that the script runs
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from common import (FlopCountingModel, clock, dit_call_flops, gemm_rate, machine_line, markdown_table,
                    require_accelerator, run_main, save_section, sdpa_rate, sync, time_it)
from magi1.config import load_config
from magi1.models.dit import MagiDiT
from magi1.models.kv_cache import KVCache
from magi1.models.rope import default_bands
from magi1.runtime import is_accelerator, peak_memory_bytes, pick_device, reset_peak_memory
from magi1.sampling.chunk_plan import plan_forward_steps
from magi1.sampling.guidance import WindowCall, three_pass_velocity
from magi1.sampling.schedule import time_grid

TEXT_TOKENS = 128  # valid caption tokens of the prompt (the null caption has 8)
NULL_TOKENS = 8
SMOKE_MODEL = dict(num_layers=2, hidden_size=256, ffn_hidden_size=512, num_attention_heads=4, num_query_groups=2,
                   kv_channels=64, caption_max_length=32)


def random_bf16_model(config, device, dtype) -> MagiDiT:
    """The DiT built on the meta device, materialised on `device`, filled with small random weights."""
    with torch.device("meta"):
        model = MagiDiT(config.model_config, distill=config.engine_config.distill)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02)
        model.rope.bands.copy_(default_bands(model.rope.bands.shape[0]))
    return model.apply_precision(dtype).eval()


def conditioning(config, chunks: int, device):
    """y (2, chunks, Lc, Ct) and masks (2, chunks, Lc): row 0 a prompt, row 1 the null caption."""
    m = config.model_config
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, chunks, m.caption_max_length, m.caption_channels, generator=g) * 0.1
    masks = torch.zeros(2, chunks, m.caption_max_length)
    masks[0, :, : min(TEXT_TOKENS, m.caption_max_length)] = 1
    masks[1, :, :NULL_TOKENS] = 1
    return y.to(device), masks.to(device)


def steady_stage(config, chunks_total: int):
    """The forward steps of the first stage whose window is full and preceded by a finished chunk."""
    r = config.runtime_config
    plan = plan_forward_steps(chunks_total, r.window_size, r.num_steps, 0, r.noise2clean_kvrange,
                              r.clean_chunk_kvrange)
    stage = r.window_size  # window [1, 1 + window): full, and chunk 0 is re-encoded first
    return [s for s in plan if s.stage == stage]


def run_stage(model, config, steps, latent, y, masks, cache, ctn: int) -> None:
    """The sampler's loop body for `steps`: guidance passes (cfg 3) and the Euler update (no emission)."""
    r = config.runtime_config
    cw = r.chunk_width
    grid = time_grid(r.num_steps, config.engine_config.shortcut_mode).to(latent.device)
    clean_t = torch.tensor([[r.clean_t]], device=latent.device)
    for step in steps:
        first, end = step.slice_point, step.chunk_end
        t = grid[list(step.chunk_steps)][None]
        call_y, call_masks = y[:, step.chunk_start : end], masks[:, step.chunk_start : end]
        if step.extra_clean_chunk:
            t = torch.cat([clean_t, t], dim=1)
            call_y = torch.cat([y[1:2, :1].expand(2, 1, -1, -1), call_y], dim=1)
            call_masks = torch.cat([masks[1:2, :1].expand(2, 1, -1), call_masks], dim=1)
        x = latent[:, :, first * cw : end * cw]
        kv_range = torch.tensor(step.key_ranges(ctn), dtype=torch.int32, device=latent.device)
        call = WindowCall(x=x, t=t, y=call_y, masks=call_masks, kv_range=kv_range, slice_point=first,
                          chunk_width=cw, tokens_per_chunk=ctn, read_cache=step.extra_clean_chunk,
                          extra_clean_chunk=step.extra_clean_chunk)
        with torch.inference_mode():
            velocity = three_pass_velocity(model, call, cache, r)
        k = torch.tensor(step.chunk_steps, device=latent.device)
        dt = (grid[k + 1] - grid[k]).repeat_interleave(cw).view(1, 1, -1, 1, 1)
        window = slice(step.chunk_start * cw, end * cw)
        latent[:, :, window] = x[:, :, -velocity.shape[2] :] + velocity * dt


def fill_cache(model, config, latent, y, masks, chunks: int, ctn: int) -> KVCache:
    """Clean KV of chunks [0, chunks) written by one call, as the sampler's clean passes leave it."""
    r = config.runtime_config
    cache = KVCache((chunks + 8) * ctn, num_layers=config.model_config.num_layers)
    t = torch.full((1, chunks), r.clean_t, device=latent.device)
    spans = torch.tensor([[max(0, i) * ctn, (i + 1) * ctn] for i in range(chunks)], dtype=torch.int32,
                         device=latent.device)
    with torch.inference_mode():
        model(latent[:, :, : chunks * r.chunk_width], t, y[1, :chunks, None], masks[1, :chunks, None], spans,
              null_adaln=True, kv_cache=cache, read_cache=True, write_cache=True)
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="4.5B_base", help="a preset name or an official config JSON")
    parser.add_argument("--size", type=int, default=720, help="square video size in pixels")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="auto", help="default: the accelerator")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 64x64, 8 steps, on the CPU")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config)
    size, device_name = args.size, args.device
    if args.smoke:
        config = config.replace(**{f"model_config.{k}": v for k, v in SMOKE_MODEL.items()},
                                **{"runtime_config.num_steps": 8})
        size, device_name = 64, "cpu"
    config = config.replace(**{"runtime_config.video_size_h": size, "runtime_config.video_size_w": size})
    device = pick_device(device_name)
    if not args.smoke:
        require_accelerator(device, "--smoke runs a tiny configuration on the CPU")
    dtype = torch.bfloat16
    m, r = config.model_config, config.runtime_config
    latent_size, cw = size // 8, r.chunk_width
    ctn = cw * (latent_size // m.patch_size) ** 2
    chunks_total = r.window_size + 2

    model = random_bf16_model(config, device, dtype)
    counter = FlopCountingModel(model)
    y, masks = conditioning(config, chunks_total, device)
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, m.latent_channels, chunks_total * cw, latent_size, latent_size, generator=g).to(device)

    # ---- one window step (dit_step's steady state, at this config)
    window, spans, cached = 4, [2, 3, 4, 5], 4
    step_cache = fill_cache(model, config, latent, y, masks, cached, ctn)
    x = torch.randn(1, m.latent_channels, window * cw, latent_size, latent_size, generator=g).to(device)
    t = torch.tensor([[0.6, 0.3, 0.1, 0.01]], device=device)
    ends = [cached + j + 1 for j in range(window)]
    kv_range = torch.tensor([[(e - s) * ctn, e * ctn] for e, s in zip(ends, spans)], dtype=torch.int32, device=device)
    step_y, step_masks = y[0, :window, None], masks[0, :window, None]

    def window_step():
        with torch.inference_mode():
            model(x, t, step_y, step_masks, kv_range, null_adaln=False, kv_cache=step_cache, slice_point=cached)

    reset_peak_memory(device)
    step_seconds = time_it(window_step, device=device, warmup=1, repeat=args.repeat)
    step_peak = peak_memory_bytes(device)
    del step_cache
    step_mm, step_attn = dit_call_flops(m, tuple(x.shape), window, kv_range, step_masks)

    # ---- one full chunk: a steady stage of the sampler
    steps = steady_stage(config, chunks_total)
    stage_seconds = []
    reset_peak_memory(device)
    for _ in range(args.repeat):
        cache = KVCache(chunks_total * ctn, num_layers=m.num_layers)
        work = latent.clone()
        counter.matmul = counter.attention = 0.0
        sync(device)
        start = clock()
        run_stage(counter, config, steps, work, y, masks, cache, ctn)
        sync(device)
        stage_seconds.append(clock() - start)
        del cache
    stage_seconds = sorted(stage_seconds)[len(stage_seconds) // 2]
    chunk_mm, chunk_attn = counter.matmul, counter.attention

    # ---- the machine's own rates, same run
    # the better of torch's bf16 kernels and float32 ones on widened bf16 values (what magi1 runs on CPUs
    # without bf16 units; on a GPU the native kernels win)
    n = 8192 if is_accelerator(device) else 1024
    gemm = max(gemm_rate(dtype, device, n=n, repeat=3, half_mode=mode) for mode in ("native", "fp32"))
    sdpa = max(sdpa_rate(dtype, device, heads=m.num_attention_heads, kv_heads=m.num_query_groups,
                         head_dim=m.kv_channels, q_len=ctn, k_len=3 * ctn, repeat=3, half_mode=mode)
               for mode in ("native", "fp32"))

    def row(name, seconds, mm, attn, peak):
        flops = mm + attn
        roofline = mm / gemm + attn / sdpa
        return [name, f"{seconds:.3f}", f"{flops / 1e12:.3g}", f"{flops / seconds / 1e12:.3g}",
                f"{100 * flops / seconds / gemm:.1f}%", f"{seconds / roofline:.2f}x",
                "-" if peak is None else f"{peak / 2**30:.1f}"]

    headers = ["work", "seconds", "TFLOP", "TFLOP/s", "MFU (vs bf16 GEMM)", "time / roofline", "peak GiB"]
    rows = [row("window step (1 forward)", step_seconds, step_mm, step_attn, step_peak),
            row(f"full chunk ({len(steps)} steps x 3 passes)", stage_seconds, chunk_mm, chunk_attn,
                peak_memory_bytes(device))]
    label = "smoke (tiny config, CPU)" if args.smoke else f"{args.config}"
    body = (f"{machine_line()}\n\n`python benchmarks/gpu.py{' --smoke' if args.smoke else ''}`: {label}, random "
            f"bf16 weights, {size}x{size} ({ctn} tokens per chunk), {m.num_layers} layers. Measured rates: bf16 GEMM "
            f"{gemm / 1e12:.3g} TFLOP/s, attention {sdpa / 1e12:.3g} TFLOP/s.\n\n{markdown_table(headers, rows)}")
    print(body)
    if not args.no_save and not args.smoke:
        save_section("GPU: 4.5B at 720x720", body)


if __name__ == "__main__":
    run_main(main)
