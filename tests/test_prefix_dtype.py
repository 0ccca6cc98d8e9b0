"""The v2v prefix reaches the DiT in the dtype it is given (official extract_prefix_video_feature).

The official DiT computes `x * x_rescale_factor` in the prefix's own dtype and then casts to float32, so
a float32 prefix must not be rounded to bf16 on its way into the KV cache; the official prefix is bf16
only because the official VAE returns bf16, which `MagiPipeline.encode_prefix` reproduces.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magi1.config import EngineConfig, MagiConfig, ModelConfig, RuntimeConfig
from magi1.models import KVCache, MagiDiT

CW, H, W, LC, CT = 2, 4, 4, 4, 8
CTN = CW * (H // 2) * (W // 2)  # tokens per chunk with 2x2 patches


def _config(x_rescale_factor: float) -> MagiConfig:
    config = MagiConfig(
        model_config=ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=64, num_attention_heads=4,
                                 num_query_groups=2, kv_channels=16, caption_channels=CT, caption_max_length=LC,
                                 params_dtype="torch.float32", x_rescale_factor=x_rescale_factor),
        runtime_config=RuntimeConfig(cfg_number=3, num_steps=4, window_size=2, chunk_width=CW, num_frames=24,
                                     video_size_h=8 * H, video_size_w=8 * W, noise2clean_kvrange=[2, 1],
                                     clean_chunk_kvrange=1),
        engine_config=EngineConfig(),
    )
    config.validate()
    return config


def _cache_of(model, config, x: torch.Tensor, via_sampler: bool, y, masks) -> list[torch.Tensor]:
    """Cached K/V of the 2 prefix chunks in x: through `cache_prefix`, or one direct DiT call as official."""
    from magi1.sampling.sampler import cache_prefix

    cache = KVCache(2 * CTN, num_layers=config.model_config.num_layers)
    if via_sampler:
        cache_prefix(model, config, x, y, masks, cache, CTN, None)
    else:
        t = torch.full((1, 2), config.runtime_config.clean_t)
        self_only = torch.tensor([[0, CTN], [CTN, 2 * CTN]], dtype=torch.int32)
        model(x, t, y[1, :2, None], masks[1, :2, None], self_only, null_adaln=True, kv_cache=cache,
              slice_point=0, read_cache=True, write_cache=True)
    return [cache.layer(layer).clone() for layer in range(config.model_config.num_layers)]


@pytest.mark.parametrize("x_rescale_factor", [1.0, 0.1])  # 0.1 as 24B, where the multiply itself rounds
def test_cache_prefix_keeps_the_prefix_dtype(x_rescale_factor):
    config = _config(x_rescale_factor)
    torch.manual_seed(0)
    model = MagiDiT(config.model_config).eval()
    g = torch.Generator().manual_seed(1)
    prefix32 = torch.randn(1, 16, 2 * CW + 1, H, W, generator=g)  # 2 whole prefix chunks + 1 frame
    y, masks = torch.randn(2, 3, LC, CT, generator=g), torch.ones(2, 3, LC)
    whole = prefix32[:, :, : 2 * CW]
    with torch.no_grad():
        fp32 = _cache_of(model, config, prefix32, True, y, masks)
        bf16 = _cache_of(model, config, prefix32.to(torch.bfloat16), True, y, masks)
        # the official call takes x as given: float32 stays float32, bf16 stays bf16 (its multiply too)
        assert all(torch.equal(a, b) for a, b in zip(fp32, _cache_of(model, config, whole, False, y, masks)))
        official_bf16 = _cache_of(model, config, whole.to(torch.bfloat16), False, y, masks)
        assert all(torch.equal(a, b) for a, b in zip(bf16, official_bf16))
    # a float32 prefix that is not bf16-exact gives another cache than its bf16 rounding
    assert any(not torch.equal(a, b) for a, b in zip(fp32, bf16))


def _first_dit_input_dtype(pipe, **call) -> torch.dtype:
    """The dtype of x in the first DiT call of a v2v run (the prefix-extraction call)."""
    seen = []
    hook = pipe.dit.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    try:
        pipe("continue", num_frames=24, output_type="latent", **call)
    finally:
        hook.remove()
    return seen[0]


def test_pipeline_passes_the_callers_prefix_dtype_and_encodes_to_bf16(tiny_pipeline):
    h, w = tiny_pipeline.config.latent_size
    g = torch.Generator().manual_seed(2)
    prefix = torch.randn(1, 16, 8, h, w, generator=g)  # one whole prefix chunk of 6 + 2 frames
    assert _first_dit_input_dtype(tiny_pipeline, prefix_latents=prefix) == torch.float32
    assert _first_dit_input_dtype(tiny_pipeline, prefix_latents=prefix.to(torch.bfloat16)) == torch.bfloat16
    # a video goes through the VAE, whose latent is bf16 as the official VAE's
    video = np.random.default_rng(0).integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    encoded = tiny_pipeline.encode_prefix(tiny_pipeline.config, video=video)
    assert encoded.dtype == torch.bfloat16 and encoded.shape[2] == 8
    assert _first_dit_input_dtype(tiny_pipeline, video=video) == torch.bfloat16
