import torch

from magi1.sampling.guidance import (
    blend_nearly_clean,
    combine_guidance,
    guidance_buckets,
    guidance_scales,
    is_nearly_clean,
)

RANGE = [0.0, 0.0217, 0.1, 0.3, 0.999]
PREV = [1.5, 1.5, 1.5, 1.0, 1.0]
TEXT = [7.5, 7.5, 7.5, 0.0, 0.0]


def test_buckets_with_edge_epsilon():
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    t = f32([0.0, 0.02, 0.0217, 0.05, 0.0999, 0.1, 0.29, 0.3, 0.5, 0.9989, 0.999, 0.9999, 1.0])
    assert guidance_buckets(t, RANGE).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4]
    # an edge minus 1e-7 in float32 still belongs to the bucket below
    just_below = torch.tensor(RANGE[3], dtype=torch.float32) - 1e-7
    assert guidance_buckets(just_below[None], RANGE).tolist() == [2]


def test_scales_and_formula():
    t = torch.tensor([0.05, 0.5], dtype=torch.float32)
    s_p, s_t = guidance_scales(t, RANGE, PREV, TEXT)
    assert s_p.tolist() == [1.5, 1.0] and s_t.tolist() == [7.5, 0.0]
    cw = 2
    full, pre, unc = (torch.randn(1, 3, 2 * cw, 2, 2) for _ in range(3))
    v = combine_guidance(full, pre, unc, t, cw, RANGE, PREV, TEXT)
    # t < 0.3: -0.5 uncond - 6 cond_pre + 7.5 cond_full; t >= 0.3: cond_pre exactly
    expect0 = (1 - 1.5) * unc[:, :, :cw] + (1.5 - 7.5) * pre[:, :, :cw] + 7.5 * full[:, :, :cw]
    assert torch.equal(v[:, :, :cw], expect0)
    assert torch.equal(v[:, :, cw:], pre[:, :, cw:])


def test_nearly_clean_threshold_float32_subtlety():
    assert is_nearly_clean(torch.tensor(0.3, dtype=torch.float32), 0.3)
    assert not is_nearly_clean(torch.tensor(0.2999, dtype=torch.float32), 0.3)
    assert not is_nearly_clean(torch.tensor(0.3, dtype=torch.float64), 0.3)


def test_blend():
    a, b = torch.randn(4), torch.randn(4)
    assert torch.equal(blend_nearly_clean(a, b), a * 0.7 + b * (1 - 0.7))
    assert torch.equal(blend_nearly_clean(a, b, 1.0), a)
