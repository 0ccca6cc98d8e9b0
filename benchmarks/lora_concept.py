"""Does a LoRA teach the demo model something new? Train one on a colour it never saw, measure, show frames.

1. writes N synthetic physics clips in which one object is cyan (the demo model knows six other colours),
   captioned by the same describer ("a cyan ball falls and bounces on the floor", ...), in the folder layout
   `magi1 train lora` reads;
2. runs `magi1 train lora` on them (a subprocess, as a user would; skipped when OUT already holds the LoRA);
3. generates the same prompts and seeds with the LoRA at scale 0 (= the base model, bit for bit) and 1, and
   prints per prompt the share of cyan-hue pixels (`hue_fraction`: hue within 15 degrees of the clips' cyan,
   saturated; the stricter RGB distance < 60 beside it), plus a control prompt with a known colour (red);
   writes a PNG contact sheet of frames and an .npz of the uint8 frames per (prompt, scale).

    python benchmarks/lora_concept.py --out /tmp/lora_cyan [--clips 16] [--steps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CYAN_PROMPTS = ("a cyan ball falls and bounces on the floor", "a cyan square falls and bounces on the floor")
CONTROL_PROMPT = "a red ball falls and bounces on the floor"


def train(args, data: Path, lora: Path) -> float:
    command = [sys.executable, "-m", "magi1.cli", "train", "lora", "--config_file", "demo", "--data", str(data),
               "--out", str(lora), "--steps", str(args.steps), "--rank", str(args.rank), "--lr", str(args.lr),
               "--tokens_per_step", str(args.tokens_per_step), "--log_every", "10", "--seed", "0",
               "--checkpoint_every", "50", "--sample_every", str(args.steps), "--sample_steps", "16",
               "--sample_prompt", CYAN_PROMPTS[0]]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.no_checkpointing:
        command.append("--no_gradient_checkpointing")
    print("$", " ".join(command[2:]).replace("magi1.cli", "magi1"), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def fixed_batch_losses(data: Path, lora: Path, batches: int) -> tuple[float, float]:
    """The objective's loss on the training clips with the LoRA at scale 0 and 1, on the same `batches` draws
    of chunks, tasks, noise levels and noise (the training curve's steps each draw their own, so it is noisy).

    The run's own stages read its cache (hits only: no VAE or T5 loads) and build its batches."""
    import json

    import torch

    from magi1.checkpoint.loader import load_dit
    from magi1.lora.adapters import attach_lora, read_lora, set_scale
    from magi1.lora.cli import add_lora_parser, validate_args
    from magi1.lora.run import LoraRun
    from magi1.train.dit_trainer import dit_velocity
    from magi1.train.loop import step_generator
    from magi1.train.losses import masked_mse

    saved = json.loads((lora / "train_args.json").read_text())
    parser = argparse.ArgumentParser()
    add_lora_parser(parser.add_subparsers(dest="what"))
    args = parser.parse_args(["lora", "--data", str(data), "--out", str(lora), "--quiet"])
    for key, value in saved.items():
        if key != "data":
            setattr(args, key, value)
    config = validate_args(args)
    run = LoraRun(args, config, lora)
    planned, layout = run.plan(run.scan())
    captions = [p.item.caption for p in planned]
    run.build_cache(planned, captions, layout)
    model = load_dit(config, device="cpu", dtype=torch.float32)
    attach_lora(model, read_lora(lora), "concept")
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)  # the trainer wants something to train; nothing steps here
    trainer, _ = run.make_trainer(model, planned, captions, captions[:1])
    losses = {0.0: [], 1.0: []}
    with torch.no_grad():
        for index in range(batches):
            batch = trainer.make_batch(step_generator(10_000, index))
            for scale in losses:
                set_scale(model, "concept", scale)
                prediction = dit_velocity(model, batch)
                losses[scale].append(float(masked_mse(prediction.float(), batch.target.float(), batch.frame_weight)))
    return float(np.mean(losses[0.0])), float(np.mean(losses[1.0]))


