"""The sampler against a fake DiT that obeys MagiDiT's call signature and records every call."""

import pytest
import torch

from magi1.config import EngineConfig, MagiConfig, ModelConfig, RuntimeConfig
from magi1.sampling.chunk_plan import plan_forward_steps
from magi1.sampling.guidance import WindowCall, combine_guidance, three_pass_velocity
from magi1.sampling.sampler import chunk_counts, emitted_frames, initial_noise, resume_prefix, sample_chunks
from magi1.sampling.schedule import time_grid

LC, CT, CW, H, W = 6, 4, 2, 4, 4
CTN = CW * (H // 2) * (W // 2)
CLEAN_T = float(torch.tensor(0.9999, dtype=torch.float32))


def make_config(distill=False, num_steps=8, num_frames=32):
    config = MagiConfig(
        model_config=ModelConfig(caption_max_length=LC, caption_channels=CT),
        runtime_config=RuntimeConfig(cfg_number=1 if distill else 3, num_steps=num_steps, window_size=4,
                                     chunk_width=CW, num_frames=num_frames, video_size_h=8 * H, video_size_w=8 * W,
                                     noise2clean_kvrange=[5, 4, 3, 2], clean_chunk_kvrange=1, seed=7),
        engine_config=EngineConfig(distill=distill),
    )
    config.validate()
    return config


class FakeCache:
    """Remembers, per chunk, what wrote its KV; checks reads against that."""

    def __init__(self):
        self.rows, self.reads, self.released = {}, [], 0

    def release_before(self, token):
        self.released = max(self.released, token)


class FakeDiT:
    """Returns the exact straight-path velocity towards TARGET, so every guidance mix lands on TARGET."""

    def __init__(self, config, distill=False):
        self.config, self.distill, self.calls = config.model_config, distill, []
        self.target = torch.linspace(-1, 1, 16 * H * W).reshape(1, 16, 1, H, W)

    def __call__(self, x, t, y, xattn_mask, kv_range, *, null_adaln, kv_cache=None, slice_point=0,
                 read_cache=False, write_cache=False, skip_last_chunk_write=False, step_size=None):
        batch, _, frames, _, _ = x.shape
        chunks = t.shape[1]
        assert y.shape == (batch * chunks, 1, LC, CT) and xattn_mask.shape == (batch * chunks, 1, LC)
        assert kv_range.shape == (batch * chunks, 2) and kv_range.dtype == torch.int32
        assert (step_size is not None) == self.distill
        self.calls.append(dict(x=x.clone(), t=t.clone(), y=y.clone(), mask=xattn_mask.clone(), kv=kv_range.tolist(),
                               null=null_adaln, cache=kv_cache is not None, sp=slice_point, read=read_cache,
                               write=write_cache, skip=skip_last_chunk_write, step_size=step_size))
        if kv_cache is not None and (read_cache or slice_point > 0):
            needed = {c for s, _ in kv_range.tolist() for c in range(s // CTN, slice_point)}
            for c in needed:
                assert c * CTN >= kv_cache.released, "read a released row"
                kv_cache.reads.append((c, kv_cache.rows[c]))
            if write_cache:
                for j in range(chunks - int(skip_last_chunk_write)):
                    kv_cache.rows[slice_point + j] = (float(t[0, j]), x[:, :, j * CW:(j + 1) * CW].float().clone())
        per_frame_t = t.float().repeat_interleave(CW, dim=1).view(batch, 1, frames, 1, 1)
        return (self.target - x.float()) / (1 - per_frame_t)


def run(config, model, cache, **kw):
    n = kw.pop("n_chunks", 4)
    y = torch.randn(2, n, LC, CT)
    masks = torch.ones(2, n, LC)
    noise = kw.pop("noise", initial_noise((1, 16, n * CW, H, W), 0))
    out, calls_at_yield = [], []
    for chunk in sample_chunks(model, config, y, masks, noise, kv_cache=cache, progress=False, **kw):
        out.append(chunk)
        calls_at_yield.append(len(model.calls))
    return y, masks, out, calls_at_yield


def test_t2v_base_three_passes_in_order():
    config = make_config()
    model, cache = FakeDiT(config), FakeCache()
    y, masks, out, calls_at_yield = run(config, model, cache)
    plan = plan_forward_steps(4, 4, 8, 0, [5, 4, 3, 2], 1)
    grid = time_grid(8)
    assert len(model.calls) == 3 * len(plan)
    for step, (full, pre, unc) in zip(plan, zip(*[iter(model.calls)] * 3)):
        extra = step.extra_clean_chunk
        t = grid[list(step.chunk_steps)]
        if extra:
            t = torch.cat([torch.tensor([CLEAN_T]), t])
        rows_c = y[0, step.chunk_start:step.chunk_end]
        rows_n = y[1, step.chunk_start:step.chunk_end]
        if extra:
            rows_c, rows_n = torch.cat([y[1, :1], rows_c]), torch.cat([y[1, :1], rows_n])
        for p in (full, pre):
            assert torch.equal(p["t"][0], t) and p["kv"] == [list(r) for r in step.key_ranges(CTN)]
            assert (p["sp"], p["read"], p["cache"]) == (step.slice_point, extra, True)
        assert (full["null"], full["write"], pre["null"], pre["write"]) == (False, False, True, True)
        assert torch.equal(full["y"][:, 0], rows_c) and torch.equal(pre["y"][:, 0], rows_n)
        n = step.chunk_end - step.chunk_start
        assert (unc["null"], unc["cache"], unc["sp"], unc["x"].shape[0]) == (True, False, 0, n)
        assert unc["kv"] == [[b * CTN, (b + 1) * CTN] for b in range(n)]
        assert torch.equal(unc["y"][:, 0], y[1, step.chunk_start:step.chunk_end])
        assert torch.equal(unc["t"][:, 0], grid[list(step.chunk_steps)])
    # each chunk once, right after the step that finished it, and clean
    finish = [s.index for s in plan if s.finished_chunk is not None]
    assert calls_at_yield == [3 * (i + 1) for i in finish]
    assert [c.shape for c in out] == [(1, 16, CW, H, W)] * 4
    for c in out:
        assert torch.allclose(c, model.target.expand_as(c), atol=1e-4)
    # every cached chunk that was read had been re-encoded at clean_t from its final latent
    assert cache.reads and {c for c, _ in cache.reads} == {0, 1, 2}
    for c, (t, x) in cache.reads:
        assert t == CLEAN_T and torch.equal(x, out[c])
    assert cache.released == 4 * CTN


def test_three_pass_velocity_mixes_recorded_outputs():
    config = make_config()
    outputs = []

    def model(x, t, y, m, kv, **kw):
        per_frame_t = t.repeat_interleave(CW, 1)[:, None, :, None, None]
        out = x * (2.0 if kw["null_adaln"] else 3.0) + (kw["kv_cache"] is None) * 5.0 + per_frame_t
        outputs.append(out)
        return out

    x = torch.randn(1, 16, 3 * CW, H, W)
    t = torch.tensor([[CLEAN_T, 0.5, 0.05]])
    call = WindowCall(x=x, t=t, y=torch.randn(2, 3, LC, CT), masks=torch.ones(2, 3, LC),
                      kv_range=torch.zeros(3, 2, dtype=torch.int32), slice_point=1, chunk_width=CW,
                      tokens_per_chunk=CTN, read_cache=True, extra_clean_chunk=True)
    v = three_pass_velocity(model, call, object(), config.runtime_config)
    full, pre, unc = outputs
    uncond = unc.transpose(0, 1).reshape(1, 16, 2 * CW, H, W)
    assert torch.equal(uncond, x[:, :, CW:] * 2 + 5 + t[:, 1:].repeat_interleave(CW, 1)[:, None, :, None, None])
    r = config.runtime_config
    expect = combine_guidance(full[:, :, CW:], pre[:, :, CW:], uncond, t[0, 1:], CW, r.cfg_t_range,
                              r.prev_chunk_scales, r.text_scales)
    assert torch.equal(v, expect)


def test_distill_single_pass_with_nearly_clean_copy():
    config = make_config(distill=True)
    model, cache = FakeDiT(config, distill=True), FakeCache()
    _, _, out, _ = run(config, model, cache)
    plan = plan_forward_steps(4, 4, 8, 0, [5, 4, 3, 2], 1)
    assert len(model.calls) == len(plan)
    grid = time_grid(8)
    for step, call in zip(plan, model.calls):
        assert (call["null"], call["write"], call["cache"], call["step_size"]) == (False, True, True, 4.0)
        oldest = int(step.extra_clean_chunk)
        nearly = float(grid[step.chunk_steps[0]]) > 0.3
        assert call["skip"] == nearly
        spans = [list(r) for r in step.key_ranges(CTN)]
        if nearly:
            top = max(max(s) for s in spans)
            assert call["kv"] == spans + [[top, top + CTN]]
            assert torch.equal(call["t"][0, -1], call["t"][0, oldest])
            assert torch.equal(call["x"][:, :, -CW:], call["x"][:, :, oldest * CW:(oldest + 1) * CW])
            assert torch.equal(call["y"][-1], call["y"][oldest])
        else:
            assert call["kv"] == spans
    # the step landing exactly on t = 0.3 (float32) counts as nearly clean
    assert any(call["skip"] and torch.isclose(call["t"][0], torch.tensor(0.3)).any() for call in model.calls)
    for c in out:
        assert torch.allclose(c, model.target.expand_as(c), atol=1e-4)


def test_i2v_image_frame_is_padded_and_emitted():
    config = make_config()
    n, clean = chunk_counts(32, 1, CW, 4)
    assert (n, clean) == (5, 0)
    model, cache = FakeDiT(config), FakeCache()
    prefix = torch.randn(1, 16, 1, H, W).to(torch.bfloat16)
    _, _, out, _ = run(config, model, cache, n_chunks=n, prefix_latent=prefix)
    assert [c.shape[2] for c in out] == [CW] * n  # chunk 0 includes the image frame
    padded = [c for c in model.calls if c["cache"] and c["sp"] == 0]
    assert padded and all(torch.equal(c["x"][:, :, 0], prefix[:, :, 0].float()) for c in padded)
    assert not any(c["x"].dtype == torch.bfloat16 for c in model.calls)  # no prefix extraction for i2v


def test_v2v_prefix_extraction_partial_chunk_and_resume():
    config = make_config()
    n, clean = chunk_counts(32, 3, CW, 4)
    assert (n, clean) == (6, 1)
    model, cache = FakeDiT(config), FakeCache()
    prefix = torch.randn(1, 16, 3, H, W).to(torch.bfloat16)
    y, _, out, _ = run(config, model, cache, n_chunks=n, prefix_latent=prefix)
    first = model.calls[0]
    assert first["x"].dtype == torch.bfloat16 and torch.equal(first["x"], prefix[:, :, :CW])
    assert (first["sp"], first["read"], first["write"], first["null"]) == (0, True, True, True)
    assert first["t"].tolist() == [[CLEAN_T]] and first["kv"] == [[0, CTN]]
    assert torch.equal(first["y"][:, 0], y[1, :1])
    assert cache.reads and cache.reads[0][0] == 0
    # the partial prefix chunk (chunk 1, frame 2) is overwritten whenever chunk 1 opens the call
    padded = [c for c in model.calls[1:] if c["cache"] and c["sp"] == 1]
    assert padded and all(torch.equal(c["x"][:, :, 0], prefix[:, :, 2].float()) for c in padded)
    assert [c.shape[2] for c in out] == [1, CW, CW, CW, CW]  # prefix frames are not emitted again
    assert emitted_frames(1, CW, 3) == (3, 4)

    # resume after two emitted chunks: they join the prefix and generation goes on with chunk 3
    resumed_prefix = resume_prefix(out[:2], prefix, CW)
    assert resumed_prefix.shape[2] == 3 + 1 + CW and torch.equal(resumed_prefix[:, :, 3:], torch.cat(out[:2], 2))
    model2 = FakeDiT(config)
    _, _, rest, _ = run(config, model2, FakeCache(), n_chunks=n, prefix_latent=resumed_prefix)
    assert len(rest) == 3 and model2.calls[0]["x"].shape[2] == 3 * CW


def test_default_noise_comes_from_the_seed():
    config = make_config()
    y, masks = torch.randn(2, 4, LC, CT), torch.ones(2, 4, LC)
    first = []
    model = FakeDiT(config)
    next(sample_chunks(model, config, y, masks, kv_cache=FakeCache(), progress=False))
    first.append(model.calls[0]["x"])
    model = FakeDiT(config)
    noise = initial_noise((1, 16, 4 * CW, H, W), config.runtime_config.seed)
    next(sample_chunks(model, config, y, masks, noise, kv_cache=FakeCache(), progress=False))
    assert torch.equal(first[0], model.calls[0]["x"])
    with pytest.raises(ValueError):
        next(sample_chunks(model, config, y, masks, noise[:, :, :-1], kv_cache=FakeCache(), progress=False))


def test_real_model_and_cache_release_changes_nothing():
    """Tiny real MagiDiT + KVCache: dropping rows no later step reads leaves the video unchanged."""
    dit = pytest.importorskip("magi1.models.dit")
    mc = ModelConfig(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=2, num_query_groups=1,
                     kv_channels=16, caption_max_length=LC, caption_channels=CT, params_dtype="torch.float32")
    config = MagiConfig(model_config=mc, runtime_config=RuntimeConfig(
        cfg_number=1, num_steps=4, chunk_width=CW, num_frames=24, video_size_h=8 * H, video_size_w=8 * W,
        noise2clean_kvrange=[5, 4, 3, 2], clean_chunk_kvrange=1), engine_config=EngineConfig(distill=True))
    torch.manual_seed(0)
    model = dit.MagiDiT(mc, distill=True)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    y, masks = torch.randn(2, 3, LC, CT), torch.ones(2, 3, LC)
    kept = list(sample_chunks(model, config, y, masks, release_cache=False, progress=False))
    released = list(sample_chunks(model, config, y, masks, release_cache=True, progress=False))
    assert len(kept) == 3 and all(torch.isfinite(c).all() for c in kept)
    assert all(torch.equal(a, b) for a, b in zip(kept, released))


def test_callback_every_step_progress_bar_and_early_stop():
    config = make_config()
    seen = []
    model = FakeDiT(config)
    y, masks = torch.randn(2, 4, LC, CT), torch.ones(2, 4, LC)
    gen = sample_chunks(model, config, y, masks, kv_cache=FakeCache(), progress=True,
                        callback=lambda step, latent: seen.append((step.index, latent.shape)))
    next(gen)
    gen.close()  # the consumer may stop after any chunk
    assert [i for i, _ in seen] == list(range(8)) and seen[0][1] == (1, 16, 4 * CW, H, W)


@pytest.mark.parametrize("distill", [False, True])
def test_a_batch_of_videos_equals_their_single_runs(distill):
    """Three videos in one batch (own captions, noise, v2v prefix, KV cache) == the three single runs."""
    from magi1.models.dit import MagiDiT

    mc = ModelConfig(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=2, num_query_groups=1,
                     kv_channels=16, caption_max_length=LC, caption_channels=CT, params_dtype="torch.float32")
    config = MagiConfig(model_config=mc, runtime_config=RuntimeConfig(
        cfg_number=1 if distill else 3, num_steps=8, window_size=4, chunk_width=CW, num_frames=24,
        video_size_h=8 * H, video_size_w=8 * W, noise2clean_kvrange=[5, 4, 3, 2], clean_chunk_kvrange=1),
        engine_config=EngineConfig(distill=distill))
    torch.manual_seed(0)
    model = MagiDiT(mc, distill=distill)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    n = 5  # 1 whole prefix chunk + a partial one (3 prefix frames), 4 generated
    ys, masks = torch.randn(2, 3, n, LC, CT), torch.ones(2, 3, n, LC)
    noise, prefix = torch.randn(3, 16, n * CW, H, W), torch.randn(3, 16, 3, H, W).to(torch.bfloat16)
    singles = [torch.cat(list(sample_chunks(model, config, ys[:, b], masks[:, b], noise[b : b + 1],
                                            prefix_latent=prefix[b : b + 1], progress=False)), 2) for b in range(3)]
    states = []
    batched = torch.cat(list(sample_chunks(model, config, ys, masks, noise, prefix_latent=prefix, progress=False,
                                           callback=lambda step, latent: states.append((step, latent.clone())))), 2)
    for b in range(3):  # equal up to float rounding (GEMM shapes differ with the batch)
        torch.testing.assert_close(batched[b : b + 1], singles[b], atol=1e-5, rtol=1e-5)
    # resuming a batch from a mid-run state gives the same videos
    step, latent = next((s, x) for s, x in states if s.finished_chunk is not None and s.finished_chunk >= 2)
    rest = torch.cat(list(sample_chunks(model, config, ys, masks, noise, prefix_latent=prefix, progress=False,
                                        resume_from=(step.index + 1, latent))), 2)
    torch.testing.assert_close(rest, batched[:, :, -rest.shape[2]:], atol=1e-5, rtol=1e-5)


def test_guidance_scales_override_exactly_the_guided_buckets():
    from magi1.sampling.guidance import guidance_overrides, override_scales

    official = RuntimeConfig()  # text [7.5, 7.5, 7.5, 0, 0], previous chunks [1.5, 1.5, 1.5, 1, 1]
    assert guidance_overrides(official, 5.0, 2.0) == {"text_scales": [5.0, 5.0, 5.0, 0.0, 0.0],
                                                      "prev_chunk_scales": [2.0, 2.0, 2.0, 1.0, 1.0]}
    assert guidance_overrides(official) == {}
    assert override_scales([0, 0, 0], 3.0, 0.0) == [3.0, 3.0, 3.0]  # nothing guided: every bucket
