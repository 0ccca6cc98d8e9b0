"""One `magi1 train lora` run, stage by stage (the flags are parsed and checked in lora/cli.py).

1. scan --data: pair captions, list every file that cannot be used (dataset_report.txt)
2. plan segments (size buckets, whole chunks) and print the memory plan
3. cache VAE latents and T5 embeddings (only what is missing; each model freed after use)
4. load the DiT alone, add the adapters (or unfreeze it all with --full), gradient checkpointing
5. train with the MAGI-1 objective (train.loop: progress bar, loss log, resumable state), samples, loss.png
6. write the LoRA (peft layout) or, with --full, the DiT in the official layout with a config beside it
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import torch

from ..errors import InputError

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"


def _say(text: str) -> None:
    print(text, flush=True)


class LoraRun:
    def __init__(self, args, config, out: Path) -> None:
        from ..runtime import default_dtype_for, parse_dtype, pick_device

        self.args = args
        self.config = config
        self.out = out
        self.device = pick_device(args.device)
        self.full = bool(args.full)
        # Masters of trained weights are float32; frozen base weights take the device's compute dtype.
        self.base_dtype = torch.float32 if self.full else (parse_dtype(args.dtype) if args.dtype
                                                            else default_dtype_for(self.device))
        self.autocast_dtype = self._autocast_dtype()
        r = config.runtime_config
        self.chunk_frames = r.chunk_width * r.temporal_downsample_factor
        self.max_chunks = args.max_chunks or (r.window_size + 1)
        self.cache_dir = Path(args.cache_dir) if args.cache_dir else out / "cache"
        self.model_name = self._model_name()

    def _autocast_dtype(self) -> torch.dtype | None:
        from ..runtime import bf16_autocast_available

        choice = self.args.mixed_precision
        if choice == "no" or (choice == "auto" and not bf16_autocast_available(self.device)):
            return None
        return torch.bfloat16

    def _model_name(self) -> str:
        text = str(self.args.config_file)
        return Path(text).stem if text.endswith(".json") else text

    # ------------------------------------------------------------------ stages
    def run(self) -> int:
        started = time.perf_counter()
        scan = self.scan()
        planned, layout = self.plan(scan)
        self.print_memory_plan(planned)
        if self.args.plan_only:
            return 0
        captions = [p.item.caption for p in planned]
        sample_prompts = self.args.sample_prompt or [captions[0]]
        report = self.build_cache(planned, captions + sample_prompts, layout)
        _say(report.summary())
        model, params = self.load_model()
        trainer, sampler = self.make_trainer(model, planned, captions + sample_prompts, sample_prompts)
        outcome = self.train(trainer, sampler)
        written = self.write_result(model, trainer)
        minutes = (time.perf_counter() - started) / 60
        resumed = f" (resumed at step {outcome['resumed_from']})" if outcome["resumed_from"] else ""
        if outcome["resumed_from"] >= self.args.steps:
            resumed = f" (all of them by an earlier run into {self.out}: nothing left to train)"
        _say(f"trained {self.args.steps} steps{resumed} in {minutes:.1f} min; "
             f"final loss {self._final_loss(outcome):.4f}; {written}")
        return 0

    def _final_loss(self, outcome) -> float:
        """The mean loss of the last log window; a finished run run again reads that window from loss.csv."""
        if "loss" in outcome["metrics"]:
            return outcome["metrics"]["loss"]
        from .trainer import LOSS_CSV, read_loss_csv

        path = self.out / LOSS_CSV
        window_start = (self.args.steps - 1) // self.args.log_every * self.args.log_every
        losses = [r["loss"] for r in (read_loss_csv(path) if path.is_file() else []) if r["step"] > window_start]
        return sum(losses) / len(losses) if losses else float("nan")

    def scan(self):
        from .dataset import scan_folder

        scan = scan_folder(self.args.data, fps=self.config.runtime_config.fps, min_frames=self.chunk_frames)
        lines = [str(problem) for problem in scan.problems]
        for line in lines:
            _say(f"not used: {line}")
        _say(scan.summary())
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "dataset_report.txt").write_text(
            "".join(f"{i.kind}\t{i.path}\t{i.width}x{i.height}\t{i.num_frames} frames\t{i.caption}\n"
                    for i in scan.items) + "".join(f"NOT USED\t{line}\n" for line in lines))
        if not scan.items:
            raise InputError(f"{self.args.data} holds no usable video or image with a caption (a same-name .txt, or a "
                             f"metadata.jsonl / metadata.csv row)")
        if self.args.strict and scan.problems:
            raise InputError(f"{len(scan.problems)} file(s) of {self.args.data} cannot be used (listed above) and "
                             f"--strict is set")
        return scan

    def plan(self, scan):
        from .cache import VAE_SPATIAL_FACTOR, CacheLayout, model_files_identity, plan_segments
        from .cli import parse_resolution

        height, width = parse_resolution(self.args.resolution, self.config)
        layout = CacheLayout(height=height, width=width, fps=self.config.runtime_config.fps,
                             chunk_frames=self.chunk_frames, clip_chunks=self.args.clip_chunks or self.max_chunks,
                             max_segments=self.args.max_segments,
                             multiple=VAE_SPATIAL_FACTOR * self.config.model_config.patch_size)
        vae_folder = self.config.resolve_path(self.config.runtime_config.vae_pretrained)
        planned = plan_segments(scan, layout, model_files_identity(vae_folder))
        counts: dict[str, int] = {}
        for p in planned:
            label = f"{p.bucket} {'image' if p.segment is None else f'{p.segment.chunks} chunk(s)'}"
            counts[label] = counts.get(label, 0) + 1
        _say("training segments by bucket: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        return planned, layout

    def print_memory_plan(self, planned) -> None:
        from ..memory.training import TrainShape, plan_training
        from ..runtime import is_accelerator

        widest = max(planned, key=lambda p: p.bucket.height * p.bucket.width * (p.segment.chunks if p.segment else 1))
        chunks = min(self.max_chunks, widest.segment.chunks if widest.segment else 1)
        m = self.config.model_config
        tokens = (widest.bucket.height // 8 // m.patch_size) * (widest.bucket.width // 8 // m.patch_size)
        per_sample = chunks * self.config.runtime_config.chunk_width * tokens
        batch = max(1, self.args.tokens_per_step // per_sample) if self.args.tokens_per_step else 1
        shape = TrainShape(widest.bucket.height, widest.bucket.width, chunks, batch)
        plan = plan_training(self.config, shape, mode="full" if self.full else "lora", rank=self.args.rank,
                             targets=self.args.target_modules, weight_dtype=self.base_dtype,
                             compute_dtype=self.autocast_dtype or self.base_dtype,
                             checkpointing=not self.args.no_gradient_checkpointing,
                             accelerator=is_accelerator(self.device))
        _say(plan.format(f"training memory plan (estimate, {self.device})"))
        precision = "bf16 autocast" if self.autocast_dtype is not None else "no autocast"
        _say(f"device {self.device}, base weights {str(self.base_dtype)[6:]}, {precision}")

    def build_cache(self, planned, captions, layout):
        from ..models.text_encoder import T5TextEncoder
        from ..models.vae import ViTVAE
        from .cache import TrainingCache

        r = self.config.runtime_config
        cache = TrainingCache(self.cache_dir)
        self.cache = cache
        return cache.build(planned, captions, load_vae=self._load_vae, make_text_encoder=self._text_encoder,
                           fps=layout.fps, progress=not self.args.quiet)

    def _load_vae(self):
        from ..models.vae import ViTVAE

        folder = self.config.resolve_path(self.config.runtime_config.vae_pretrained)
        return ViTVAE.from_pretrained(folder, device=self.device)

    def _text_encoder(self, cache_dir):
        from ..models.text_encoder import T5TextEncoder
        from ..runtime import pick_device

        r = self.config.runtime_config
        device = pick_device("auto" if r.t5_device != "cpu" else "cpu")
        return T5TextEncoder(self.config.resolve_path(r.t5_pretrained), device=device,
                             max_length=self.config.model_config.caption_max_length, cache_dir=cache_dir)

    def load_model(self):
        from ..checkpoint.loader import load_dit
        from .adapters import LoraSettings, add_lora

        model = load_dit(self.config, device=self.device, dtype=self.base_dtype)
        if not self.args.no_gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if self.full:
            model.requires_grad_(True)
            params = list(model.parameters())
        else:
            settings = LoraSettings(rank=self.args.rank, alpha=self.args.alpha, dropout=self.args.dropout,
                                    targets=self.args.target_modules.split(","))
            params = add_lora(model, settings, ADAPTER_NAME, base_model=self.model_name, seed=self.args.seed)
        trained = sum(p.numel() for p in params)
        _say(f"DiT loaded on {self.device}; training {trained / 1e6:.2f} M parameters"
             + ("" if self.full else f" (LoRA rank {self.args.rank} on {self.args.target_modules})"))
        return model, params

    def make_trainer(self, model, planned, captions, sample_prompts):
        from .samples import SampleSettings, SampleWriter
        from .trainer import CaptionTable, MagiObjectiveTrainer, ObjectiveSettings

        args = self.args
        table = CaptionTable.from_encoder(self._text_encoder(self.cache.text_dir), captions)  # cache hits only
        groups = self.cache.load_groups(planned)
        settings = ObjectiveSettings(
            steps=args.steps, lr=args.lr or (1e-5 if self.full else 1e-4),
            warmup=args.warmup if args.warmup is not None else max(1, args.steps // 20),
            weight_decay=args.weight_decay if args.weight_decay is not None else (0.01 if self.full else 0.0),
            grad_clip=args.grad_clip, tokens_per_step=args.tokens_per_step, grad_accum=args.grad_accum,
            max_chunks=self.max_chunks, seed=args.seed, mix=_mix(args))
        r = self.config.runtime_config
        samples = SampleSettings(prompts=sample_prompts, every=args.sample_every,
                                 num_frames=args.sample_frames or 2 * self.chunk_frames,
                                 num_steps=args.sample_steps or r.num_steps, seed=args.seed)
        sampler = SampleWriter(self.config, model, table, samples, self.out / "samples", load_vae=self._load_vae,
                               device=self.device)

        def on_step_end(step: int, metrics: dict) -> None:
            if sampler.due(step):
                sampler(step)
            if args.save_every and step % args.save_every == 0 and not self.full:
                self.save_lora(model, self.out / f"step_{step:06d}", step)
            if step % args.log_every == 0 or step == args.steps:
                self.plot()

        trainer = MagiObjectiveTrainer(model, self.config, groups, table, settings, device=self.device,
                                       autocast_dtype=self.autocast_dtype, full=self.full, log_dir=self.out,
                                       on_step_end=on_step_end)
        return trainer, sampler

    def plot(self) -> None:
        from .samples import plot_loss_curve
        from .trainer import LOSS_CSV

        plot_loss_curve(self.out / LOSS_CSV, self.out / "loss.png",
                        title=f"{'full fine-tune' if self.full else 'LoRA'} of {self.model_name}")

    def train(self, trainer, sampler):
        from ..train.loop import LoopSettings, run_loop

        settings = LoopSettings(total_steps=self.args.steps, state_dir=str(self.out / "state"),
                                checkpoint_every_steps=self.args.checkpoint_every or None,
                                log_every=self.args.log_every, log_path=str(self.out / "loss_log.txt"),
                                desc="train lora" if not self.full else "fine-tune", progress=not self.args.quiet)
        outcome = run_loop(trainer, settings)
        if outcome["resumed_from"]:
            _say(f"resumed from step {outcome['resumed_from']} ({self.out / 'state'})")
        self.plot()
        return outcome

    # ------------------------------------------------------------------ output
    def save_lora(self, model, folder: Path, step: int) -> Path:
        from .adapters import save_lora

        meta = {"magi1.training": {"steps": step, "data": str(Path(self.args.data).resolve()),
                                   "config_file": str(self.args.config_file), "seed": self.args.seed}}
        return save_lora(model, folder, ADAPTER_NAME, model_name=self.model_name, metadata=meta)

    def write_result(self, model, trainer) -> str:
        if not self.full:
            self.save_lora(model, self.out, self.args.steps)
            return (f"LoRA written to {self.out} (use: magi1 generate --config_file {self.args.config_file} "
                    f"--lora {self.out})")
        return self.write_full_model(model)

    def write_full_model(self, model) -> str:
        from ..checkpoint.writer import save_official

        model.disable_gradient_checkpointing()
        save_official(model.state_dict(), self.out / "inference_weight")
        data = self.config.to_dict()
        r = data["runtime_config"]
        r["load"] = "."
        for key in ("vae_pretrained", "t5_pretrained"):
            value = r.get(key)
            if value and not re.match(r"^[a-z]+://", str(value)):
                r[key] = str(Path(self.config.resolve_path(value)).resolve())
        (self.out / "config.json").write_text(json.dumps(data, indent=4) + "\n")
        return f"fine-tuned DiT written to {self.out} (use: magi1 generate --config_file {self.out / 'config.json'})"


def _mix(args):
    from .cli import _task_mix

    return _task_mix(args)
