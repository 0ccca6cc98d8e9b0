"""3-D rotary embedding: bands, coordinates, slicing by first frame, rotation, model positions."""

from __future__ import annotations

import torch

from magi1.config import ModelConfig
from magi1.models import MagiDiT
from magi1.models.rope import LearnableRotary3D, apply_rotary, default_bands

torch.set_num_threads(1)


def test_default_bands():
    bands = default_bands(16)
    expected = torch.tensor([1 / 10000 ** (k / 16) for k in range(16)], dtype=torch.float32)
    torch.testing.assert_close(bands, expected)
    rope = LearnableRotary3D(128)
    assert rope.bands.shape == (16,) and rope.rotary_dim == 96


def test_coordinates_absolute_frames_and_centred_space():
    rope = LearnableRotary3D(8)  # one band per axis
    with torch.no_grad():
        rope.bands.fill_(0.1)  # small enough that no angle wraps
    rows, cols = 16, 16  # rescale 1: coordinates are the centred token indices
    sin, cos = rope.sin_cos(frames=2, rows=rows, cols=cols, first_frame=5)
    coords = (torch.atan2(sin, cos) / 0.1).reshape(2, rows, cols, 3)  # frame, row, col
    torch.testing.assert_close(coords[:, 0, 0, 0], torch.tensor([5.0, 6.0]))
    torch.testing.assert_close(coords[0, :, 0, 1], torch.arange(rows) - 7.5)
    torch.testing.assert_close(coords[0, 0, :, 2], torch.arange(cols) - 7.5)


def test_aspect_rescale_matches_spec_extent():
    rope = LearnableRotary3D(8)
    with torch.no_grad():
        rope.bands.fill_(0.01)  # small bands keep angles unwrapped
    sin, cos = rope.sin_cos(frames=1, rows=45, cols=80)
    angles = torch.atan2(sin, cos).reshape(45, 80, 3) / 0.01
    assert abs(angles[:, 0, 1].max().item() - 5.5) < 1e-3
    assert abs(angles[0, :, 2].max().item() - 10.1667) < 1e-3


def test_first_frame_slice_equals_tail_of_full_grid():
    rope = LearnableRotary3D(32)
    full_sin, full_cos = rope.sin_cos(frames=7, rows=3, cols=5)
    sin, cos = rope.sin_cos(frames=3, rows=3, cols=5, first_frame=4)
    assert torch.equal(sin, full_sin[-45:]) and torch.equal(cos, full_cos[-45:])


def test_apply_rotary_rotates_halves_and_keeps_tail():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 32, generator=g)  # (B, S, heads, hd), 12 angles -> 24 rotated channels
    theta = torch.randn(5, 12, generator=g)
    out = apply_rotary(x, theta.sin(), theta.cos())
    as_complex = torch.complex(x[..., :12], x[..., 12:24]) * torch.exp(1j * theta)[None, :, None, :]
    torch.testing.assert_close(out[..., :12], as_complex.real)
    torch.testing.assert_close(out[..., 12:24], as_complex.imag)
    assert torch.equal(out[..., 24:], x[..., 24:])


def test_model_rope_continues_after_slice_point():
    config = ModelConfig(num_layers=1, hidden_size=64, ffn_hidden_size=64, num_attention_heads=4,
                         num_query_groups=2, kv_channels=16, caption_channels=8, caption_max_length=4,
                         params_dtype="torch.float32")
    torch.manual_seed(0)
    model = MagiDiT(config)
    x = torch.randn(1, 16, 4, 4, 4)  # 2 chunks of 2 frames, 2x2 tokens per frame
    y, mask = torch.randn(2, 1, 4, 8), torch.ones(2, 1, 4)
    kv = torch.tensor([[0, 8], [0, 16]], dtype=torch.int32)
    _, record = model(x, torch.rand(1, 2), y, mask, kv, null_adaln=False, slice_point=3, return_intermediates=True)
    sin, cos = model.rope.sin_cos(frames=10, rows=2, cols=2)  # frames 0..9: cached chunks 0-2 then 3-4
    torch.testing.assert_close(record["pre.rope"], torch.cat([sin, cos], -1)[-16:], atol=0, rtol=0)
