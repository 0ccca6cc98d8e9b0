"""Train the MAGI-1 DiT with its own objective: autoregressive flow matching over chunks.

Each step draws a chunk count R, fills a batch of about `tokens_per_step` tokens with clips of R chunks,
lays out per-chunk times / tasks / caption dropout (batch.DiTBatchBuilder), runs the same MagiDiT the
inference uses, and regresses the velocity (data − noise) on the noisy frames only. Clean chunks take part
in attention and receive gradients (report §1.3). The caption encoder may train along with the DiT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import MagiConfig
from .batch import DiTBatch, DiTBatchBuilder, TaskMix
from .data import LatentClips
from .loop import EMA, step_generator, warmup_cosine
from .losses import MonotoneChunkTimeSampler, masked_mse
from .resume import load_optimizer_tensors, optimizer_tensors


def dit_velocity(model: nn.Module, batch: DiTBatch, *, step_size: float | None = None,
                 null_adaln: torch.Tensor | None = None) -> torch.Tensor:
    """MagiDiT.forward with autograd on (the inference entry point is wrapped in no_grad)."""
    forward = type(model).forward
    forward = getattr(forward, "__wrapped__", forward)
    flags = batch.null_adaln if null_adaln is None else null_adaln
    return forward(model, *batch.model_inputs(), null_adaln=flags, step_size=step_size)


def init_dit_for_training(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A from-scratch start: the PyTorch default init, except a zero final projection (the first velocity
    is 0, so early steps learn the mean direction instead of undoing random outputs)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            module.reset_parameters()
    nn.init.zeros_(model.final_linear.linear.weight)
    return model


def parameter_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices only (not norms, biases, the null table or the rotary bands)."""
    decay, keep = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim < 2 or "null_caption_embedding" in name or name.endswith("bands")
            (keep if no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


@dataclass
class DiTTrainSettings:
    steps: int = 2000
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)   # report Table 2
    tokens_per_step: int = 2304                 # batch size adapts to the chunk count drawn
    max_chunks: int = 5                         # one clean + four in flight, the widest inference call
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    seed: int = 0
    mix: TaskMix = field(default_factory=TaskMix)


class DiTTrainer:
    """One optimizer over the DiT (and the caption encoder when it is trainable)."""

    def __init__(self, model: nn.Module, config: MagiConfig, clips: LatentClips, text_encoder,
                 settings: DiTTrainSettings | None = None) -> None:
        self.model = model
        self.config = config
        self.clips = clips
        self.text = text_encoder
        self.settings = settings or DiTTrainSettings()
        r, m = config.runtime_config, config.model_config
        h, w = clips.latent_size
        self.chunk_width = r.chunk_width
        self.max_chunks = max(1, min(self.settings.max_chunks, clips.num_frames // r.chunk_width))
        self.builder = DiTBatchBuilder(
            chunk_width=r.chunk_width,
            tokens_per_frame=(h // m.patch_size) * (w // m.patch_size),
            noise2clean_kvrange=r.noise2clean_kvrange,
            clean_chunk_kvrange=r.clean_chunk_kvrange,
            caption_max_length=m.caption_max_length,
            sampler=MonotoneChunkTimeSampler(num_stages=max(1, len(r.noise2clean_kvrange)), clean_t=r.clean_t),
            mix=self.settings.mix,
        )
        self.trainable = [model] + ([text_encoder.module] if text_encoder.trainable else [])
        s = self.settings
        self.optimizer = torch.optim.AdamW(parameter_groups(self.trainable, s.weight_decay), lr=s.lr, betas=s.betas)
        self.ema = EMA(model, s.ema_decay)
        self.text_ema = EMA(text_encoder.module, s.ema_decay) if text_encoder.trainable else None

    # ------------------------------------------------------------------ one step
    def batch_size_for(self, num_chunks: int) -> int:
        return max(1, self.settings.tokens_per_step // (num_chunks * self.builder.chunk_tokens))

    def make_batch(self, generator: torch.Generator, *, num_chunks: int | None = None, allow_dropout: bool = True,
                   staged: bool | None = None, phase_steps: int | None = None) -> tuple[DiTBatch, list[str]]:
        """Draw R, clips, layouts and noise, and embed the captions (with gradients when the encoder trains)."""
        chunks = num_chunks or self.builder.draw_num_chunks(generator, self.max_chunks)
        size = self.batch_size_for(chunks)
        layouts = [self.builder.draw_layout(chunks, generator, allow_dropout=allow_dropout, staged=staged,
                                            phase_steps=phase_steps) for _ in range(size)]
        # i2v needs the image latent of the clip's first frame, so those samples crop from the start.
        from_start = [layout.image_frame for layout in layouts]
        crop = self.clips.sample(size, chunks * self.chunk_width, generator,
                                 start_prob=self.settings.mix.first_chunk_start_prob, force_start=from_start)
        emb, mask = self.text(crop.captions)
        batch = self.builder.assemble(crop.latents, layouts, emb, mask, self.null_caption(), generator=generator,
                                      image_latents=crop.image_latents)
        return batch, crop.captions

    def null_caption(self) -> torch.Tensor:
        return self.model.y_embedder.null_caption_embedding

    def train_step(self, step: int) -> dict[str, float]:
        s = self.settings
        for group in self.optimizer.param_groups:
            group["lr"] = s.lr * warmup_cosine(step, s.steps, s.warmup)
        self.model.train()
        self.text.train(True)
        batch, _ = self.make_batch(step_generator(s.seed, step))
        return self.optimize(batch, dit_velocity(self.model, batch), batch.target)

    def optimize(self, batch: DiTBatch, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """One AdamW step on the masked velocity error; updates the EMA copies."""
        loss = masked_mse(prediction, target, batch.frame_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
        if self.text_ema is not None:
            self.text_ema.update(self.text.module)
        return {"loss": float(loss.detach()), "grad": float(grad_norm)}

    # ------------------------------------------------------------------ state
    def state_parts(self) -> tuple[dict, dict]:
        optim_tensors, optim_meta = optimizer_tensors(self.optimizer)
        parts = {"model": dict(self.model.state_dict()), "ema": self.ema.state_dict(), "optim": optim_tensors}
        if self.text_ema is not None:
            parts["text"] = dict(self.text.module.state_dict())
            parts["text_ema"] = self.text_ema.state_dict()
        return parts, {"optim": optim_meta, "ema_updates": self.ema.updates}

    def load_state_parts(self, parts: dict, meta: dict) -> None:
        self.model.load_state_dict(parts["model"])
        self.ema.load(parts["ema"], meta["ema_updates"])
        if self.text_ema is not None and "text" in parts:
            self.text.module.load_state_dict(parts["text"])
            self.text_ema.load(parts["text_ema"], meta["ema_updates"])
        load_optimizer_tensors(self.optimizer, parts.get("optim", {}), meta["optim"])

    def averaged_weights(self) -> dict[str, torch.Tensor]:
        """EMA DiT weights with official key names (these are what ship)."""
        return self.ema.state_dict(like=self.model)

    def averaged_text_weights(self) -> dict[str, torch.Tensor] | None:
        return None if self.text_ema is None else self.text_ema.state_dict(like=self.text.module)

