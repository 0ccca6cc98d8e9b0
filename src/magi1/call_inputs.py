"""What a caller hands the Python API, taken in at the door of a run (or a load), before any heavy work.

numpy arrays are accepted wherever a tensor is (a user holding `np.load`-ed latents met
`'numpy.ndarray' object has no attribute 'float'` deep inside the sampler). NaN or infinite values are
refused: a NaN latent or embedding ran every step and came out as an all-black video. The check is one
`torch.isfinite` over what the user gave, never inside the sampling loop.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np
import torch

from .errors import InputError


def tensor_input(value, name: str) -> torch.Tensor | None:
    """`value` (a torch tensor or a numpy array, or None) as a torch tensor whose floats are all finite."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        try:
            value = torch.from_numpy(np.array(value))  # a copy: read-only arrays work, the caller's is untouched
        except TypeError:
            raise InputError(f"{name} must hold numbers, got a numpy array of {value.dtype}") from None
    elif not isinstance(value, torch.Tensor):
        raise InputError(f"{name} must be a torch tensor or a numpy array, got {type(value).__name__}")
    check_finite(value, name)
    return value


def check_finite(tensor: torch.Tensor, name: str) -> None:
    if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InputError(f"{name} holds {bad} NaN or infinite value{'s' if bad != 1 else ''}; every value must be "
                         f"a finite number")


def finite_number(value, name: str) -> float:
    """A real, finite number (a LoRA scale, say) as a float; NaN ran to an all-black video."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_seed_or_generator(seed, generator) -> None:
    """Noise comes from one of them: with both, the seed used to be dropped without a word."""
    if seed is not None and generator is not None:
        raise InputError("give seed or generator, not both (a generator carries its own seed: "
                         "torch.Generator().manual_seed(n))")


def image_input(image):
    """The i2v image in a form the image checks take: a path, a PIL image or a numpy array.

    diffusers hands images around as torch tensors too, (3, H, W) or (1, 3, H, W) float in [0, 1] (or
    channels last, or uint8): they become numpy arrays here. Float pixels must lie in [0, 1]; a [0, 255]
    float image was clipped to a white page.
    """
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 4 and tensor.shape[0] == 1:  # a batch of one
            tensor = tensor[0]
        if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        if tensor.dim() not in (2, 3):
            raise InputError(f"an image tensor must be (3, H, W), (1, 3, H, W) or (H, W, 3), got shape "
                             f"{tuple(image.shape)}")
        image = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating):
        from .utils import check_float_pixels

        check_float_pixels(image, "float image pixels")
    return image


def video_input(video, prefix_from: str = "start"):
    """The v2v video as a path or a uint8 (T, H, W, 3) array.

    Also taken, as diffusers passes videos: a list of PIL images or of (H, W, 3) arrays, a torch tensor
    (T, 3, H, W) or (T, H, W, 3), and float frames in [0, 1]. Only the frames v2v reads (the first or last
    PREFIX_FRAMES, as preflight cuts arrays) are converted: a long clip of large frames is not copied whole.
    """
    from .preflight import PREFIX_FRAMES
    from .utils import video_to_uint8

    if isinstance(video, (list, tuple, torch.Tensor)) or (isinstance(video, np.ndarray)
                                                          and np.issubdtype(video.dtype, np.floating)):
        return video_to_uint8(video[-PREFIX_FRAMES:] if prefix_from == "end" else video[:PREFIX_FRAMES])
    return video


# ---------------------------------------------------------------------------------------------- from_pretrained
def check_local_source(name_or_path, variant) -> None:
    """A path from_pretrained cannot read, in one sentence: './missing' was taken for a hub repository id
    ("give variant="), a folder without config.json was "config file not found", an mp4 a UnicodeDecodeError."""
    from .config import PRESET_NAMES

    if variant is not None or isinstance(name_or_path, _magi_config()):
        return  # a folder with variant: the hub layout, checked where it is read
    text = os.fspath(name_or_path)
    if text in PRESET_NAMES:
        return
    what = "from_pretrained takes a preset name, a folder from save_pretrained, a config JSON or a hub repository id"
    if not text.strip():
        raise InputError(f"the name or path is empty; {what}")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"the folder {path} has no config.json (save_pretrained writes one); a folder from "
                             f"`magi1 download --dir` needs variant=, e.g. variant='4.5B_distill'")
    elif path.is_file():
        if path.suffix.lower() != ".json":
            raise InputError(f"{path} is not a config JSON; {what}")
    elif (isinstance(name_or_path, os.PathLike) or text.startswith((".", "/", "~"))
          or text.lower().endswith(".json")):  # a path, not a preset name or a repository id
        shown = text if str(path) == os.path.normpath(text) else f"{text} ({path})"
        raise InputError(f"{shown} does not exist; {what}")


def check_load_options(name_or_path, *, offload, weights, blocks_on_device) -> None:
    """from_pretrained's own options, refused in one sentence before any weights load (offload="bogus" used to
    load the whole model first, and weights="bogus" was taken silently)."""
    from .memory.modes import DEFAULT_BLOCKS_ON_DEVICE, OFFLOAD_MODES, WEIGHT_FORMATS

    if not isinstance(name_or_path, (str, os.PathLike, _magi_config())):
        raise InputError(f"pretrained_model_name_or_path must be a preset name, a folder, a config JSON or a hub "
                         f"repository id (with variant=), got {type(name_or_path).__name__} {name_or_path!r}")
    if offload not in (*OFFLOAD_MODES, "auto"):
        raise InputError(f"offload must be one of {', '.join((*OFFLOAD_MODES, 'auto'))}, got {offload!r}")
    if weights not in WEIGHT_FORMATS:
        raise InputError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    if weights == "bf16" and isinstance(name_or_path, _magi_config()) and name_or_path.engine_config.fp8_quant:
        from .memory.planner import FP8_CHECKPOINT_NOT_BF16

        raise InputError(FP8_CHECKPOINT_NOT_BF16)
    if blocks_on_device is None:  # not given: 2 wherever block offload runs
        return
    if isinstance(blocks_on_device, bool) or not isinstance(blocks_on_device, numbers.Integral) \
            or blocks_on_device < 1:
        raise InputError(f"blocks_on_device must be a whole number >= 1, got {blocks_on_device!r}")
    # Refused rather than warned about: a K given with offload "none" or "model" would do nothing, and whoever
    # gives it expects the device to hold only K layers (a warning scrolls past before the run fills the
    # memory). from_pretrained's signature still defaults to 2, so an explicit 2 passes until it says None.
    if offload in ("none", "model") and blocks_on_device != DEFAULT_BLOCKS_ON_DEVICE:
        raise InputError(f"blocks_on_device {blocks_on_device} only applies to block offload (offload blocks, or "
                         f"auto when it picks blocks), and offload is {offload}: drop it or offload blocks")


def _magi_config():
    from .config import MagiConfig

    return MagiConfig
