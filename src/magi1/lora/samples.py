"""What a training run shows while it goes: sample videos every N steps, and the loss curve as a PNG.

Samples run the real inference path (MagiPipeline around the DiT being trained, adapters active) on cached
caption embeddings, so T5 is never loaded for them; the VAE is loaded for the decode and freed right after.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .trainer import CaptionTable, read_loss_csv

logger = logging.getLogger(__name__)


def plot_loss_curve(csv_path: str | Path, png_path: str | Path, *, title: str = "training loss") -> Path | None:
    """Per-step loss (thin) and its running mean (bold) against the step; None when there is nothing yet."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    rows = read_loss_csv(csv_path) if Path(csv_path).is_file() else []
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    window = max(1, len(losses) // 20)
    smooth, running = [], 0.0
    for i, value in enumerate(losses):  # trailing mean over `window` steps
        running += value
        if i >= window:
            running -= losses[i - window]
        smooth.append(running / min(i + 1, window))
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.plot(steps, losses, linewidth=0.6, alpha=0.45, color="tab:blue", label="loss per step")
    axes.plot(steps, smooth, linewidth=2.0, color="tab:blue", label=f"mean of {window} steps")
    axes.set_xlabel("step")
    axes.set_ylabel("velocity MSE (noisy frames)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(png_path.stem + ".partial.png")
    figure.savefig(tmp)
    plt.close(figure)
    tmp.replace(png_path)
    return png_path


@dataclass
class SampleSettings:
    prompts: list[str]
    every: int                    # steps between samples (0: none)
    num_frames: int
    num_steps: int
    seed: int = 0
    height: int | None = None
    width: int | None = None


class SampleWriter:
    """Writes OUT/samples/step_<n>_<i>.mp4 for each sample prompt (called with the number of steps done)."""

    def __init__(self, config, model: torch.nn.Module, captions: CaptionTable, settings: SampleSettings,
                 out_dir: str | Path, *, load_vae: Callable, device: torch.device) -> None:
        self.config = config
        self.model = model
        self.captions = captions
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.load_vae = load_vae
        self.device = device

    def due(self, step: int) -> bool:
        return bool(self.settings.every) and step % self.settings.every == 0

    def __call__(self, step: int) -> list[Path]:
        from ..pipeline import MagiPipeline
        from .cache import free_memory

        s = self.settings
        vae = self.load_vae()
        written = []
        try:
            pipe = MagiPipeline(self.config, self.model, vae, None, device=self.device)
            for index, prompt in enumerate(s.prompts):
                emb, mask = self.captions.batch([prompt])
                path = self.out_dir / f"step_{step:06d}_{index}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                pipe.generate_to_file(path, prompt_embeds=emb, prompt_attention_mask=mask.long(),
                                      num_frames=s.num_frames, num_inference_steps=s.num_steps, seed=s.seed + index,
                                      height=s.height, width=s.width, progress=False,
                                      metadata={"comment": f"magi1 train lora sample, step {step}: {prompt}"})
                written.append(path)
        finally:
            del vae
            free_memory()
        logger.info("samples at step %d: %s", step, ", ".join(str(p) for p in written))
        return written
