"""The three computations the parallel tests compare with the single-process result, on tiny models.

Shared by the test (single-process reference, in the pytest process) and by worker.py (one rank of a
launch). Sizes are picked to exercise the awkward paths: 9 tokens per latent frame, so with cp 4 the
shards are uneven and cut through chunks; 2 KV groups, so cp 4 repeats KV groups.
"""

from __future__ import annotations

import torch

from magi1.config import EngineConfig, MagiConfig, ModelConfig, RuntimeConfig
from magi1.models.dit import MagiDiT
from magi1.models.kv_cache import KVCache
from magi1.models.vae import VAEConfig, ViTVAE
from magi1.models.vae_tiling import TileSettings
from magi1.sampling.sampler import sample_chunks

LC, CT = 16, 32            # caption tokens and channels
CW, H, W = 2, 6, 6         # latent frames per chunk, latent size -> 3x3 tokens per frame, 18 per chunk
CTN = CW * (H // 2) * (W // 2)
N_CHUNKS = 3


def make_config(cp: int = 1, pp: int = 1, overlap: int = 1, num_steps: int = 4) -> MagiConfig:
    config = MagiConfig(
        model_config=ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                                 num_query_groups=2, kv_channels=16, caption_channels=CT, caption_max_length=LC,
                                 params_dtype="torch.float32"),
        runtime_config=RuntimeConfig(cfg_number=3, num_steps=num_steps, window_size=2, chunk_width=CW,
                                     num_frames=4 * CW * N_CHUNKS, video_size_h=8 * H, video_size_w=8 * W,
                                     noise2clean_kvrange=[5, 4, 3, 2], clean_chunk_kvrange=1, seed=7),
        # "nccl" as in the official configs: on CPU processes it must fall back to gloo.
        engine_config=EngineConfig(distributed_backend="nccl", cp_size=cp, pp_size=pp,
                                   cp_strategy="cp_ulysses" if cp > 1 else "none", ulysses_overlap_degree=overlap),
    )
    config.validate()
    return config


def tiny_dit(config: MagiConfig, seed: int = 0) -> MagiDiT:
    torch.manual_seed(seed)
    model = MagiDiT(config.model_config)
    with torch.no_grad():  # non-zero norm gains and biases so that every parameter matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def text_inputs(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption rows (2, N_CHUNKS, LC, CT) and masks (2, N_CHUNKS, LC): row 0 text, row 1 null."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(2, N_CHUNKS, LC, CT, generator=g)
    lengths = torch.randint(2, LC + 1, (2, N_CHUNKS), generator=g)
    masks = (torch.arange(LC)[None, None, :] < lengths[..., None]).float()
    return y, masks


def dit_forward(model: MagiDiT) -> dict[str, torch.Tensor]:
    """One clean pass writing 2 chunks into a KV cache, then a 3-chunk window reading it (slice_point 2),
    then a batch of 3 single chunks (the unconditional pass's shape)."""
    g = torch.Generator().manual_seed(11)
    cache = KVCache(5 * CTN, num_layers=model.config.num_layers)
    x0 = torch.randn(1, 16, 2 * CW, H, W, generator=g)
    y0 = torch.randn(2, 1, LC, CT, generator=g)
    m0 = torch.ones(2, 1, LC)
    m0[:, :, LC // 2:] = 0
    spans0 = torch.tensor([[0, CTN], [CTN, 2 * CTN]], dtype=torch.int32)
    clean = model(x0, torch.full((1, 2), 0.9999), y0, m0, spans0, null_adaln=True, kv_cache=cache,
                  read_cache=True, write_cache=True)
    x1 = torch.randn(1, 16, 3 * CW, H, W, generator=g)
    t1 = torch.tensor([[0.8, 0.4, 0.1]])
    y1 = torch.randn(3, 1, LC, CT, generator=g)
    m1 = (torch.arange(LC)[None, None, :] < torch.tensor([3, 9, 16])[:, None, None]).float()
    spans1 = torch.tensor([[0, 3 * CTN], [CTN, 4 * CTN], [2 * CTN, 5 * CTN]], dtype=torch.int32)
    window = model(x1, t1, y1, m1, spans1, null_adaln=False, kv_cache=cache, slice_point=2)
    xb = torch.randn(3, 16, CW, H, W, generator=g)
    spans_b = torch.tensor([[b * CTN, (b + 1) * CTN] for b in range(3)], dtype=torch.int32)
    batch = model(xb, t1.reshape(3, 1), y1, m1, spans_b, null_adaln=True)
    return {"clean": clean, "window": window, "batch": batch}


def t2v(model: MagiDiT, config: MagiConfig, y: torch.Tensor, masks: torch.Tensor, callback=None) -> torch.Tensor:
    """The whole tiny text-to-video run (3-pass guidance): every emitted chunk, concatenated in time."""
    chunks = sample_chunks(model, config, y, masks, seed=5, progress=False, callback=callback)
    return torch.cat(list(chunks), dim=2)


def tiny_vae(seed: int = 0) -> ViTVAE:
    config = VAEConfig(video_size=32, video_length=8, patch_size=8, patch_length=4, z_chans=4, embed_dim=256,
                       depth=1, num_heads=4, qkv_bias=True, ln_in_attn=True, conv_last_layer=True)
    return ViTVAE(config).init_weights(seed).eval().requires_grad_(False)


# 32 px tiles (4 latents, stride 3, 8 px ramps), 8 frames (2 latents) per temporal tile: a 3 x 6 x 8
# latent gives 2 x 2 x 3 = 12 tiles of 5 different sizes.
VAE_TILES = TileSettings(height=32, width=32, length=8)


def vae_latent(seed: int = 4) -> torch.Tensor:
    return torch.randn(1, 4, 3, 6, 8, generator=torch.Generator().manual_seed(seed))
