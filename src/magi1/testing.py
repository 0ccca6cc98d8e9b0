"""Tiny random models in the official folder layouts, for tests and smoke runs (no network, seconds).

`make_tiny_model_folder(root)` writes a complete, loadable set:

    root/config.json                          official three-section config, paths relative to root
    root/dit/inference_weight/model.safetensors
    root/vae/{config.json, diffusion_pytorch_model.safetensors}
    root/t5/t5-v1_1-xxl/{config.json, model.safetensors, tokenizer files}

The weights are random, so the videos are noise; the point is that every real loading and sampling code
path runs exactly as it does for the official checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_T5_DIMS = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4}
TINY_CORPUS = [
    "a red ball bounces on the floor",
    "a blue square falls and slides to the left",
    "a green ball and a yellow square collide",
    "two balls roll apart on the ground",
]


def tiny_config_dict(*, height: int = 32, width: int = 32, num_frames: int = 48, num_steps: int = 4,
                     window_size: int = 2, distill: bool = False, caption_channels: int = 32,
                     caption_max_length: int = 64) -> dict:
    """An official-format config for a 2-layer DiT; 32x32 video, 2 chunks, 4 steps by default."""
    return {
        "model_config": {
            "model_name": "videodit_ardf", "num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128,
            "num_attention_heads": 4, "num_query_groups": 2, "kv_channels": 16, "layernorm_epsilon": 1e-06,
            "apply_layernorm_1p": True, "x_rescale_factor": 1, "half_channel_vae": False,
            "params_dtype": "torch.float32", "patch_size": 2, "t_patch_size": 1, "in_channels": 16,
            "out_channels": 16, "cond_hidden_ratio": 0.25, "caption_channels": caption_channels,
            "caption_max_length": caption_max_length, "xattn_cond_hidden_ratio": 1.0, "cond_gating_ratio": 1.0,
            "gated_linear_unit": False,
        },
        "runtime_config": {
            "cfg_number": 1 if distill else 3, "cfg_t_range": [0.0, 0.0217, 0.1, 0.3, 0.999],
            "prev_chunk_scales": [1.5, 1.5, 1.5, 1.0, 1.0], "text_scales": [7.5, 7.5, 7.5, 0.0, 0.0],
            "noise2clean_kvrange": [2, 1], "clean_chunk_kvrange": 1, "clean_t": 0.9999, "seed": 1234,
            "num_frames": num_frames, "video_size_h": height, "video_size_w": width, "num_steps": num_steps,
            "window_size": window_size, "fps": 24, "chunk_width": 6, "load": "./dit",
            "t5_pretrained": "./t5", "t5_device": "cpu", "vae_pretrained": "./vae", "scale_factor": 0.18215,
            "temporal_downsample_factor": 4,
        },
        "engine_config": {
            "distributed_backend": "gloo", "distributed_timeout_minutes": 1, "pp_size": 1, "cp_size": 1,
            "cp_strategy": "none", "ulysses_overlap_degree": 1, "fp8_quant": False,
            "distill_nearly_clean_chunk_threshold": 0.3, "shortcut_mode": "8,16,16", "distill": distill,
            "kv_offload": False, "enable_cuda_graph": False,
        },
    }


def tiny_vae_ddconfig(video_size: int = 32) -> dict:
    return {
        "attn_drop_rate": 0.0, "conv_last_layer": True, "depth": 1, "double_z": True, "drop_path_rate": 0.0,
        "drop_rate": 0.0, "embed_dim": 256, "in_chans": 3, "ln_in_attn": True, "mlp_ratio": 0.5,
        "norm_code": False, "num_heads": 4, "patch_length": 4, "patch_size": 8, "qk_scale": None,
        "qkv_bias": True, "use_final_proj": False, "use_rope": False, "video_length": 8,
        "video_size": video_size, "with_cls_token": True, "z_chans": 16,
    }


def write_vae_folder(vae, folder: str | Path) -> Path:
    """Save a ViTVAE in the official pretrained-folder layout."""
    from .checkpoint.writer import save_vae_folder

    return save_vae_folder(vae, folder)


def random_dit_state(model_config, *, distill: bool = False, seed: int = 0, std: float = 0.02) -> dict:
    """A MagiDiT state dict with small random weights (norm gains near their identity)."""
    from .models.dit import MagiDiT

    model = MagiDiT(model_config, distill=distill)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "rope.bands":
            state[name] = tensor.clone()
        else:
            state[name] = (torch.randn(tensor.shape, generator=gen) * std).to(tensor.dtype)
    return state


def make_tiny_model_folder(root: str | Path, *, seed: int = 0, **config_overrides) -> Path:
    """Write a complete tiny model set under `root` (see the module docstring); returns root/config.json."""
    from .checkpoint.writer import save_official
    from .config import MagiConfig
    from .models.vae import VAEConfig, ViTVAE
    from .train.text_demo import build_tiny_t5, save_text_encoder, save_tokenizer, train_tokenizer

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data = tiny_config_dict(caption_channels=TINY_T5_DIMS["d_model"], **config_overrides)
    config = MagiConfig.from_dict(data, source_dir=str(root))

    # Text encoder: a tokenizer trained on a few captions and a random 1-layer T5.
    tokenizer = train_tokenizer(TINY_CORPUS, vocab_size=120)
    tokenizer_dir = root / "_tokenizer"
    save_tokenizer(tokenizer, tokenizer_dir, config.model_config.caption_max_length)
    t5 = build_tiny_t5(tokenizer.get_vocab_size(), seed=seed, **TINY_T5_DIMS)
    save_text_encoder(t5, tokenizer_dir, root / "t5")

    # VAE: the official architecture, one block.
    vae_config = VAEConfig.from_ddconfig(tiny_vae_ddconfig(max(data["runtime_config"]["video_size_h"],
                                                               data["runtime_config"]["video_size_w"])))
    vae = ViTVAE(vae_config).init_weights(seed)
    write_vae_folder(vae, root / "vae")

    # DiT: random weights in the official single-file layout.
    distill = config.engine_config.distill
    weight_folder = root / "dit" / ("inference_weight.distill" if distill else "inference_weight")
    save_official(random_dit_state(config.model_config, distill=distill, seed=seed), weight_folder)

    config_path = root / "config.json"
    config_path.write_text(json.dumps(data, indent=4) + "\n")
    return config_path
