"""Learnable 3-D rotary position embedding (`rope.bands`) over (frame, row, column) token coordinates.

Coordinates of a token grid of `frames x rows x cols` (tokens, after patching):
  frame: the absolute latent frame index, counted from the first frame of the whole video, so a call
         that starts at chunk `slice_point` continues the numbering of the cached chunks;
  row, col: centred on the grid and rescaled so that the grid spans the area of a 16 x 16 token grid
         with its aspect ratio kept.
Each axis multiplies its coordinate by the same `bands` (head_dim // 8 frequencies), giving
3 * bands angles per token. The rotation is NeoX style: channel i pairs with channel i + 3 * bands,
for i < 3 * bands; channels from 6 * bands on pass through unrotated.

Every step is a float32 tensor op in the order of the official code, so the angles agree to the bit
(in particular the temporal coordinate goes through a divide-then-multiply that is an identity only up
to rounding).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Spatial coordinates are scaled to the extent of this many tokens (a 256 x 256 image, 8x VAE, 2x2 patch).
REFERENCE_TOKEN_AREA = 16 * 16


def default_bands(num_bands: int, temperature: float = 10000.0) -> torch.Tensor:
    """Inverse frequencies 1 / temperature^(k / num_bands), k = 0..num_bands-1, float32."""
    exponent = torch.arange(0, num_bands, 1, dtype=torch.int64).to(torch.float32) / num_bands
    return 1.0 / (temperature**exponent)


def _rescaled_axis(coord: torch.Tensor, size: int, reference: float) -> torch.Tensor:
    # Align the end points of `size` positions with those of `reference` positions ("EVA" resizing).
    if size == 1:
        return coord
    return coord / (size - 1) * (reference - 1)


class LearnableRotary3D(nn.Module):
    """Holds `bands` (head_dim // 8,) and builds per-token sin/cos tables."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        if head_dim % 8:
            raise ValueError(f"rotary head dim must be a multiple of 8, got {head_dim}")
        self.head_dim = head_dim
        self.bands = nn.Parameter(default_bands(head_dim // 8))

    @property
    def rotary_dim(self) -> int:
        """Number of head channels that are rotated: 2 * 3 axes * bands."""
        return 6 * self.bands.shape[0]

    def sin_cos(self, *, frames: int, rows: int, cols: int, first_frame: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """sin and cos tables, each (frames * rows * cols, 3 * bands) float32, tokens in (frame, row, col) order.

        The tokens are frames first_frame .. first_frame + frames - 1 of a grid that starts at frame 0;
        only these rows are built, which gives the same values as building the whole grid and slicing.
        """
        bands = self.bands.float()
        device = bands.device
        total_frames = first_frame + frames
        rescale = math.sqrt((rows * cols) / REFERENCE_TOKEN_AREA)

        frame_coord = torch.arange(first_frame, total_frames, dtype=torch.int64, device=device).to(torch.float32)
        frame_coord = _rescaled_axis(frame_coord, total_frames, total_frames)
        row_coord = torch.arange(rows, dtype=torch.int64, device=device).to(torch.float32) - (rows - 1) / 2
        row_coord = _rescaled_axis(row_coord, rows, rows / rescale)
        col_coord = torch.arange(cols, dtype=torch.int64, device=device).to(torch.float32) - (cols - 1) / 2
        col_coord = _rescaled_axis(col_coord, cols, cols / rescale)

        grid = torch.stack(torch.meshgrid(frame_coord, row_coord, col_coord, indexing="ij"), dim=-1)
        # (F, H, W, 3, 1) * (bands,) -> (F, H, W, 3, bands); angle index = axis * bands + k
        angles = grid.unsqueeze(-1) * bands
        tokens = frames * rows * cols
        return angles.sin().reshape(tokens, -1), angles.cos().reshape(tokens, -1)


def apply_rotary(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate (..., S, heads, hd) by per-token angles; sin, cos: (S, half) with 2 * half <= hd.

    Non-interleaved halves: (x_i, x_{i+half}) -> (x_i cos - x_{i+half} sin, x_i sin + x_{i+half} cos).
    """
    half = sin.shape[-1]
    s = sin[:, None, :]  # (S, 1, half): broadcast over heads (and leading batch axes)
    c = cos[:, None, :]
    first, second, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    rotated_first = first * c - second * s
    rotated_second = first * s + second * c
    return torch.cat([rotated_first, rotated_second, rest], dim=-1)


def apply_rotary_(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """`apply_rotary` in place on x (no autograd), bit for bit the same values with two temporaries, not six.

    first' = first*c - second*s and second' = second*c + first*s: the same roundings as above (a sum of two
    rounded products does not depend on their order), and the unrotated tail is never touched.
    """
    half = sin.shape[-1]
    s = sin[:, None, :]
    c = cos[:, None, :]
    first, second = x[..., :half], x[..., half : 2 * half]
    first_sin = first * s
    second_sin = second * s
    first.mul_(c).sub_(second_sin)
    second.mul_(c).add_(first_sin)
    return x
