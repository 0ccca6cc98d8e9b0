"""Train the transformer VAE (the official ViTVAE architecture, any ddconfig) on pixel clips.

Objective (report §3.2 lists L1 + KL + LPIPS + GAN; the last two need pretrained or adversarial networks
and are left out here): L1 + a small MSE on the reconstruction of a posterior sample, plus a light KL to
N(0, I) that keeps the posterior from collapsing to a point. Inference uses the posterior mean, so
training decodes a sample (robustness to small latent noise) and reports the mean's reconstruction too.

Clip lengths follow inference: the pipeline encodes and decodes in temporal tiles of fps/2 = 12 frames
(3 latent frames), and single images as one frame repeated 4× (1 latent frame), so training mixes 12-frame
crops, 4-frame crops and still images (the learned position table is resized to each grid, as at inference).
Short crops are cheap and most of what a decoder must learn (colours, shapes) is inside one latent frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import PixelClips
from .loop import EMA, step_generator, warmup_cosine
from .resume import load_optimizer_tensors, optimizer_tensors


def posterior(moments: torch.Tensor, logvar_range: tuple[float, float] = (-30.0, 20.0)):
    """Encoder moments (B, 2C, T, h, w) → (mean, logvar), logvar clamped as the official posterior does."""
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(*logvar_range)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def foreground_weights(pixels: torch.Tensor, extra: float) -> torch.Tensor:
    """(B, 1, T, H, W) loss weights: 1 + extra on pixels whose colour differs from the frame's median.

    [choice] Small objects on a plain background are a few percent of the pixels; without this the first
    hundreds of steps reconstruct only the background. The median colour of a frame is its background.
    """
    if extra <= 0:
        return torch.ones_like(pixels[:, :1])
    background = pixels.flatten(3).median(dim=3).values[..., None, None]  # (B, 3, T, 1, 1)
    differs = ((pixels - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
    return 1.0 + extra * differs


def change_magnitude_l1(recon: torch.Tensor, pixels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted L1 between how much each pixel changes from frame to frame in the reconstruction and the clip.

    [choice] A per-frame loss lets the decoder paint one frame per latent frame: while it cannot yet tell where
    an object is inside the 4 frames a latent covers, the frame that minimises L1 is the same "median" frame
    four times, with all the change at the latent-frame boundary. Matching the signed changes does not help
    (their L1 optimum under doubt is "no change" again); matching their magnitudes does: a frozen group costs
    the motion it misses, a jump at a boundary costs the change the clip does not have there.
    recon, pixels: (B, 3, T, H, W); weight: (B, 1, T, H, W). Every frame pair counts, across boundaries too.
    """
    change = lambda x: (x[:, :, 1:] - x[:, :, :-1]).abs()  # noqa: E731  (B, C, T-1, H, W)
    pair_weight = torch.maximum(weight[:, :, 1:], weight[:, :, :-1])
    return ((change(recon) - change(pixels)).abs() * pair_weight).mean()


@dataclass
class VAETrainSettings:
    steps: int = 1500
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    batch: int = 6
    lengths: tuple[int, ...] = (12, 4, 4, 1)        # frames per crop, drawn uniformly; 1 = image repeated 4x
    kl_weight: float = 1e-4
    mse_weight: float = 1.0
    temporal_weight: float = 0.0                    # L1 on frame-to-frame changes (see change_magnitude_l1)
    foreground_weight: float = 8.0                  # extra weight on pixels unlike the frame's background
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    train_encoder: bool = True                      # False: fine-tune the decoder only; latents stay as they are
    seed: int = 0


class VAETrainer:
    def __init__(self, vae: nn.Module, clips: PixelClips, settings: VAETrainSettings | None = None) -> None:
        self.vae = vae
        self.clips = clips
        self.settings = s = settings or VAETrainSettings()
        if not s.train_encoder:
            vae.encoder.requires_grad_(False)
        decay, keep = [], []
        for name, p in vae.named_parameters():
            if not p.requires_grad:
                continue
            (keep if p.ndim < 2 or "pos_embed" in name or "cls_token" in name else decay).append(p)
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                                            {"params": keep, "weight_decay": 0.0}], lr=s.lr, betas=s.betas)
        self.ema = EMA(vae, s.ema_decay)

    def reconstruct(self, pixels: torch.Tensor, generator: torch.Generator | None = None):
        """(B, 3, T, H, W) in [-1, 1] → (reconstruction of a posterior sample, mean, logvar)."""
        with torch.set_grad_enabled(self.settings.train_encoder and torch.is_grad_enabled()):
            mean, logvar = posterior(self.vae.encoder(pixels))
        z = mean
        if generator is not None:
            z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=generator)
        return self.vae.decoder(z), mean, logvar

    def train_step(self, step: int) -> dict[str, float]:
        s = self.settings
        for group in self.optimizer.param_groups:
            group["lr"] = s.lr * warmup_cosine(step, s.steps, s.warmup)
        self.vae.train()
        if not s.train_encoder:
            self.vae.encoder.eval()
        generator = step_generator(s.seed, step)
        length = s.lengths[int(torch.randint(len(s.lengths), (1,), generator=generator))]
        pixels = self.clips.sample(s.batch, length, generator)
        recon, mean, logvar = self.reconstruct(pixels, generator)
        weight = foreground_weights(pixels, s.foreground_weight)
        l1 = ((recon - pixels).abs() * weight).mean()
        mse = (recon - pixels).pow(2).mean()
        kl = kl_to_standard_normal(mean, logvar)
        loss = l1 + s.mse_weight * (weight * (recon - pixels).pow(2)).mean() + s.kl_weight * kl
        metrics = {}
        if s.temporal_weight > 0 and pixels.shape[2] > 1:
            temporal = change_magnitude_l1(recon, pixels, weight)
            loss = loss + s.temporal_weight * temporal
            metrics["dt_l1"] = float(temporal.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(self.vae.parameters(), s.grad_clip)
        self.optimizer.step()
        self.ema.update(self.vae)
        psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))  # peak-to-peak 2 in [-1, 1]
        return {"l1": float(l1.detach()), "kl": float(kl.detach()), "psnr": float(psnr), "grad": float(grad), **metrics}

    # ------------------------------------------------------------------ state
    def state_parts(self):
        tensors, meta = optimizer_tensors(self.optimizer)
        return ({"model": dict(self.vae.state_dict()), "ema": self.ema.state_dict(), "optim": tensors},
                {"optim": meta, "ema_updates": self.ema.updates})

    def load_state_parts(self, parts, meta) -> None:
        self.vae.load_state_dict(parts["model"])
        self.ema.load(parts["ema"], meta["ema_updates"])
        load_optimizer_tensors(self.optimizer, parts.get("optim", {}), meta["optim"])

    def averaged_weights(self) -> dict[str, torch.Tensor]:
        return self.ema.state_dict(like=self.vae)


@torch.no_grad()
def reconstruction_psnr(vae: nn.Module, pixels: torch.Tensor) -> float:
    """PSNR (dB, on [-1, 1] pixels) of decoding the posterior mean: what inference gets."""
    vae.eval()
    mean, _ = posterior(vae.encoder(pixels))
    recon = vae.decoder(mean).clamp(-1, 1)
    mse = F.mse_loss(recon, pixels)
    return float(10 * torch.log10(4.0 / mse.clamp_min(1e-10)))