def contact_sheet(videos: list[np.ndarray], path: Path, frames=(0, 12, 24, 36, 47)) -> None:
    """One row per video, the chosen frames side by side, 2x nearest-neighbour scaled."""
    from PIL import Image

    rows = [np.concatenate([v[min(f, len(v) - 1)] for f in frames], axis=1) for v in videos]
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tokens_per_step", type=int, default=1152)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--gen_steps", type=int, default=16)
    parser.add_argument("--eval_batches", type=int, default=64, help="fixed batches for the base-vs-LoRA loss")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no_checkpointing", action="store_true")
    args = parser.parse_args()

    import torch

    from magi1 import MagiPipeline
    from magi1.lora.synthetic_concept import colour_fraction, hue_fraction, write_concept_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    data, lora = out / "clips", out / "lora"
    if not (data / f"clip_{args.clips - 1:04d}.txt").is_file():
        write_concept_folder(data, args.clips)
    seconds = None
    if not (lora / "adapter_model.safetensors").is_file():
        seconds = train(args, data, lora)

    pipe = MagiPipeline.from_pretrained("demo", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora(lora)
    table = []
    for prompt in CYAN_PROMPTS + (CONTROL_PROMPT,):
        for scale in (0.0, 1.0):
            pipe.set_lora_scale(scale)
            videos = []
            for seed in range(args.seeds):
                result = pipe(prompt, num_frames=48, num_inference_steps=args.gen_steps,
                              generator=torch.Generator().manual_seed(seed), output_type="np")
                videos.append((result.frames[0] * 255).round().astype(np.uint8))
            cyan = [hue_fraction(v, "cyan") for v in videos]
            cyan_rgb = [colour_fraction(v, "cyan") for v in videos]
            red = [hue_fraction(v, "red") for v in videos]
            name = f"{'lora' if scale else 'base'}_{prompt.split()[1]}_{prompt.split()[2]}"
            contact_sheet(videos, out / f"{name}.png")
            np.savez_compressed(out / f"{name}.npz", frames=np.stack(videos))  # (seeds, T, H, W, 3) uint8
            table.append((prompt, scale, cyan, cyan_rgb, red))
            print(f"{prompt!r:52} scale {scale:.0f}: cyan hue {100 * np.mean(cyan):5.2f}% of pixels "
                  f"(per seed {', '.join(f'{100 * c:.2f}' for c in cyan)}; RGB-exact {100 * np.mean(cyan_rgb):.2f}%), "
                  f"red hue {100 * np.mean(red):5.2f}%  -> {out / name}.png", flush=True)

    from magi1.lora.trainer import read_loss_csv

    rows = read_loss_csv(lora / "loss.csv")
    first = np.mean([r["loss"] for r in rows[:20]])
    last = np.mean([r["loss"] for r in rows[-20:]])
    print(f"\nloss: mean of the first 20 steps {first:.4f}, of the last 20 steps {last:.4f} ({len(rows)} steps)")
    base_loss, lora_loss = fixed_batch_losses(data, lora, args.eval_batches)
    print(f"loss on the training clips, the same {args.eval_batches} batches: LoRA scale 0 (base) {base_loss:.4f}, "
          f"scale 1 {lora_loss:.4f}")
    if seconds is not None:  # with the machine it was timed on: the CPU and its bf16 path
        from common import machine_line

        print(f"training (scan, cache, {args.steps} steps, one sample) took {seconds / 60:.1f} min on "
              f"{machine_line()}")
    print("\n| prompt | LoRA scale | cyan-hue pixels (mean of seeds) | cyan RGB-exact | red-hue pixels |\n"
          "|---|---|---|---|---|")
    for prompt, scale, cyan, cyan_rgb, red in table:
        print(f"| {prompt} | {scale:g} | {100 * np.mean(cyan):.2f} % | {100 * np.mean(cyan_rgb):.2f} % | "
              f"{100 * np.mean(red):.2f} % |")
    return 0


if __name__ == "__main__":
    from common import run_main

    run_main(main)
