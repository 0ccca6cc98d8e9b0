"""MAGI-1's transformer VAE ("ViTVAE"): 8x spatial, 4x temporal, 16 latent channels.

Both halves are plain ViTs over a (T/4, H/8, W/8) grid of tokens, with a learned cls token and a learned
position embedding for one fixed grid (resized trilinearly for any other grid):

    encoder: video (B, 3, T, H, W) in [-1, 1] -> Conv3d patchify -> blocks -> moments (B, 32, T/4, H/8, W/8)
    decoder: latent (B, 16, t, h, w) -> Linear -> blocks -> un-patchify (B, C, 4t, 8h, 8w) -> Conv3d -> (B, 3, ...)

The attention normalises q, k AND v of every head with a parameter-free LayerNorm that divides by
(std + eps), and there is no LayerNorm in front of it. Attribute names equal the official state-dict names,
so the official `diffusion_pytorch_model.safetensors` loads without renaming.

Precision: every module computes in its parameters' dtype and casts its input to it. With bf16 weights
this is the official regime: the encoder runs in plain bf16; the official decoder runs under bf16 autocast,
where LayerNorms return float32 - but every LayerNorm output feeds a Linear or Conv3d that casts it back to
bf16, and a bf16 LayerNorm also computes in float32 and rounds once, so the values are the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.layout import CheckpointError
from ..ops.attention import attend
from ..runtime import default_dtype_for, own_host_storage, parse_dtype, pick_device

OFFICIAL_CLASS_NAME = "ViTVAE"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# Latents handed to the DiT are the posterior mean times this (the Stable Diffusion constant; no shift).
SCALE_FACTOR = 0.18215
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
NORM_EPS = 1e-5  # both the affine LayerNorms and the per-head q/k/v norm
# The official encode repeats a lone frame to 4 frames (a hard-coded 4, not the patch length).
SINGLE_FRAME_REPEAT = 4
PIXEL_CHANNELS_OUT = 3  # the decoder's Conv3d always ends in RGB


class VAEConfigError(ValueError):
    """A `ddconfig` that magi1 cannot build, or that the official code would not run as intended."""


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class VAEConfig:
    """The official `ddconfig` (the kwargs of both ViTEncoder and ViTDecoder). Defaults are the code's."""

    video_size: int = 256  # the pos-embed grid is (video_length / patch_length, video_size / patch_size, same)
    video_length: int = 16
    patch_size: int = 8  # spatial downsampling factor
    patch_length: int = 4  # temporal downsampling factor
    in_chans: int = 3
    z_chans: int = 4
    double_z: bool = True  # the encoder emits mean and log-variance
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    qk_scale: float | None = None  # accepted and ignored, as in the official code
    drop_rate: float = 0.0  # dropout: a no-op at inference
    attn_drop_rate: float = 0.0  # the official kernel would apply it even in eval(): must be 0
    drop_path_rate: float = 0.0  # the official blocks never build drop-path
    with_cls_token: bool = True
    norm_code: bool = False
    ln_in_attn: bool = False  # True: no LayerNorm before attention, per-head q/k/v norm inside it
    conv_last_layer: bool = False  # the official encoder ignores it; the decoder requires True
    use_rope: bool = False
    use_final_proj: bool = False

    def __post_init__(self) -> None:
        unsupported = {
            "use_rope": (self.use_rope, False, "the RoPE path is unfinished debug code in the official VAE"),
            "use_final_proj": (self.use_final_proj, False, "the released checkpoint has no final_proj"),
            "norm_code": (self.norm_code, False, "the released checkpoint does not L2-normalise latents"),
            "conv_last_layer": (self.conv_last_layer, True, "the official decoder only supports a Conv3d last layer"),
            "double_z": (self.double_z, True, "the encoder must emit mean and log-variance"),
            "with_cls_token": (self.with_cls_token, True, "the official pos-embed resize assumes a cls row"),
        }
        for name, (value, wanted, why) in unsupported.items():
            if bool(value) != wanted:
                raise VAEConfigError(f"ddconfig.{name}={value!r} is not supported (need {wanted}): {why}")
        if self.attn_drop_rate != 0:
            raise VAEConfigError(
                f"ddconfig.attn_drop_rate={self.attn_drop_rate} must be 0: the official attention kernel drops "
                "out even in eval mode, so outputs would be random"
            )
        if self.embed_dim % self.num_heads:
            raise VAEConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.pixels_per_token:
            raise VAEConfigError(
                f"embed_dim {self.embed_dim} must be a multiple of patch_length*patch_size^2 = "
                f"{self.pixels_per_token} so the decoder can un-patchify each token"
            )
        if min(self.patch_size, self.patch_length, self.video_size, self.video_length, self.depth) < 1:
            raise VAEConfigError("patch sizes, video size/length and depth must be positive")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def pixels_per_token(self) -> int:
        return self.patch_length * self.patch_size * self.patch_size

    @property
    def unpatch_channels(self) -> int:
        """Channels of the decoder's pixel grid before its last Conv3d (4 for the official model)."""
        return self.embed_dim // self.pixels_per_token

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def moment_channels(self) -> int:
        return 2 * self.z_chans

    @property
    def pos_embed_grid(self) -> tuple[int, int, int]:
        """The (t, h, w) token grid the learned position embedding was trained for."""
        side = self.video_size // self.patch_size
        return (self.video_length // self.patch_length, side, side)

    @classmethod
    def from_ddconfig(cls, ddconfig: Mapping[str, Any]) -> VAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(ddconfig) - known)
        if unknown:
            raise VAEConfigError(f"unknown ddconfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**dict(ddconfig))

    def to_ddconfig(self) -> dict[str, Any]:
        return asdict(self)


# The released MAGI-1 VAE (614 M parameters).
OFFICIAL_DDCONFIG: dict[str, Any] = dict(
    video_size=256,
    video_length=16,
    patch_size=8,
    patch_length=4,
    in_chans=3,
    z_chans=16,
    double_z=True,
    embed_dim=1024,
    depth=24,
    num_heads=16,
    mlp_ratio=4.0,
    qkv_bias=True,
    with_cls_token=True,
    norm_code=False,
    ln_in_attn=True,
    conv_last_layer=True,
    use_rope=False,
    use_final_proj=False,
)


def load_vae_config(folder: str | Path) -> VAEConfig:
    """Read `<folder>/config.json` of an official VAE folder."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in VAE folder {Path(folder)}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    class_name = raw.get("_class_name")
    if class_name != OFFICIAL_CLASS_NAME:
        raise CheckpointError(f"{path} has _class_name {class_name!r}; a MAGI-1 VAE folder has {OFFICIAL_CLASS_NAME!r}")
    model_type = raw.get("model_type", "vit")
    if model_type != "vit":
        raise CheckpointError(f"{path}: model_type {model_type!r} is not supported (only 'vit' exists officially)")
    if not isinstance(raw.get("ddconfig"), dict):
        raise CheckpointError(f"{path} has no 'ddconfig' object with the encoder/decoder hyper-parameters")
    return VAEConfig.from_ddconfig(raw["ddconfig"])


# ---------------------------------------------------------------------------------------------- layers
def normalize_per_head(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Parameter-free norm over the last axis: (x - mean) / (population std + eps).

    Written op by op on purpose: in bf16 each step rounds, as in the official code, and the divisor is
    std + eps, not sqrt(var + eps).
    """
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention over every token of the grid (cls included)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.normalize_qkv = config.ln_in_attn
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        # qkv rows are [q | k | v], each head-major: (B, L, 3D) -> (B, L, 3, heads, head_dim)
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        if self.normalize_qkv:
            qkv = normalize_per_head(qkv)
        q, k, v = qkv.unbind(dim=2)  # each (B, L, heads, head_dim)
        out = attend(q, k, v)  # (B, L, heads, head_dim), softmax scale 1/sqrt(head_dim)
        return self.proj(out.reshape(batch, length, dim))


class FeedForward(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_hidden)
        self.act = nn.GELU()  # exact erf GELU, not the tanh approximation
        self.fc2 = nn.Linear(config.mlp_hidden, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Residual attention then residual MLP; pre-norm only on the MLP when the q/k/v norm is on."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        # With ln_in_attn the official block has no norm1 at all (and no norm1.* weights).
        self.norm1 = nn.Identity() if config.ln_in_attn else nn.LayerNorm(config.embed_dim, eps=NORM_EPS)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=NORM_EPS)
        self.mlp = FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def resize_grid_embedding(
    grid_embed: torch.Tensor, source_grid: tuple[int, int, int], target_grid: tuple[int, int, int]
) -> torch.Tensor:
    """Trilinearly resize a (1, t*h*w, D) position embedding (t-major tokens) to another (t, h, w) grid.

    align_corners=False and no antialiasing; computed in the embedding's own dtype.
    """
    dim = grid_embed.shape[-1]
    # (1, t*h*w, D) -> (1, D, t, h, w), the layout interpolate wants
    volume = grid_embed.reshape(1, *source_grid, dim).permute(0, 4, 1, 2, 3)
    volume = F.interpolate(volume, size=target_grid, mode="trilinear", align_corners=False)
    # (1, D, t', h', w') -> (1, t'*h'*w', D)
    return volume.permute(0, 2, 3, 4, 1).reshape(1, math.prod(target_grid), dim)


class TokenTransformer(nn.Module):
    """What encoder and decoder share: cls token, learned position embedding, blocks, final norm."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        num_tokens = 1 + math.prod(config.pos_embed_grid)  # cls row first, then the grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, config.embed_dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.embed_dim, eps=NORM_EPS)

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed.dtype

    def position_embedding(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(1, 1 + t*h*w, D): the cls row as is, the grid rows resized when the grid differs."""
        if tuple(grid) == self.config.pos_embed_grid:
            return self.pos_embed
        resized = resize_grid_embedding(self.pos_embed[:, 1:], self.config.pos_embed_grid, tuple(grid))
        return torch.cat([self.pos_embed[:, :1], resized], dim=1)

    def transform(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, t*h*w, D) grid tokens -> (B, t*h*w, D) normalised outputs (cls token dropped)."""
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.position_embedding(grid)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1:]

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random initialisation in the official spirit: truncated normal(0.02) weights, zero biases."""
        for name, param in self.named_parameters():
            if param.is_meta:
                continue
            with torch.no_grad():
                if name.endswith("bias"):
                    param.zero_()
                elif param.ndim == 1:  # LayerNorm gains
                    param.fill_(1.0)
                else:
                    values = torch.randn(param.shape, generator=generator).clamp_(-2.0, 2.0) * 0.02
                    param.copy_(values)


class PatchEmbed(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        kernel = (config.patch_length, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_chans, config.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.to(self.proj.weight.dtype))


class ViTEncoder(TokenTransformer):
    """Video (B, C, T, H, W) in [-1, 1] -> moments (B, 2*z_chans, T // pt, H // p, W // p)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        self.patch_embed = PatchEmbed(config)
        self.last_layer = nn.Linear(config.embed_dim, config.moment_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, D, t, h, w)
        batch, _, *grid = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, t*h*w, D), t-major
        moments = self.last_layer(self.transform(tokens, tuple(grid)))  # (B, t*h*w, 2z)
        # (B, t*h*w, 2z) -> (B, 2z, t, h, w)
        return moments.reshape(batch, *grid, -1).permute(0, 4, 1, 2, 3)


class ViTDecoder(TokenTransformer):
    """Latent (B, z_chans, t, h, w) -> video (B, 3, t * pt, h * p, w * p), unclamped, roughly in [-1, 1]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        self.proj_in = nn.Linear(config.z_chans, config.embed_dim)
        self.last_layer = nn.Conv3d(config.unpatch_channels, PIXEL_CHANNELS_OUT, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch, channels, *grid = z.shape
        t, h, w = grid
        # (B, z, t, h, w) -> (B, t*h*w, z), t-major tokens
        tokens = z.permute(0, 2, 3, 4, 1).reshape(batch, t * h * w, channels)
        x = self.transform(self.proj_in(tokens.to(self.proj_in.weight.dtype)), (t, h, w))
        cfg = self.config
        pt, p, c = cfg.patch_length, cfg.patch_size, cfg.unpatch_channels
        # Each token holds a (pt, p, p, c) pixel block with the channel fastest:
        # (B, t*h*w, D) -> (B, t, h, w, pt, p, p, c) -> (B, c, t, pt, h, p, w, p) -> (B, c, t*pt, h*p, w*p)
        x = x.reshape(batch, t, h, w, pt, p, p, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        x = x.reshape(batch, c, t * pt, h * p, w * p)
        return self.last_layer(x.to(self.last_layer.weight.dtype))


# ---------------------------------------------------------------------------------------------- posterior
@dataclass
class LatentPosterior:
    """Diagonal Gaussian over latents; log-variance clamped to [-30, 20] as in the official code."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> LatentPosterior:
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * noise, the noise drawn on the CPU (as the official code does) then moved."""
        noise = torch.randn(self.mean.shape, generator=generator, dtype=torch.float32).to(self.mean)
        return self.mean + torch.exp(0.5 * self.logvar) * noise


# ---------------------------------------------------------------------------------------------- frame counts
def latent_frames_for(num_frames: int, temporal_factor: int = 4) -> int:
    """Latent frames the (untiled) encoder gives: 1 for one frame, else T // factor (leftovers dropped)."""
    if num_frames < 1:
        raise ValueError(f"cannot encode {num_frames} frames: the video is empty")
    if num_frames == 1:
        return 1
    if num_frames < temporal_factor:
        raise ValueError(
            f"cannot encode {num_frames} frames: the VAE encodes 1 frame or at least {temporal_factor} "
            f"(the official code crashes on {num_frames}); drop or repeat frames"
        )
    return num_frames // temporal_factor


def pixel_frames_for(num_latents: int, temporal_factor: int = 4) -> int:
    """Frames the (untiled) decoder gives: 1 for one latent frame, else factor * L."""
    if num_latents < 1:
        raise ValueError(f"cannot decode {num_latents} latent frames")
    return 1 if num_latents == 1 else temporal_factor * num_latents


# ---------------------------------------------------------------------------------------------- model
class ViTVAE(nn.Module):
    """The MAGI-1 VAE. `encode` gives the posterior mean (what the official pipeline uses); `decode` pixels.

    Neither applies the latent scale factor nor tiling: see `vae_helpers` and `vae_tiling`.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ViTEncoder(config)
        self.decoder = ViTDecoder(config)

    @property
    def spatial_factor(self) -> int:
        return self.config.patch_size

    @property
    def temporal_factor(self) -> int:
        return self.config.patch_length

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.pos_embed.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_weights(self, seed: int = 0) -> ViTVAE:
        """Fill with random weights (tests, training from scratch); returns self."""
        generator = torch.Generator().manual_seed(seed)
        self.encoder.init_weights(generator)
        self.decoder.init_weights(generator)
        return self

    # -- checks
    def _check_video(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"expected a video (B, C, T, H, W), got shape {tuple(x.shape)}")
        batch, channels, frames, height, width = x.shape
        if channels != self.config.in_chans:
            raise ValueError(
                f"expected {self.config.in_chans} channels in dim 1 of (B, C, T, H, W), got {channels} "
                f"(shape {tuple(x.shape)}); channels-last frames must be permuted first"
            )
        if batch < 1:
            raise ValueError("the batch is empty")
        latent_frames_for(frames, self.temporal_factor)
        p = self.spatial_factor
        if height < p or width < p or height % p or width % p:
            raise ValueError(f"height and width must be positive multiples of {p}, got {height}x{width}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating video in [-1, 1], got dtype {x.dtype}")

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 5:
            raise ValueError(f"expected a latent (B, C, t, h, w), got shape {tuple(z.shape)}")
        if z.shape[1] != self.config.z_chans:
            raise ValueError(f"expected {self.config.z_chans} latent channels in dim 1, got shape {tuple(z.shape)}")
        if min(z.shape[0], z.shape[2], z.shape[3], z.shape[4]) < 1:
            raise ValueError(f"empty latent of shape {tuple(z.shape)}")

    # -- forward paths
    def posterior(self, x: torch.Tensor) -> LatentPosterior:
        """Posterior for a video (B, C, T, H, W) in [-1, 1]; a single frame is repeated to 4 first."""
        self._check_video(x)
        if x.shape[2] == 1:
            # (B, C, 1, H, W) -> (B, C, 4, H, W); the lone frame's latent is latent frame 0
            moments = self.encoder(x.expand(-1, -1, max(SINGLE_FRAME_REPEAT, self.temporal_factor), -1, -1))
            moments = moments[:, :, :1]
        else:
            moments = self.encoder(x)
        return LatentPosterior.from_moments(moments)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Video (B, C, T, H, W) in [-1, 1] -> posterior mean (B, z, T', H/p, W/p) in the model dtype."""
        return self.posterior(x).mode().contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, z, t, h, w), unscaled -> video (B, 3, T, 8h, 8w); one latent frame gives one frame."""
        self._check_latent(z)
        video = self.decoder(z)
        if z.shape[2] == 1:
            video = video[:, :, :1]  # the decoder made 4 frames; the official code keeps the first
        return video

    # -- loading
    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
    ) -> ViTVAE:
        """Load an official VAE folder (`config.json` + `diffusion_pytorch_model.safetensors`), strictly.

        dtype: None = bf16 on an accelerator, float32 on the CPU (the parity reference).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"VAE folder {folder} does not exist")
        config = load_vae_config(folder)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            present = sorted(p.name for p in folder.iterdir())
            raise CheckpointError(
                f"no {WEIGHTS_NAME} in {folder} (found {present}); magi1 reads safetensors only, never pickles"
            )
        target_device = pick_device(device)
        target_dtype = parse_dtype(dtype) if dtype is not None else default_dtype_for(target_device)
        with torch.device("meta"):
            model = cls(config)
        state = read_vae_weights(weights, model, dtype=target_dtype, device=target_device)
        model.load_state_dict(state, strict=True, assign=True)
        own_host_storage(model)  # not views into the mmap'd file: offload's copies compute the same bits
        return model.eval().requires_grad_(False)


def read_vae_weights(
    path: Path, model: nn.Module, *, dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Read every tensor of `path` for `model`, one at a time, checking names and shapes first."""
    from safetensors import safe_open

    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    with safe_open(str(path), framework="pt") as handle:
        stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        missing = sorted(set(expected) - set(stored))
        unexpected = sorted(set(stored) - set(expected))
        misshaped = sorted(
            f"{name}: file {stored[name]} vs model {expected[name]}"
            for name in set(expected) & set(stored)
            if stored[name] != expected[name]
        )
        if missing or unexpected or misshaped:
            lines = [f"{path} does not match the VAE described by its config.json:"]
            for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
                if items:
                    shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
                    lines.append(f"  {title}: {shown}")
            raise CheckpointError("\n".join(lines))
        state = {}
        for name in expected:
            tensor = handle.get_tensor(name)
            if not tensor.is_floating_point():
                raise CheckpointError(f"{path}: tensor {name} has dtype {tensor.dtype}, expected floating point")
            state[name] = tensor.to(device=device, dtype=dtype)
    return state


def build_on_meta(config: VAEConfig | Mapping[str, Any] | None = None) -> ViTVAE:
    """The VAE with no storage (for counting parameters or planning memory); default: the official 614 M."""
    if config is None:
        config = OFFICIAL_DDCONFIG
    if not isinstance(config, VAEConfig):
        config = VAEConfig.from_ddconfig(config)
    with torch.device("meta"):
        return ViTVAE(config)
