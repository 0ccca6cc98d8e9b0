"""What a diffusers user reaches for on a pipeline object: `.to()`, `save_pretrained`, latent previews.

`MagiPipeline` inherits these; they only move, write or read the models the pipeline already holds.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

logger = logging.getLogger(__name__)

SAVED_MODEL_NAME = "model"  # ckpt/magi/<name>/ when the pipeline is not an official variant


class DiffusersConventions:
    """Mixin for MagiPipeline (which provides config, dit, vae, text_encoder, device, special_tokens)."""

    variant: str | None = None  # the official variant the weights came from, if any
    special_tokens_path: str | None = None
    _preview = None

    # ------------------------------------------------------------------ placement
    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, *,
           torch_dtype: str | torch.dtype | None = None):
        """Move the DiT and the VAE (and T5, unless the config keeps it on the CPU) to `device` / `dtype`.

        As in diffusers: `pipe.to("cuda")`, `pipe.to(torch.bfloat16)`, `pipe.to("cuda", torch.float16)`.
        The DiT keeps its float32 islands (embedders, norms, final linear) whatever the dtype. T5 stays
        float32, as official. Returns the pipeline.
        """
        from .runtime import parse_dtype, pick_device

        if isinstance(device, torch.dtype) or (isinstance(device, str) and _is_dtype_name(device)):
            device, dtype = None, device
        dtype = torch_dtype if torch_dtype is not None else dtype
        if getattr(self, "parallel", None) is not None:
            raise InputError("a pipeline running under torchrun keeps the placement its launch gave it")
        target = pick_device(device) if device is not None else None
        dtype = parse_dtype(dtype) if dtype is not None else None
        if dtype is not None:
            self.dit.apply_precision(dtype)
        if target is not None:
            self.dit.to(target)
            self.device = target
        moves = {k: v for k, v in (("device", target), ("dtype", dtype)) if v is not None}
        if self.vae is not None and moves:
            self.vae.to(**moves)
        encoder = self.text_encoder
        if target is not None and encoder is not None and self.config.runtime_config.t5_device != "cpu":
            encoder.device = target
            if getattr(encoder, "_model", None) is not None:
                encoder._model.to(target)
        return self

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | Path, *, max_shard_size: int | None = 5 * 2**30) -> Path:
        """Write the pipeline in the official hub repository's layout; `from_pretrained(save_directory)` reads it.

            save_directory/config.json                                 the official three-section config
            save_directory/ckpt/magi/<variant>/inference_weight[...]/  the DiT, sharded above max_shard_size
            save_directory/ckpt/vae/                                   config.json + safetensors
            save_directory/ckpt/t5/t5-v1_1-xxl/                        T5 as loaded (it is never trained)
            save_directory/example/assets/special_tokens.npz           when the pipeline uses them

        <variant> is the official variant the weights came from, else "model".
        """
        from .checkpoint.layout import weight_dir_name
        from .checkpoint.writer import save_official, save_vae_folder
        from .hub import SPECIAL_TOKENS_PATH, T5_FOLDER, T5_PARENT, VAE_FOLDER

        if getattr(self, "parallel", None) is not None:
            raise InputError("save_pretrained needs the whole model in one process (not under torchrun)")
        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        e = self.config.engine_config
        load = f"ckpt/magi/{self.variant or SAVED_MODEL_NAME}"
        save_official(self.dit.state_dict(), root / load / weight_dir_name(distill=e.distill, fp8_quant=e.fp8_quant),
                      max_shard_bytes=max_shard_size)
        paths = {"load": f"./{load}", "vae_pretrained": None, "t5_pretrained": None}
        if self.vae is not None:
            save_vae_folder(self.vae, root / VAE_FOLDER)
            paths["vae_pretrained"] = f"./{VAE_FOLDER}"
        source = getattr(self.text_encoder, "folder", None)
        if source is not None:
            _copy_folder(Path(source), root / T5_FOLDER)
            paths["t5_pretrained"] = f"./{T5_PARENT}"
        elif self.text_encoder is not None:
            logger.warning("the text encoder has no folder on disk; save_pretrained leaves T5 out")
        if self.special_tokens_path:
            (root / SPECIAL_TOKENS_PATH).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.special_tokens_path, root / SPECIAL_TOKENS_PATH)
        data = self.config.to_dict()
        data["runtime_config"].update(paths)
        import json

        (root / "config.json").write_text(json.dumps(data, indent=4) + "\n")
        return root

    # ------------------------------------------------------------------ previews
    @property
    def latent_preview(self):
        """The LatentPreview of this pipeline's VAE (magi1.preview), loaded or fitted on first use."""
        if self._preview is None:
            from .preview import preview_for

            if self.vae is None:
                raise InputError("latent previews need the VAE (to fit or check the preview map)")
            folder = None
            try:
                folder = self.config.resolve_path(self.config.runtime_config.vae_pretrained)
            except Exception:  # an hf:// folder not in the cache: fit in memory
                pass
            self._preview = preview_for(self.vae, folder, fps=self.config.runtime_config.fps)
        return self._preview

    def latents_to_preview(self, latents: torch.Tensor, scale: int = 1) -> np.ndarray:
        """Scaled latents (B, 16, T, h, w) -> cheap uint8 RGB previews (B, T, h*scale, w*scale, 3).

        One colour per latent cell (4 frames x 8 x 8 pixels) from a linear map; costs nothing next to a step.
        """
        return self.latent_preview(latents, scale=scale)


def _copy_folder(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file():
            shutil.copyfile(item, target / item.name)


def _is_dtype_name(text: str) -> bool:
    from .runtime import parse_dtype

    try:
        parse_dtype(text)
        return True
    except ValueError:
        return False
