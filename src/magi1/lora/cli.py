"""`magi1 train lora`: LoRA adapters (or full fine-tuning) of a MAGI-1 DiT on a folder of captioned clips.

    magi1 train lora --config_file 4.5B_base --data my_clips/ --out my_lora/
    magi1 generate --config_file 4.5B_base --lora my_lora/ --prompt "..."

Stages: scan the folder (every unusable file is listed) → memory plan → cache VAE latents and T5 embeddings
(only what is missing; both models freed afterwards) → load the DiT, add adapters → train (progress bar, loss
log, loss-curve PNG, samples every N steps, resumable: run the same command again) → write the LoRA.

OUT/ holds: adapter_config.json + adapter_model.safetensors (the LoRA), loss.csv (every step), loss_log.txt,
loss.png, samples/, state/ (resumable state), cache/ (unless --cache_dir), dataset_report.txt, train_args.json.
With --full: OUT/inference_weight/ (the whole DiT, official layout) and OUT/config.json instead of the adapter.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from ..arg_types import non_negative_float, non_negative_int, positive_float, positive_int
from ..errors import InputError

logger = logging.getLogger(__name__)

STATE_DIR = "state"
SETTINGS_FILE = "train_args.json"
# Settings that shape the trained weights: a resumed run must keep them (others may change between runs).
RUN_DEFINING = ("config_file", "data", "rank", "alpha", "dropout", "target_modules", "full", "steps", "lr",
                "warmup", "weight_decay", "seed", "tokens_per_step", "grad_accum", "max_chunks", "clip_chunks",
                "max_segments", "resolution", "task_mix", "caption_dropout")


def add_lora_parser(subparsers) -> None:
    p = subparsers.add_parser("lora", help="train LoRA adapters (or the whole DiT) on your own captioned clips",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", default="demo", help="official config JSON or preset (4.5B_base, demo, ...)")
    p.add_argument("--data", required=True, help="folder of videos / images, each with a same-name .txt caption or a row in a metadata.jsonl / metadata.csv (file_name, text)")
    p.add_argument("--out", required=True, help="folder the LoRA (and the run's state, cache, samples) goes into")
    g = p.add_argument_group("adapters")
    g.add_argument("--rank", type=positive_int, default=16)
    g.add_argument("--alpha", type=positive_float, default=None, help="LoRA alpha (default: the rank, i.e. scale 1)")
    g.add_argument("--dropout", type=non_negative_float, default=0.0, help="dropout on the adapters' input")
    g.add_argument("--target_modules", default="attn,mlp",
                   help="groups attn, mlp, adaln and/or DiT linear names, comma separated (default attn,mlp)")
    g.add_argument("--full", action="store_true", help="fine-tune every DiT weight instead of adapters")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int, default=1000)
    g.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default 1e-4 LoRA, 1e-5 --full)")
    g.add_argument("--warmup", type=non_negative_int, default=None, help="linear warm-up steps (default 5%% of --steps)")
    g.add_argument("--weight_decay", type=non_negative_float, default=None, help="AdamW decay (default 0 LoRA, 0.01 --full)")
    g.add_argument("--grad_clip", type=positive_float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--tokens_per_step", type=non_negative_int, default=0,
                   help="clips per micro-batch: as many as fit this many tokens (default 0: one clip)")
    g.add_argument("--grad_accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--task_mix", default="0.5,0.25,0.25", help="t2v,i2v,continuation shares (by clean chunks)")
    g.add_argument("--caption_dropout", type=float, default=0.1, help="share of samples trained without caption")
    g.add_argument("--no_gradient_checkpointing", action="store_true")
    g.add_argument("--mixed_precision", choices=("auto", "bf16", "no"), default="auto",
                   help="bf16 autocast: auto = where the device runs bf16 fast (GPUs; CPUs with bf16 units)")
    g = p.add_argument_group("data")
    g.add_argument("--resolution", default=None,
                   help="training size WxH or one side for a square (default: the config's video size); "
                        "buckets of about this area")
    g.add_argument("--max_chunks", type=int, default=None, help="chunks per training sample (default window+1)")
    g.add_argument("--clip_chunks", type=int, default=None, help="videos are cut into pieces of this many chunks "
                                                                 "(default --max_chunks)")
    g.add_argument("--max_segments", type=int, default=None, help="pieces per video at most (default all)")
    g.add_argument("--cache_dir", default=None, help="latent / embedding cache (default OUT/cache)")
    g.add_argument("--strict", action="store_true", help="stop when any file of --data cannot be used")
    g = p.add_argument_group("progress")
    g.add_argument("--sample_every", type=int, default=0, help="write sample videos every N steps (0: never)")
    g.add_argument("--sample_prompt", action="append", default=[], help="sample caption (repeatable; "
                                                                        "default: the first training caption)")
    g.add_argument("--sample_frames", type=positive_int, default=None, help="frames per sample (default two chunks)")
    g.add_argument("--sample_steps", type=positive_int, default=None, help="denoising steps per sample (default config's)")
    g.add_argument("--save_every", type=int, default=0, help="also write the LoRA to OUT/step_N/ every N steps")
    g.add_argument("--checkpoint_every", type=int, default=100, help="steps between resumable saves")
    g.add_argument("--log_every", type=int, default=10, help="steps between loss-log lines and loss.png updates")
    g.add_argument("--plan_only", action="store_true", help="print the dataset summary and memory plan, then stop")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default=None, help="DiT base weights dtype (default bf16 on GPU, float32 on CPU)")
    g.add_argument("--threads", type=positive_int, default=None)
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_resolution(text: str | None, config) -> tuple[int, int]:
    """(height, width) from 'WxH' or 'N' (square); the config's video size when None."""
    r = config.runtime_config
    if text is None:
        return r.video_size_h, r.video_size_w
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise InputError(f"--resolution must be WxH or one number, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0 or any(v % 16 for v in values):
        raise InputError(f"--resolution sides must be positive multiples of 16, got {text!r}")
    return values[1], values[0]


def _task_mix(args):
    from ..train.batch import TaskMix

    try:
        t2v, i2v, v2v = (float(v) for v in args.task_mix.split(","))
    except ValueError:
        raise InputError(f"--task_mix needs three numbers t2v,i2v,continuation, got {args.task_mix!r}") from None
    if min(t2v, i2v, v2v) < 0 or t2v + i2v + v2v <= 0:
        raise InputError("--task_mix shares must be >= 0 and not all 0")
    if not 0 <= args.caption_dropout < 1:
        raise InputError(f"--caption_dropout must be in [0, 1), got {args.caption_dropout}")
    return TaskMix(t2v=t2v, i2v=i2v, v2v=v2v, dropout=args.caption_dropout)


def validate_args(args):
    """Everything that can be checked before a file is read or a model loads; returns the config."""
    from ..config import ConfigError, load_config
    from .adapters import LoraSettings, resolve_targets

    try:
        config = load_config(args.config_file)
    except ConfigError as err:
        raise InputError(str(err)) from None
    e = config.engine_config
    if e.distill:
        raise InputError("train on a base model (e.g. 4.5B_base or demo): the MAGI-1 objective here is the base "
                         "model's, not shortcut distillation")
    if e.fp8_quant:
        raise InputError("train on the bf16 weights, not an FP8-quantized checkpoint (e.g. 4.5B_base)")
    if not Path(args.data).is_dir():
        raise InputError(f"--data: {args.data} is not a folder")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {args.out} exists and is not a folder")
    if not out.parent.exists():
        raise InputError(f"--out: folder {out.parent} does not exist")
    _check_out_folder(out, Path(args.data), Path(args.cache_dir) if args.cache_dir else None)
    for flag in ("steps", "grad_accum"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for flag in ("sample_every", "save_every", "checkpoint_every", "tokens_per_step"):
        if getattr(args, flag) < 0:
            raise InputError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if args.log_every < 1:
        raise InputError(f"--log_every must be >= 1, got {args.log_every}")
    for flag in ("max_chunks", "clip_chunks", "max_segments"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag} must be >= 1, got {value}")
    if not args.full:
        LoraSettings(rank=args.rank, alpha=args.alpha, dropout=args.dropout,
                     targets=resolve_targets(args.target_modules)).validate()
        from ..memory.training import check_targets_exist

        check_targets_exist(config, args.target_modules)  # before the cache is encoded, not after
    parse_resolution(args.resolution, config)
    _task_mix(args)
    if args.dtype is not None:
        from ..runtime import parse_dtype

        try:
            parse_dtype(args.dtype)
        except ValueError as err:
            raise InputError(f"--dtype: {err}") from None
    from ..pipeline import check_weights_present

    check_weights_present(config)
    return config


def _check_out_folder(out: Path, data: Path, cache_dir: Path | None) -> None:
    """--out gets the LoRA, its state, cache and logs: not inside --data (the next scan would read them as
    training files), and not a folder of something else (a model's config.json would be overwritten by --full)."""
    data = data.resolve()
    for flag, folder in (("--out", out), ("--cache_dir", cache_dir)):
        if folder is not None and (folder.resolve() == data or data in folder.resolve().parents):
            raise InputError(f"{flag} {folder} is inside --data {data}: the next scan would read its files as "
                             f"training data; put it outside the clips folder")
    if out.is_dir() and not (out / SETTINGS_FILE).is_file():
        entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise InputError(f"--out {out} already holds files that are not a `magi1 train lora` run ({shown}); "
                             f"give a new or empty folder")


def _check_resumable(args, out: Path) -> None:
    """A second run into the same --out continues the first: refuse if it would train something else."""
    from ..train.resume import refuse_other_settings

    current = {k: getattr(args, k) for k in RUN_DEFINING}
    current["data"] = str(Path(args.data).resolve())
    try:
        refuse_other_settings(out, current, has_state=(out / STATE_DIR).exists(), what="--out", flag_style="_",
                              settings_file=SETTINGS_FILE)
    except ValueError as err:
        raise InputError(str(err)) from None


def main_train_lora(args) -> int:
    from ..runtime import set_threads

    set_threads(args.threads)
    config = validate_args(args)
    out = Path(args.out)
    from .run import LoraRun

    _check_resumable(args, out)
    return LoraRun(args, config, out).run()


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="magi1 train")
    add_lora_parser(parser.add_subparsers(dest="what", required=True))
    sys.exit(main_train_lora(parser.parse_args()))
