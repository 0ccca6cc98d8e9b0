import numpy as np
import pytest
import torch

from magi1.sampling.conditioning import build_conditioning
from magi1.sampling.special_tokens import SpecialTokens, ordered_positive

LC, CT = 12, 4


@pytest.fixture
def tokens(tmp_path):
    rng = np.random.default_rng(0)
    other = rng.normal(0, 0.125, size=(100, CT))
    # a value that float64 -> float16 and float64 -> float32 -> float16 round differently
    other[1, 0] = 1.0 + 2**-11 + 2**-40
    path = tmp_path / "special_tokens.npz"
    np.savez(path, caption_token=rng.normal(size=(1, CT)), logo_token=rng.normal(size=(1, CT)), other_tokens=other)
    return SpecialTokens.load(path), other


def test_tokens_are_float16_rounded_directly(tokens):
    st, other = tokens
    assert st["HQ"].dtype == torch.float32
    assert torch.equal(st["HQ"], torch.from_numpy(other[1].astype(np.float16).astype(np.float32)))
    assert float(st["HQ"][0]) == 1.0 + 2**-10  # direct rounding goes up; via float32 it would tie to 1.0
    assert torch.equal(st["DURATION_1"], torch.from_numpy(other[7].astype(np.float16).astype(np.float32)))
    assert torch.equal(st["DURATION_8"], st.duration(11))
    assert torch.equal(st["TWO_D_ANIME"], torch.from_numpy(other[16].astype(np.float16).astype(np.float32)))
    assert ordered_positive(["DURATION", "HQ"]) == ("HQ", "DURATION")


def _caption(tokens_used=5):
    emb = torch.randn(1, 1, LC, CT)
    mask = torch.zeros(1, LC, dtype=torch.int64)
    mask[:, :tokens_used] = 1
    return emb, mask


def test_official_layout_hq_duration(tokens):
    st, _ = tokens
    null = torch.randn(LC, CT)
    emb, mask = _caption()
    y, masks = build_conditioning(emb, mask, null, generated_chunks=4, special_tokens=st, null_token_length=3)
    assert y.shape == (2, 4, LC, CT) and masks.shape == (2, 4, LC)
    assert y.dtype == torch.float32 and masks.dtype == torch.float32
    for i in range(4):
        assert torch.equal(y[0, i, 0], st[f"DURATION_{4 - i}"])
        assert torch.equal(y[0, i, 1], st["HQ"])
        assert torch.equal(y[0, i, 2:], emb[0, 0, : LC - 2])
        assert masks[0, i].tolist() == [1.0] * 7 + [0.0] * 5
        assert torch.equal(y[1, i], null)
        assert masks[1, i].tolist() == [1.0] * 3 + [0.0] * 9


def test_prefix_rows_negative_tokens_and_per_chunk_captions(tokens):
    st, _ = tokens
    null = torch.randn(LC, CT)
    scenes = torch.randn(3, LC, CT)
    mask = torch.ones(3, LC)
    y, masks = build_conditioning(scenes, mask, null, generated_chunks=3, prefix_chunks=2, special_tokens=st,
                                  positive_tags=("HQ",), negative_tokens=True)
    assert y.shape == (2, 5, LC, CT)
    assert torch.equal(y[0, :2], null.expand(2, LC, CT)) and masks[0, :2].sum() == 0
    for i in range(3):
        assert torch.equal(y[0, 2 + i, 0], st["HQ"]) and torch.equal(y[0, 2 + i, 1:], scenes[i, :-1])
        assert masks[0, 2 + i].sum() == LC  # truncated to Lc
    for row in y[1]:
        for j, tag in enumerate(["BORDERNESS", "TRANS", "LOGO", "CAPTION"]):
            assert torch.equal(row[j], st[tag])
        assert torch.equal(row[4:], null[: LC - 4])
    assert masks[1, :, :LC].sum(dim=1).tolist() == [float(min(50, LC))] * 5


def test_no_tokens_and_empty_caption():
    null = torch.randn(LC, CT)
    emb, mask = _caption()
    y, masks = build_conditioning(emb[0, 0], mask[0], null, generated_chunks=2, positive_tags=())
    assert torch.equal(y[0, 0], emb[0, 0]) and masks[0, 1].sum() == 5
    y, masks = build_conditioning(emb, torch.zeros_like(mask), null, generated_chunks=2, positive_tags=())
    assert torch.equal(y[0], y[1]) and torch.equal(masks[0], masks[1])
    with pytest.raises(ValueError):
        build_conditioning(emb, mask, null, generated_chunks=2)  # HQ/DURATION asked, no tokens given
    with pytest.raises(ValueError):
        build_conditioning(torch.randn(3, LC, CT), torch.ones(3, LC), null, generated_chunks=2, positive_tags=())
