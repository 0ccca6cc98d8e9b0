"""The tensors a caller hands the Python API, taken in at the door of a run, before any heavy work.

numpy arrays are accepted wherever a tensor is (a user holding `np.load`-ed latents met
`'numpy.ndarray' object has no attribute 'float'` deep inside the sampler). NaN or infinite values are
refused: a NaN latent or embedding ran every step and came out as an all-black video. The check is one
`torch.isfinite` over what the user gave, never inside the sampling loop.
"""

from __future__ import annotations

import math
import numbers

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


def video_input(video):
    """The v2v video as a path or a uint8 (T, H, W, 3) array.

    Also taken, as diffusers passes videos: a list of PIL images or of (H, W, 3) arrays, a torch tensor
    (T, 3, H, W) or (T, H, W, 3), and float frames in [0, 1].
    """
    from .utils import video_to_uint8

    if isinstance(video, (list, tuple, torch.Tensor)) or (isinstance(video, np.ndarray)
                                                          and np.issubdtype(video.dtype, np.floating)):
        return video_to_uint8(video)
    return video
