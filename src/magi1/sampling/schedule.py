"""Time convention, time grid and step sizes of the MAGI-1 sampler.

The convention, named once for the whole package:

    t = 0 is pure noise, t = 1 is clean data,
    x_t = (1 - t) * noise + t * data,
    velocity = d x_t / d t = data - noise.

Sampling integrates the model's velocity forward in t with Euler steps on `time_grid`.
"""

from __future__ import annotations

import torch

SD3_SHIFT = 3.0
SHORTCUT_STEPS = 12  # the one step count with a non-uniform (shortcut) base grid
SHORTCUT_MODES = ("8,16,16", "16,16,8")


def noisy_latent(noise: torch.Tensor, data: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t on the straight path from noise (t = 0) to data (t = 1)."""
    return (1 - t) * noise + t * data


def velocity_target(noise: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """The velocity the model predicts: constant along the straight path."""
    return data - noise


def clean_estimate(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The data the current velocity points at: x_t + (1 - t) * velocity (the path's end at t = 1)."""
    return x_t + (1 - t) * velocity


def _check_mode(shortcut_mode: str) -> None:
    if shortcut_mode not in SHORTCUT_MODES:
        raise ValueError(f"shortcut_mode must be one of {SHORTCUT_MODES}, got {shortcut_mode!r}")


def base_grid(num_steps: int, shortcut_mode: str = "8,16,16") -> torch.Tensor:
    """The grid before the shift transform, float32 of num_steps + 1 points from 0 to 1.

    Uniform, except at 12 steps where it repeats step sizes 1/8, 1/16, 1/16 ("8,16,16") or
    1/16, 1/16, 1/8 ("16,16,8"): the shortcut-distilled model was trained on those sizes.
    Every shortcut point is a multiple of 1/16, so the float32 values are exact however they are summed.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if num_steps != SHORTCUT_STEPS:
        return torch.linspace(0, 1, num_steps + 1, dtype=torch.float32)
    _check_mode(shortcut_mode)
    pattern = [1 / 8, 1 / 16, 1 / 16] if shortcut_mode == "8,16,16" else [1 / 16, 1 / 16, 1 / 8]
    points = [0.0]
    for size in pattern * (num_steps // 3):
        points.append(points[-1] + size)
    return torch.tensor(points, dtype=torch.float32)


def shift_transform(u: torch.Tensor, shift: float = SD3_SHIFT) -> torch.Tensor:
    """SD3 resolution shift, written for our direction of time (0 = noise): u / (shift - (shift - 1) u).

    Evaluated as the official float32 expression (1/shift) u / (1 + (1/shift - 1) u), whose scalars are
    rounded to float32 first; that is why the last grid point is 1.0000001, not 1.0.
    """
    if shift < 1.0:
        raise ValueError(f"shift must be >= 1, got {shift}")
    inv = 1.0 / shift
    return inv * u / (1 + (inv - 1) * u)


def time_grid(num_steps: int, shortcut_mode: str = "8,16,16", shift: float = SD3_SHIFT) -> torch.Tensor:
    """t for every step boundary: shift_transform(s^2) on the base grid s; float32, (num_steps + 1,).

    Squaring and shifting crowd the points near t = 0 (noise), where most of the structure is decided.
    Chunk steps k -> k + 1 go from time_grid[k] to time_grid[k + 1].
    """
    s = base_grid(num_steps, shortcut_mode)
    return shift_transform(s**2, shift)


def step_intervals(num_steps: int, shortcut_mode: str = "8,16,16") -> tuple[int, ...]:
    """Shortcut interval of each in-stage step index: 2 for a 1/8 step, 1 for a 1/16 step.

    As official: all ones, except when num_steps is a multiple of 3, where the pattern [2, 1, 1]
    ("8,16,16") or [1, 1, 2] ("16,16,8") repeats. Only the 12-step distill step size reads it.
    """
    if num_steps % 3:
        return (1,) * num_steps
    _check_mode(shortcut_mode)
    pattern = (2, 1, 1) if shortcut_mode == "8,16,16" else (1, 1, 2)
    return pattern * (num_steps // 3)


def distill_step_size(num_steps: int, interval: int = 1) -> float:
    """The step-size value a distilled model embeds next to t.

    Shortcut mode (12 steps): 8 for a 1/16 step (interval 1), 4 for a 1/8 step (interval 2).
    Otherwise num_steps / 2, whatever the interval: 8 at 16 steps, 32 at 64.
    """
    if num_steps == SHORTCUT_STEPS:
        return 4 / interval * 2
    return num_steps / 4 * 2
