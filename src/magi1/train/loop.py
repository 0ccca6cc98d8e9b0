"""The loop every trainer here shares: steps, progress bar, loss log, periodic resumable checkpoints.

A trainer implements a small protocol (`Steppable`): `train_step(step)` returns a dict of numbers, and
`state_parts()` / `load_state_parts()` hand over everything that must survive a restart. The loop owns the
rest, so the VAE, DiT and distillation trainers read as their objective only.

Randomness is a function of (seed, step): a resumed run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from .resume import load_state, save_state


class Steppable(Protocol):
    def train_step(self, step: int) -> dict[str, float]: ...

    def state_parts(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]: ...

    def load_state_parts(self, parts: dict[str, dict[str, torch.Tensor]], meta: dict) -> None: ...


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one step: batches depend on (seed, step) only, which makes resuming exact."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + stream) % (2**63 - 1))


def seed_model_randomness(seed: int, step: int, stream: int = 0) -> None:
    """Seed torch's global generators (every device) for one step's forward: what a model draws there itself
    (adapter or attention dropout) then depends on (seed, step) too, not on how many steps this process ran."""
    torch.manual_seed((int(seed) * 998_244_353 + int(step) * 104_729 + stream + 1) % (2**63 - 1))


def warmup_cosine(step: int, total: int, warmup: int, final_ratio: float = 0.1) -> float:
    """LR multiplier: linear warm-up, then a cosine down to `final_ratio` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a module's floating parameters; exported weights come from here.

    The decay warms up as (1 + n) / (10 + n) so that a short run is not dominated by its random start.
    """

    def __init__(self, module: torch.nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().clone().float() for name, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in module.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    def state_dict(self, like: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The averaged weights, cast to the dtypes of `like`'s parameters when given."""
        if like is None:
            return dict(self.shadow)
        dtypes = {name: p.dtype for name, p in like.named_parameters()}
        return {name: value.to(dtypes.get(name, value.dtype)) for name, value in self.shadow.items()}

    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        for name, value in tensors.items():
            if name in self.shadow:
                self.shadow[name].copy_(value)
        self.updates = updates


@dataclass
class LoopSettings:
    total_steps: int
    state_dir: str | None = None           # where resumable state lives; None: no checkpoints
    checkpoint_every_s: float = 180.0      # wall-clock seconds between saves
    checkpoint_every_steps: int | None = None  # also save every this many steps
    log_every: int = 25                    # steps between loss-log lines
    log_path: str | None = None            # text loss log (appended), one line per log_every steps
    desc: str = "train"
    progress: bool = True


class LossLog:
    """Running means of the step metrics, written as one plain-text line every `log_every` steps."""

    def __init__(self, path: str | None, name: str) -> None:
        self.path = Path(path) if path else None
        self.name = name
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}  # per key: some metrics appear only on some steps (distill levels)
        self.lines: list[str] = []

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.counts[k]) for k, v in sorted(self.sums.items())}

    def flush(self, step: int, elapsed: float) -> str:
        values = " ".join(f"{k}={v:.4f}" for k, v in self.means().items())
        line = f"[{self.name}] step {step:6d}  {values}  elapsed {elapsed / 60:.1f} min"
        self.lines.append(line)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(line + "\n")
        self.sums, self.counts = {}, {}
        return line


def run_loop(trainer: Steppable, settings: LoopSettings) -> dict:
    """Train from the last saved state (if any) up to `total_steps`; returns the final metrics and timing."""
    start_step, elapsed_before, cpu_before = 0, 0.0, 0.0
    if settings.state_dir:
        saved = load_state(settings.state_dir)
        if saved is not None:
            parts, meta = saved
            trainer.load_state_parts(parts, meta)
            start_step = int(meta["step"])
            elapsed_before = float(meta.get("elapsed_s", 0.0))
            cpu_before = float(meta.get("cpu_s", 0.0))
    log = LossLog(settings.log_path, settings.desc)
    started = time.perf_counter()
    cpu_started = time.process_time()  # CPU seconds of all threads: the machine's share, whatever else runs
    last_save = started
    last_means: dict[str, float] = {}

    def save(step: int) -> None:
        parts, meta = trainer.state_parts()
        meta = dict(meta, step=step, elapsed_s=elapsed_before + time.perf_counter() - started,
                    cpu_s=cpu_before + time.process_time() - cpu_started)
        save_state(settings.state_dir, parts, meta)

    bar = tqdm(range(start_step, settings.total_steps), initial=start_step, total=settings.total_steps,
               desc=settings.desc, disable=not settings.progress, dynamic_ncols=True)
    for step in bar:
        metrics = trainer.train_step(step)
        log.add(metrics)
        done = step + 1
        if done % settings.log_every == 0 or done == settings.total_steps:
            last_means = log.means()
            bar.set_postfix({k: f"{v:.4f}" for k, v in last_means.items()})
            log.flush(done, elapsed_before + time.perf_counter() - started)
        every_steps = settings.checkpoint_every_steps
        if settings.state_dir and (time.perf_counter() - last_save >= settings.checkpoint_every_s
                                   or (every_steps and done % every_steps == 0) or done == settings.total_steps):
            save(done)
            last_save = time.perf_counter()
    bar.close()
    return {"metrics": last_means, "elapsed_s": elapsed_before + time.perf_counter() - started,
            "resumed_from": start_step, "elapsed_before_s": elapsed_before, "cpu_before_s": cpu_before}
