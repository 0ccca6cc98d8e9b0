"""KVCache: absolute-position reads/writes against a dense buffer, lazy allocation, release, model use."""

from __future__ import annotations

import pytest
import torch

from magi1.config import ModelConfig
from magi1.models import KVCache, MagiDiT
from magi1.models.kv_cache import CacheAccess

torch.set_num_threads(1)


def test_reads_and_writes_match_dense_buffer():
    g = torch.Generator().manual_seed(0)
    cache = KVCache(100, num_layers=2, block_tokens=7)
    dense = torch.zeros(2, 100, 3, 4)
    assert cache.nbytes() == 0  # lazily allocated
    for layer, start, n in [(0, 0, 20), (1, 5, 30), (0, 13, 9), (0, 60, 40), (1, 0, 3)]:
        kv = torch.randn(n, 3, 4, generator=g)
        cache.write(layer, start, kv)
        dense[layer, start : start + n] = kv
    for layer, start, end in [(0, 0, 100), (0, 14, 61), (1, 2, 35), (1, 40, 41), (0, 22, 22)]:
        assert torch.equal(cache.read(layer, start, end), dense[layer, start:end])
    assert cache.written_end(0) == 100 and cache.written_end(1) == 35
    assert torch.equal(cache.layer(1), dense[1, :35])


def test_dtype_follows_kv_and_offload_device():
    cache = KVCache(16, offload_device="cpu", block_tokens=8)
    cache.write(0, 0, torch.ones(4, 2, 6, dtype=torch.bfloat16))
    assert cache.read(0, 0, 4).dtype == torch.bfloat16 and cache.read(0, 0, 4).device.type == "cpu"
    with pytest.raises(ValueError):
        cache.write(0, 4, torch.ones(4, 2, 6, dtype=torch.float32))
    with pytest.raises(IndexError):
        cache.write(0, 14, torch.ones(4, 2, 6, dtype=torch.bfloat16))
    with pytest.raises(ValueError):
        cache.read(1, 0, 4)  # nothing cached for that layer


def test_release_frees_memory_and_later_rows_stay_correct():
    cache = KVCache(1000, block_tokens=10)
    data = torch.randn(100, 2, 8)
    cache.write(0, 0, data)
    cache.write(1, 0, data * 2)
    full = cache.nbytes()
    cache.release_before(35)
    assert cache.nbytes() == full * 70 // 100  # blocks 0-2 of both layers are gone
    assert torch.equal(cache.read(0, 35, 100), data[35:])
    assert torch.equal(cache.layer(1), data[35:] * 2)
    with pytest.raises(ValueError):
        cache.read(0, 30, 40)
    with pytest.raises(ValueError):
        cache.write(0, 20, data[:5])


def test_memory_stays_flat_for_a_rolling_window():
    cache = KVCache(10_000, block_tokens=16)
    sizes = []
    for chunk in range(40):
        cache.write(0, chunk * 16, torch.randn(16, 2, 4))
        cache.release_before(max(0, chunk - 3) * 16)  # keep the last 4 chunks
        sizes.append(cache.nbytes())
    assert max(sizes[4:]) == min(sizes[4:]) == 4 * 16 * 2 * 4 * 4


def test_cache_access_exchange():
    cache = KVCache(64, block_tokens=8)
    cache.write(0, 0, torch.arange(16.0).reshape(16, 1, 1).expand(16, 1, 2))
    kv = torch.full((1, 8, 1, 2), -1.0)
    merged = CacheAccess(cache, read_start=8, read_end=16, write_rows=4).exchange(0, kv)
    assert merged.shape == (1, 16, 1, 2)
    assert merged[0, :8, 0, 0].tolist() == list(range(8, 16)) and (merged[0, 8:] == -1).all()
    assert cache.written_end(0) == 20 and (cache.read(0, 16, 20) == -1).all()


def _tiny_model():
    config = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=64, num_attention_heads=4,
                         num_query_groups=2, kv_channels=16, caption_channels=8, caption_max_length=4,
                         params_dtype="torch.float32")
    torch.manual_seed(0)
    return MagiDiT(config)


def test_release_during_generation_keeps_outputs():
    """Chunk by chunk with a 2-chunk window: releasing rows outside the window changes nothing."""
    model = _tiny_model()
    ctn = 8  # 2 frames x 2x2 tokens
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 12, 4, 4, generator=g)  # 6 chunks
    y, mask = torch.randn(6, 1, 4, 8, generator=g), torch.ones(6, 1, 4)
    outputs = {}
    for release in (False, True):
        cache = KVCache(6 * ctn, num_layers=2)
        outs, sizes = [], []
        for c in range(6):
            # write this chunk's clean K/V (self-only span), then denoise it against the window
            xc = x[:, :, 2 * c : 2 * c + 2]
            kv_self = torch.tensor([[c * ctn, (c + 1) * ctn]], dtype=torch.int32)
            kv_window = torch.tensor([[max(0, c - 1) * ctn, (c + 1) * ctn]], dtype=torch.int32)
            outs.append(model(xc, torch.tensor([[0.5]]), y[c : c + 1], mask[c : c + 1], kv_window,
                              null_adaln=False, kv_cache=cache, slice_point=c))
            model(xc, torch.tensor([[0.9999]]), y[c : c + 1], mask[c : c + 1], kv_self, null_adaln=True,
                  kv_cache=cache, slice_point=c, read_cache=True, write_cache=True)
            if release:
                cache.release_before(c * ctn)  # the next chunk only looks back one chunk
            sizes.append(cache.nbytes())
        outputs[release] = torch.cat(outs, dim=2)
        if release:
            assert max(sizes[1:]) == min(sizes[1:])
    assert torch.equal(outputs[False], outputs[True])
