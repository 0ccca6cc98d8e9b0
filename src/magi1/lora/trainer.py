"""The MAGI-1 objective on cached latents and caption embeddings: LoRA adapters or the whole DiT.

Each step draws a shape group (bucket x segment length, in proportion to its clips), a chunk count R, and per
sample a task by the number of clean chunks (t2v: none, i2v: the first latent frame clean, continuation: 1..R-1
clean chunks; `batch.TaskMix`), monotone per-chunk noise levels, caption dropout and noise; the same MagiDiT
inference runs regresses the velocity on the noisy frames (`train.batch`, `train.losses`). Images train as
one-chunk clips of one latent frame (t2v). Randomness is a function of (seed, step), so a resumed run draws the
same batches as one that was never stopped and continues the same loss curve.

The loop (progress bar, loss log, resumable state) is `train.loop.run_loop`; this class is its `Steppable`.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..train.batch import DiTBatchBuilder, TaskMix
from ..train.data import LatentClips
from ..train.dit_trainer import dit_velocity, parameter_groups
from ..train.loop import seed_model_randomness, step_generator, warmup_cosine
from ..train.losses import MonotoneChunkTimeSampler, masked_mse
from ..train.resume import load_optimizer_tensors, optimizer_tensors

LOSS_CSV = "loss.csv"


@dataclass
class ObjectiveSettings:
    steps: int = 1000
    lr: float = 1e-4
    warmup: int = 50
    final_lr_ratio: float = 0.1           # cosine decay ends at lr x this
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    tokens_per_step: int = 0              # 0: one clip per micro-batch; else as many as fit this many tokens
    grad_accum: int = 1                   # micro-batches per optimizer step
    max_chunks: int | None = None         # chunks per training sample at most (default: window size + 1)
    seed: int = 0
    mix: TaskMix = field(default_factory=TaskMix)


class CaptionTable:
    """Cached caption embeddings by caption text: (Lc_used, C) float32 rows, padded to Lc for a batch."""

    def __init__(self, embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]], max_length: int) -> None:
        self.rows: dict[str, torch.Tensor] = {}
        for caption, (emb, mask) in embeddings.items():
            used = int(mask.reshape(-1).sum())
            self.rows[caption] = emb.reshape(-1, emb.shape[-1])[:used].float().clone()  # only the real tokens
        self.max_length = max_length
        self.channels = next(iter(self.rows.values())).shape[-1]

    @classmethod
    def from_encoder(cls, encoder, captions: list[str]) -> "CaptionTable":
        """Read every caption from the encoder's caches (a cache hit does not load T5)."""
        return cls({c: encoder.encode(c) for c in dict.fromkeys(captions)}, encoder.max_length)

    def batch(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lc, C) embeddings (zeros past each caption) and (B, Lc) masks."""
        emb = torch.zeros(len(captions), self.max_length, self.channels)
        mask = torch.zeros(len(captions), self.max_length)
        for b, caption in enumerate(captions):
            rows = self.rows[caption]
            emb[b, : rows.shape[0]] = rows
            mask[b, : rows.shape[0]] = 1
        return emb, mask


class MagiObjectiveTrainer:
    """AdamW on `params` (LoRA adapters, or every DiT weight) with the MAGI-1 objective; a run_loop Steppable.

    groups: the cached segments stacked by shape (TrainingCache.load_groups). autocast_dtype: run the forward
    under torch.autocast in this dtype (None: the model's own dtypes). on_step_end(step_done, metrics) runs
    after each optimizer step (samples, plots).
    """

    def __init__(self, model: nn.Module, config, groups: list[LatentClips], captions: CaptionTable,
                 settings: ObjectiveSettings, *, device: torch.device, autocast_dtype: torch.dtype | None = None,
                 full: bool = False, log_dir: str | Path | None = None,
                 on_step_end: Callable[[int, dict], None] | None = None) -> None:
        if not groups:
            raise ValueError("no training data")
        self.model = model
        self.config = config
        self.groups = groups
        self.captions = captions
        self.settings = settings
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.full = full
        self.on_step_end = on_step_end
        self.loss_csv = Path(log_dir) / LOSS_CSV if log_dir is not None else None
        r, m = config.runtime_config, config.model_config
        self.max_chunks = settings.max_chunks or (r.window_size + 1)
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named_params:
            raise ValueError("nothing to train: no parameter of the model requires grad")
        self.optimizer = torch.optim.AdamW(parameter_groups([model], settings.weight_decay), lr=settings.lr,
                                           betas=settings.betas)
        self.builders = [self._builder_for(group, r, m) for group in groups]
        self.group_weights = torch.tensor([float(len(g)) for g in groups], dtype=torch.float64)

    def _builder_for(self, group: LatentClips, r, m) -> DiTBatchBuilder:
        h, w = group.latent_size
        image = group.num_frames == 1
        mix = self.settings.mix
        if image:  # an image is a one-chunk clip of one latent frame: text to image only
            mix = TaskMix(t2v=1.0, i2v=0.0, v2v=0.0, dropout=mix.dropout, chunk_weights=(1.0,),
                          first_chunk_start_prob=1.0)
        return DiTBatchBuilder(
            chunk_width=1 if image else r.chunk_width,
            tokens_per_frame=(h // m.patch_size) * (w // m.patch_size),
            noise2clean_kvrange=r.noise2clean_kvrange,
            clean_chunk_kvrange=r.clean_chunk_kvrange,
            caption_max_length=m.caption_max_length,
            sampler=MonotoneChunkTimeSampler(num_stages=max(1, len(r.noise2clean_kvrange)), clean_t=r.clean_t),
            mix=mix,
        )

    # ------------------------------------------------------------------ one step
    def make_batch(self, generator: torch.Generator):
        """Draw a group, R, tasks, times, noise and crops; assemble the DiT inputs (on the CPU)."""
        index = int(torch.multinomial(self.group_weights, 1, generator=generator))
        group, builder = self.groups[index], self.builders[index]
        chunks_here = max(1, group.num_frames // builder.chunk_width)
        chunks = builder.draw_num_chunks(generator, min(self.max_chunks, chunks_here))
        tokens = self.settings.tokens_per_step
        size = max(1, tokens // (chunks * builder.chunk_tokens)) if tokens else 1
        layouts = [builder.draw_layout(chunks, generator) for _ in range(size)]
        from_start = [layout.image_frame for layout in layouts]  # i2v crops start where the segment starts
        crop = group.sample(size, chunks * builder.chunk_width, generator,
                            start_prob=builder.mix.first_chunk_start_prob, force_start=from_start)
        emb, mask = self.captions.batch(crop.captions)
        null_caption = self.model.y_embedder.null_caption_embedding.detach().float().cpu()
        return builder.assemble(crop.latents, layouts, emb, mask, null_caption, generator=generator,
                                image_latents=crop.image_latents)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def train_step(self, step: int) -> dict[str, float]:
        s = self.settings
        lr = s.lr * warmup_cosine(step, s.steps, s.warmup, s.final_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(s.grad_accum):
            batch = self.make_batch(step_generator(s.seed, step, stream=micro)).to(self.device)
            seed_model_randomness(s.seed, step, stream=micro)  # adapter dropout: the same after a resume
            with self._autocast():
                prediction = dit_velocity(self.model, batch)
            loss = masked_mse(prediction.float(), batch.target.float(), batch.frame_weight)
            (loss / s.grad_accum).backward()
            total += float(loss.detach()) / s.grad_accum
        params = [p for _, p in self.named_params]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, s.grad_clip))
        self.optimizer.step()
        self.model.eval()
        metrics = {"loss": total, "grad": grad_norm, "lr": lr}
        self._log(step + 1, metrics)
        if self.on_step_end is not None:
            self.on_step_end(step + 1, metrics)
        return metrics

    # ------------------------------------------------------------------ per-step loss log
    def _log(self, step: int, metrics: dict) -> None:
        if self.loss_csv is None:
            return
        new = not self.loss_csv.is_file()
        self.loss_csv.parent.mkdir(parents=True, exist_ok=True)
        with self.loss_csv.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "loss", "grad_norm", "lr"])
            writer.writerow([step, f"{metrics['loss']:.8g}", f"{metrics['grad']:.6g}", f"{metrics['lr']:.6g}"])

    def _truncate_log(self, step: int) -> None:
        """Drop lines of steps after `step` (a run killed after its last checkpoint logged them already)."""
        if self.loss_csv is None or not self.loss_csv.is_file():
            return
        rows = read_loss_csv(self.loss_csv)
        self.loss_csv.unlink()
        for row in rows:
            if row["step"] <= step:
                self._log(int(row["step"]), {"loss": row["loss"], "grad": row["grad_norm"], "lr": row["lr"]})

    # ------------------------------------------------------------------ state
    def state_parts(self) -> tuple[dict, dict]:
        optim_tensors, optim_meta = optimizer_tensors(self.optimizer)
        weights = {name: p.detach() for name, p in self.named_params}
        return {"trainable": weights, "optim": optim_tensors}, {"optim": optim_meta, "full": self.full}

    def load_state_parts(self, parts: dict, meta: dict) -> None:
        saved = parts["trainable"]
        names = [name for name, _ in self.named_params]
        if sorted(saved) != sorted(names) or bool(meta.get("full")) != self.full:
            raise ValueError("the saved training state belongs to another run (other adapter settings or mode); "
                             "use a new --out folder or delete its state/")
        with torch.no_grad():
            for name, p in self.named_params:
                p.copy_(saved[name].to(p.device, p.dtype))
        load_optimizer_tensors(self.optimizer, parts.get("optim", {}), meta["optim"])
        self._truncate_log(int(meta.get("step", 0)))


def read_loss_csv(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as handle:
        return [{"step": int(r["step"]), "loss": float(r["loss"]), "grad_norm": float(r["grad_norm"]),
                 "lr": float(r["lr"])} for r in csv.DictReader(handle)]
