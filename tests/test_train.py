"""Training: the objective's pieces (time sampler, targets) and that a few steps lower the loss."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magi1.train import losses
from magi1.train.losses import MonotoneChunkTimeSampler


# ------------------------------------------------------------------------------------------- time samplers
def test_logit_normal_shift_puts_most_mass_near_noise():
    t = losses.sample_logit_normal((20000,), generator=torch.Generator().manual_seed(0))
    assert 0.0 < float(t.min()) and float(t.max()) < 1.0
    # paper-notes §1.2: about 70% of draws below t = 0.3, median about 0.25
    assert 0.66 < losses.fraction_below(t, 0.3) < 0.72
    assert 0.22 < float(t.median()) < 0.28


def test_inference_schedule_matches_the_official_grid_and_inverts():
    s = torch.linspace(0, 1, 17)
    t = losses.inference_schedule(s)
    expected = [0, .00131, .00526, .0120, .02174, .03482, .05172, .07313, .1000, .13366, .17606, .23004, .3000,
                .39302, .52128, .70755, 1.0]
    assert torch.allclose(t.float(), torch.tensor(expected), atol=6e-5)
    assert torch.allclose(losses.inverse_inference_schedule(t), s.double(), atol=1e-9)


@pytest.mark.parametrize("staged", [True, False])
def test_chunk_times_are_monotone_with_a_clean_prefix(staged):
    sampler = MonotoneChunkTimeSampler()
    gen = torch.Generator().manual_seed(1)
    for trial in range(300):
        n = 1 + trial % 6
        n_clean = trial % n
        times = sampler.sample(n, n_clean, generator=gen, staged=staged)
        t, clean = times.t, times.clean
        assert t.shape == (n,) and times.mix.shape == (n,) and times.stage.shape == (n,)
        # earlier chunks are never noisier than later ones
        assert bool((t[:-1] >= t[1:]).all()), t
        # the forced prefix is clean, and clean chunks only ever form a prefix
        assert bool(clean[:n_clean].all())
        first_noisy = int((~clean).nonzero()[0]) if bool((~clean).any()) else n
        assert bool(clean[:first_noisy].all()) and not bool(clean[first_noisy:].any())
        # clean chunks are told clean_t but mixed with at most 5% noise; noisy chunks mix at their own t
        assert torch.allclose(t[clean], torch.tensor(sampler.clean_t))
        assert bool((times.mix[clean] >= 0.95).all()) and bool((times.mix[clean] <= 1.0).all())
        assert torch.equal(times.mix[~clean], t[~clean])
        assert bool((t[~clean] >= 0).all()) and bool((t[~clean] < sampler.clean_t).all())
        # stages: -1 for clean, non-increasing toward the newest chunk, within range
        assert bool((times.stage[clean] == -1).all())
        noisy_stage = times.stage[~clean]
        assert bool((noisy_stage >= 0).all()) and bool((noisy_stage < sampler.num_stages).all())
        assert bool((noisy_stage[:-1] >= noisy_stage[1:]).all())


def test_staged_layout_puts_one_chunk_per_stage_like_the_inference_window():
    sampler = MonotoneChunkTimeSampler(newest_in_first_stage_prob=1.0)
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        times = sampler.sample(5, 0, generator=gen, staged=True)
        # oldest chunk has finished its 4 stages: it is the clean chunk the window re-encodes
        assert times.clean.tolist() == [True, False, False, False, False]
        assert times.stage.tolist() == [-1, 3, 2, 1, 0]
        edges = losses.inference_schedule(torch.tensor([0.25, 0.5, 0.75])).float()  # 0.0217, 0.1, 0.3
        assert float(times.t[4]) < edges[0] <= float(times.t[3]) < edges[1] <= float(times.t[2]) < edges[2]


def test_grid_aligned_phase_lands_on_inference_grid_points():
    sampler = MonotoneChunkTimeSampler()
    gen = torch.Generator().manual_seed(3)
    grid = losses.inference_schedule(torch.linspace(0, 1, 17)).float()
    for _ in range(30):
        times = sampler.sample(4, 0, generator=gen, staged=True, phase_steps=4)  # 16 steps, 4 per stage
        for value in times.t[~times.clean]:
            assert float((grid - value).abs().min()) < 1e-6


def test_noise_stage_boundaries():
    sampler = MonotoneChunkTimeSampler()
    t = torch.tensor([0.0, 0.02, 0.0217391, 0.05, 0.1, 0.2999, 0.3, 0.9])
    assert sampler.noise_stage(t).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


# ------------------------------------------------------------------------------------------- targets
def test_interpolation_endpoints_and_velocity():
    data, noise = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    assert torch.allclose(losses.interpolate(data, noise, torch.zeros(2, 4)), noise)
    assert torch.allclose(losses.interpolate(data, noise, torch.ones(2, 4)), data)
    t = torch.rand(2, 4)
    x = losses.interpolate(data, noise, t)
    # one Euler step with the exact velocity lands on the straight path
    moved = losses.euler_step(x, losses.velocity_target(data, noise), 1 - t)
    assert torch.allclose(moved, data, atol=1e-6)


def test_masked_mse_ignores_clean_frames():
    pred, target = torch.zeros(1, 2, 3, 1, 1), torch.ones(1, 2, 3, 1, 1)
    target[:, :, 0] = 100.0
    assert float(losses.masked_mse(pred, target, torch.tensor([[0.0, 1.0, 1.0]]))) == pytest.approx(1.0)


def test_shortcut_target_formula():
    v1, v2 = torch.full((1, 1, 2, 1, 1), 2.0), torch.full((1, 1, 2, 1, 1), 5.0)
    dt1, dt2 = torch.tensor([[0.1, 0.0]]), torch.tensor([[0.3, 0.0]])
    target = losses.shortcut_target(v1, v2, dt1, dt2)
    assert float(target[0, 0, 0]) == pytest.approx(0.25 * 2.0 + 0.75 * 5.0)
    assert float(target[0, 0, 1]) == pytest.approx(3.5)  # a chunk that does not move: plain average
    # the defining property: one step of dt1 + dt2 with the target lands where two small steps land
    x = torch.randn(1, 1, 2, 1, 1)
    two_steps = losses.euler_step(losses.euler_step(x, v1, dt1), v2, dt2)
    one_step = losses.euler_step(x, target, dt1 + dt2)
    assert torch.allclose(one_step, two_steps, atol=1e-6)


def test_grid_step_and_step_size_condition():
    grid = losses.inference_schedule(torch.linspace(0, 1, 17)).float()
    dt = losses.grid_step(grid[:-1], 16)
    assert torch.allclose(dt, grid[1:] - grid[:-1], atol=1e-6)
    assert float(losses.grid_step(torch.tensor([0.9999]), 16)) == 0.0
    assert losses.step_size_condition(16) == 8.0 and losses.step_size_condition(64) == 32.0


def test_guidance_buckets_follow_the_official_edges():
    t = torch.tensor([0.0, 0.02, 0.05, 0.29, 0.3, 0.9999])
    prev, text = losses.guidance_scales_for(t, [0, 0.0217, 0.1, 0.3, 0.999], [1.5, 1.5, 1.5, 1.0, 1.0],
                                            [7.5, 7.5, 7.5, 0.0, 0.0])
    assert text.tolist() == [7.5, 7.5, 7.5, 7.5, 0.0, 0.0]
    assert prev.tolist() == [1.5, 1.5, 1.5, 1.5, 1.0, 1.0]


# ------------------------------------------------------------------------------------------- trainers
def _tiny_setup(num_clips: int = 6, chunks: int = 3):
    from magi1.config import MagiConfig, ModelConfig
    from magi1.models.dit import MagiDiT
    from magi1.train.data import LatentClips
    from magi1.train.dit_trainer import init_dit_for_training
    from magi1.train.text_demo import TableCaptionEncoder

    model_config = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                               num_query_groups=2, kv_channels=16, params_dtype="torch.float32",
                               caption_channels=16, caption_max_length=56)
    config = MagiConfig(model_config=model_config).replace(video_size_h=32, video_size_w=32, num_steps=8)
    gen = torch.Generator().manual_seed(0)
    # smooth per-clip patterns that drift in time: structure the model can learn fast
    base = torch.randn(num_clips, 16, 1, 4, 4, generator=gen)
    drift = torch.linspace(0, 1, chunks * 6)[None, None, :, None, None]
    latents = base + 0.5 * drift * torch.randn(num_clips, 16, 1, 4, 4, generator=gen)
    captions = [f"{c} ball falls" for c in ["red", "blue", "green", "pink", "gray", "black"][:num_clips]]
    clips = LatentClips(latents.contiguous(), captions, latents[:, :, :1].clone())
    text = TableCaptionEncoder(16, 56, " ".join(captions).split())
    model = init_dit_for_training(MagiDiT(model_config), seed=0)
    return config, clips, text, model


def test_dit_trainer_lowers_the_loss_on_a_fixed_batch():
    from magi1.train.dit_trainer import DiTTrainer, DiTTrainSettings, dit_velocity
    from magi1.train.losses import masked_mse

    torch.manual_seed(0)
    config, clips, text, model = _tiny_setup()
    trainer = DiTTrainer(model, config, clips, text, DiTTrainSettings(steps=30, lr=3e-3, warmup=1,
                                                                      tokens_per_step=3 * 72))
    batch, _ = trainer.make_batch(torch.Generator().manual_seed(5), num_chunks=3)
    batch.y = batch.y.detach()  # the same batch is reused: keep the caption graph out of it
    assert batch.x.shape[1:] == (16, 18, 4, 4) and batch.kv_range.shape == (batch.x.shape[0] * 3, 2)
    losses_seen = []
    for _ in range(12):
        trainer.model.train()
        losses_seen.append(trainer.optimize(batch, dit_velocity(trainer.model, batch), batch.target)["loss"])
    assert losses_seen[-1] < 0.85 * losses_seen[0], losses_seen
    with torch.no_grad():
        assert float(masked_mse(dit_velocity(model, batch), batch.target, batch.frame_weight)) < losses_seen[0]


def test_batch_layout_matches_what_inference_asks():
    from magi1.train.batch import DiTBatchBuilder, TaskMix, kv_spans

    builder = DiTBatchBuilder(chunk_width=6, tokens_per_frame=4, noise2clean_kvrange=[5, 4, 3, 2],
                              clean_chunk_kvrange=1, caption_max_length=56,
                              sampler=MonotoneChunkTimeSampler(newest_in_first_stage_prob=1.0),
                              mix=TaskMix(t2v=1.0, i2v=0.0, v2v=0.0, dropout=0.0))
    gen = torch.Generator().manual_seed(0)
    layout = builder.draw_layout(5, gen, staged=True)
    # [clean, stage 3, 2, 1, 0] -> spans [1, 2, 3, 4, 5]: each in-flight chunk reaches back to the clean one
    assert kv_spans(layout.times, [5, 4, 3, 2], 1) == [1, 2, 3, 4, 5]
    latents = torch.randn(2, 16, 30, 4, 4)
    captions, masks = torch.randn(2, 56, 8), torch.zeros(2, 56)
    masks[:, :7] = 1
    null = torch.randn(56, 8)
    dropped = builder.draw_layout(5, gen, staged=True)
    dropped.dropped = True
    batch = builder.assemble(latents, [layout, dropped], captions, masks, null, generator=gen)
    ctn = 24
    assert batch.kv_range[:5].tolist() == [[0, ctn], [0, 2 * ctn], [0, 3 * ctn], [0, 4 * ctn], [0, 5 * ctn]]
    assert batch.kv_range[5].tolist() == [5 * ctn, 6 * ctn]  # batch-major keys
    # clean chunk and dropped sample: null caption, first 50 rows; noisy chunks: the caption
    assert torch.equal(batch.y[0, 0], null) and int(batch.xattn_mask[0].sum()) == 50
    assert torch.equal(batch.y[1, 0], captions[0]) and int(batch.xattn_mask[1].sum()) == 7
    assert all(torch.equal(batch.y[5 + r, 0], null) for r in range(5))
    assert batch.null_adaln.tolist() == [False, True]
    assert batch.t[0, 0] == pytest.approx(0.9999) and batch.frame_weight[0, :6].sum() == 0
    assert batch.frame_weight[0, 6:].min() == 1


def test_shortcut_distiller_runs_every_level():
    from magi1.models.dit import MagiDiT
    from magi1.train.distill import DistillSettings, ShortcutDistiller, shortcut_cycle

    assert shortcut_cycle(32) == [32] * 8 + [16, 8, 4]
    config, clips, text, teacher = _tiny_setup()
    student = MagiDiT(config.model_config, distill=True)
    student.load_state_dict(teacher.state_dict())
    distiller = ShortcutDistiller(student, teacher, config, clips, text,
                                  DistillSettings(steps=4, finest_steps=8, levels=1, finest_repeats=1,
                                                  tokens_per_step=2 * 96))
    seen = {}
    for step in range(2):
        seen.update(distiller.train_step(step))
    assert set(seen) == {"loss_8", "loss_4", "grad"} and all(v == v for v in seen.values())


# ------------------------------------------------------------------------------------------- state and artefacts
class _ToyTrainer:
    """A least-squares fit with AdamW: enough to check that a resumed run equals an uninterrupted one."""

    def __init__(self):
        from magi1.train.loop import step_generator

        self.step_generator = step_generator
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.05)

    def train_step(self, step):
        gen = self.step_generator(0, step)
        x = torch.randn(8, 4, generator=gen)
        loss = (self.model(x).squeeze(1) - x.sum(1)).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def state_parts(self):
        from magi1.train.resume import optimizer_tensors

        tensors, meta = optimizer_tensors(self.optimizer)
        return {"model": dict(self.model.state_dict()), "optim": tensors}, {"optim": meta}

    def load_state_parts(self, parts, meta):
        from magi1.train.resume import load_optimizer_tensors

        self.model.load_state_dict(parts["model"])
        load_optimizer_tensors(self.optimizer, parts["optim"], meta["optim"])


def test_run_loop_resumes_where_it_stopped(tmp_path):
    from magi1.train.loop import LoopSettings, run_loop

    straight = _ToyTrainer()
    run_loop(straight, LoopSettings(total_steps=6, progress=False))
    first = _ToyTrainer()
    settings = dict(state_dir=str(tmp_path / "state"), checkpoint_every_s=0.0, progress=False,
                    log_path=str(tmp_path / "log.txt"), log_every=2)
    run_loop(first, LoopSettings(total_steps=3, **settings))
    resumed = _ToyTrainer()  # a fresh process: everything comes from the saved state
    outcome = run_loop(resumed, LoopSettings(total_steps=6, **settings))
    assert outcome["resumed_from"] == 3
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert "step      6" in (tmp_path / "log.txt").read_text()


def test_folding_the_latent_scale_keeps_the_vae_function():
    from magi1.models.vae import VAEConfig, ViTVAE
    from magi1.train.demo_recipe import fold_latent_scale

    config = VAEConfig(video_size=16, video_length=4, z_chans=4, embed_dim=256, depth=1, num_heads=4, mlp_ratio=1.0,
                       qkv_bias=True, ln_in_attn=True, conv_last_layer=True)
    vae = ViTVAE(config).init_weights(0).eval()
    pixels = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(pixels))
        gain = fold_latent_scale(vae, pixels, 0.18215)
        after = vae.decode(vae.encode(pixels))
        scaled = vae.encode(pixels) * 0.18215
    assert gain > 0 and abs(float(scaled.std()) - 1.0) < 1e-3
    assert torch.allclose(before, after, atol=1e-4)


def test_demo_text_encoder_round_trips_through_the_inference_loader(tmp_path):
    from magi1.models.text_encoder import T5TextEncoder
    from magi1.train.text_demo import (TrainableCaptionEncoder, build_tiny_t5, load_t5_module, save_text_encoder,
                                       save_tokenizer, train_tokenizer)

    captions = ["a red ball falls and bounces on the floor", "a blue square slides to the left"] * 5
    tokenizer = train_tokenizer(captions, vocab_size=120)
    save_tokenizer(tokenizer, tmp_path / "tok", max_length=16)
    model = build_tiny_t5(tokenizer.get_vocab_size(), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    save_text_encoder(model, tmp_path / "tok", tmp_path / "t5")
    loaded = T5TextEncoder(tmp_path / "t5", max_length=16)
    emb, mask = loaded.encode("A Red ball falls!")
    assert emb.shape == (1, 1, 16, 16) and int(mask.sum()) >= 4
    ids, _ = loaded.tokenize("a purple zebra")  # unseen words split into pieces, never vanish
    assert 2 not in ids[0, : int(_.sum()) - 1].tolist()
    trainable = TrainableCaptionEncoder(load_t5_module(tmp_path / "t5"), tmp_path / "t5", 16, trainable=False)
    same, same_mask = trainable(["A Red ball falls!"])
    assert torch.allclose(same, emb[:, 0], atol=1e-5) and torch.equal(same_mask, mask)


def test_vae_trainer_lowers_the_reconstruction_error():
    from magi1.models.vae import VAEConfig, ViTVAE
    from magi1.train.data import PixelClips
    from magi1.train.vae_trainer import VAETrainer, VAETrainSettings, reconstruction_psnr

    gen = torch.Generator().manual_seed(0)
    frames = []
    for _ in range(2):  # a plain background with one coloured square
        clip = (torch.rand(1, 1, 1, 3, generator=gen) * 255).repeat(8, 16, 16, 1)
        clip[:, 4:10, 6:12] = torch.rand(3, generator=gen) * 255
        frames.append(clip.to(torch.uint8).numpy())
    clips = PixelClips(frames)
    config = VAEConfig(video_size=16, video_length=4, z_chans=4, embed_dim=256, depth=1, num_heads=4, mlp_ratio=1.0,
                       qkv_bias=True, ln_in_attn=True, conv_last_layer=True)
    vae = ViTVAE(config).init_weights(0).requires_grad_(True)
    trainer = VAETrainer(vae, clips, VAETrainSettings(steps=20, batch=2, lengths=(4,), warmup=1, lr=1e-2))
    probe = clips.sample(2, 4, torch.Generator().manual_seed(1))
    before = reconstruction_psnr(vae, probe)
    for step in range(20):
        trainer.train_step(step)
    assert reconstruction_psnr(vae, probe) > before + 0.5  # ~1 dB in 20 steps on this tiny batch


def test_decoder_only_fine_tune_keeps_the_encoder_and_trains_the_decoder():
    from magi1.models.vae import VAEConfig, ViTVAE
    from magi1.train.data import PixelClips
    from magi1.train.vae_trainer import VAETrainer, VAETrainSettings

    gen = torch.Generator().manual_seed(0)
    clips = PixelClips([(torch.rand(8, 16, 16, 3, generator=gen) * 255).to(torch.uint8).numpy() for _ in range(2)])
    config = VAEConfig(video_size=16, video_length=4, z_chans=4, embed_dim=256, depth=1, num_heads=4, mlp_ratio=0.25,
                       qkv_bias=True, ln_in_attn=True, conv_last_layer=True)
    vae = ViTVAE(config).init_weights(0).requires_grad_(True)
    encoder_before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    trainer = VAETrainer(vae, clips, VAETrainSettings(steps=3, batch=2, lengths=(4,), warmup=1, train_encoder=False))
    for step in range(3):
        trainer.train_step(step)
    assert all(torch.equal(v, encoder_before[k]) for k, v in vae.encoder.state_dict().items())
    assert any(not torch.equal(v, decoder_before[k]) for k, v in vae.decoder.state_dict().items())
    averaged = trainer.averaged_weights()  # the exported encoder is the frozen one too
    assert all(torch.equal(averaged["encoder." + k], v) for k, v in encoder_before.items() if "encoder." + k in averaged)


def test_demo_recipe_end_to_end_writes_a_loadable_demo(tmp_path):
    """Every stage of `magi1 train demo` at a few steps: official folders, presets, a log, a video."""
    import json

    from magi1.pipeline import MagiPipeline
    from magi1.train.demo_recipe import DemoRecipe, RecipeSettings

    settings = RecipeSettings(workdir=str(tmp_path / "work"), out_dir=str(tmp_path / "demo"),
                              preset_dir=str(tmp_path / "presets"), vae_clips=4, vae_steps=1, decoder_steps=1,
                              dit_clips=4, dit_steps=2, distill_steps=1, checkpoint_every_s=1e9, progress=False,
                              heldout_clips=1, caption_variants=3,
                              command="test")
    outcome = DemoRecipe(settings).run()
    assert set(outcome["results"]) == {"vae", "latents", "decoder", "text", "dit", "distill"}
    preset = json.loads((tmp_path / "presets" / "demo.json").read_text())
    assert preset["runtime_config"]["load"] == "../demo/dit"  # relative to the JSON: the folder can move
    assert (tmp_path / "demo" / "dit" / "inference_weight" / "model.safetensors.zst").is_file()
    assert "[dit] step" in (tmp_path / "demo" / "training_log.txt").read_text()
    assert len(list((tmp_path / "demo" / "t5").glob("*/prompt_vocabulary.json"))) == 1  # the unknown-prompt warning
    for name in ("demo.json", "demo_distill.json"):
        pipe = MagiPipeline.from_pretrained(str(tmp_path / "presets" / name), device="cpu")
        frames = pipe("a red ball falls", num_frames=24, num_inference_steps=4, seed=0, progress=False).frames[0]
        assert frames.shape == (24, 64, 64, 3)
    # The workdir resumes under the settings it was made with (how a run goes may change), never under others.
    DemoRecipe(dataclasses.replace(settings, threads=1, checkpoint_every_s=60.0, command="again"))
    with pytest.raises(ValueError, match=r"other settings \(--dit-steps: 2 there, 3 now\).*new --workdir"):
        DemoRecipe(dataclasses.replace(settings, dit_steps=3))


def test_train_demo_refuses_to_resume_a_workdir_under_other_settings(tmp_path):
    """As a user meets it: the same --workdir with another flag is one line naming the flag, before any work."""
    import json

    work = tmp_path / "work"
    work.mkdir()
    (work / "results.json").write_text(json.dumps({"vae": {"params": 1}}))
    (work / "settings.json").write_text(json.dumps({"dit_steps": 5000, "seed": 0}))
    done = subprocess.run([str(Path(sys.executable).with_name("magi1")), "train", "demo", "--workdir", str(work),
                           "--out-dir", str(tmp_path / "demo"), "--preset-dir", str(tmp_path / "presets"),
                           "--dit-steps", "3000", "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"magi1 train demo: error: --workdir {work} holds stages trained with other settings (--dit-steps: 5000 "
        f"there, 3000 now); resume it with the settings it was started with, or give a new --workdir"]
    assert not (tmp_path / "demo").exists() and not (tmp_path / "presets").exists()


def test_demo_recipe_continues_a_previous_demo_with_the_motion_stage(tmp_path):
    """`magi1 train demo --init-from OLD --vae-motion-steps N`: the VAE and DiT start from OLD's weights,
    the vae_motion stage fine-tunes the encoder too (so the latents are re-encoded), and the result loads."""
    from magi1.checkpoint.loader import read_state_dict
    from magi1.models.vae import ViTVAE
    from magi1.pipeline import MagiPipeline
    from magi1.train.demo_recipe import DemoRecipe, RecipeSettings

    tiny = dict(vae_clips=4, vae_steps=1, decoder_steps=1, dit_clips=4, dit_steps=1, distill_steps=1,
                checkpoint_every_s=1e9, progress=False, heldout_clips=1, caption_variants=3, command="test")
    first = RecipeSettings(workdir=str(tmp_path / "w1"), out_dir=str(tmp_path / "old"),
                           preset_dir=str(tmp_path / "p1"), **tiny)
    DemoRecipe(first).run()
    second = RecipeSettings(workdir=str(tmp_path / "w2"), out_dir=str(tmp_path / "new"), preset_dir=str(tmp_path / "p2"),
                            init_from=str(tmp_path / "old"), vae_motion_steps=2, **tiny)
    outcome = DemoRecipe(second).run()
    assert outcome["results"]["vae"]["init_from"] == str(tmp_path / "old")
    motion = outcome["results"]["vae_motion"]
    assert {"heldout_boundary_ratio", "heldout_boundary_ratio_before", "latent_gain"} <= set(motion)
    old_vae = ViTVAE.from_pretrained(tmp_path / "old" / "vae", dtype=torch.float32, device="cpu")
    new_vae = ViTVAE.from_pretrained(tmp_path / "new" / "vae", dtype=torch.float32, device="cpu")
    assert not torch.equal(old_vae.encoder.last_layer.weight, new_vae.encoder.last_layer.weight)
    old_dit = read_state_dict(tmp_path / "old" / "dit" / "inference_weight")
    new_dit = read_state_dict(tmp_path / "new" / "dit" / "inference_weight")
    assert old_dit.keys() == new_dit.keys()
    # one DiT step from the old weights: close to them, not a fresh init (whose final projection is zero)
    final = next(k for k in old_dit if "final_linear" in k and k.endswith("weight"))
    assert float(new_dit[final].float().abs().max()) > 0
    assert torch.allclose(new_dit[final].float(), old_dit[final].float(), atol=0.05)
    pipe = MagiPipeline.from_pretrained(str(tmp_path / "p2" / "demo.json"), device="cpu")
    frames = pipe("a red ball falls", num_frames=24, num_inference_steps=4, seed=0, progress=False).frames[0]
    assert frames.shape == (24, 64, 64, 3)


def test_demo_recipe_fresh_dit_keeps_only_the_previous_vae(tmp_path, monkeypatch):
    """`--init-from OLD --fresh-dit`: the VAE comes from OLD, the DiT and its T5 start from scratch (the old DiT
    is never read, the tokenizer is this run's), and the result loads; --fresh-dit alone is refused."""
    import magi1.checkpoint.loader as loader
    from magi1.models.vae import ViTVAE
    from magi1.pipeline import MagiPipeline
    from magi1.train.demo_recipe import DemoRecipe, RecipeSettings

    tiny = dict(vae_clips=4, vae_steps=1, decoder_steps=1, dit_clips=4, dit_steps=1, distill_steps=1,
                checkpoint_every_s=1e9, progress=False, heldout_clips=1, caption_variants=3, command="test")
    DemoRecipe(RecipeSettings(workdir=str(tmp_path / "w1"), out_dir=str(tmp_path / "old"),
                              preset_dir=str(tmp_path / "p1"), **tiny)).run()
    with pytest.raises(ValueError, match="--fresh-dit keeps the VAE of --init-from"):
        DemoRecipe(RecipeSettings(workdir=str(tmp_path / "w0"), out_dir=str(tmp_path / "x"), fresh_dit=True, **tiny))
    with pytest.raises(ValueError, match=r"has a DiT of other sizes .* add --fresh-dit"):  # before any stage runs
        DemoRecipe(RecipeSettings(workdir=str(tmp_path / "w0"), out_dir=str(tmp_path / "x"), dit_hidden=192,
                                  init_from=str(tmp_path / "old"), **tiny))
    with pytest.raises(ValueError, match="multiple of 64"):
        DemoRecipe(RecipeSettings(workdir=str(tmp_path / "w0"), out_dir=str(tmp_path / "x"), dit_hidden=100, **tiny))
    assert not (tmp_path / "w0").exists()

    real_load_dit, loaded_from = loader.load_dit, []

    def spy_load_dit(config, *args, load_root=None, **kwargs):
        loaded_from.append(str(load_root))
        return real_load_dit(config, *args, load_root=load_root, **kwargs)

    monkeypatch.setattr(loader, "load_dit", spy_load_dit)
    DemoRecipe(RecipeSettings(workdir=str(tmp_path / "w2"), out_dir=str(tmp_path / "new"),
                              preset_dir=str(tmp_path / "p2"), init_from=str(tmp_path / "old"), fresh_dit=True,
                              **tiny)).run()
    assert not any(str(tmp_path / "old") in root for root in loaded_from), loaded_from
    old_vae = ViTVAE.from_pretrained(tmp_path / "old" / "vae", dtype=torch.float32, device="cpu")
    new_vae = ViTVAE.from_pretrained(tmp_path / "new" / "vae", dtype=torch.float32, device="cpu")
    assert torch.equal(old_vae.encoder.last_layer.weight, new_vae.encoder.last_layer.weight)
    new_tokenizer = (tmp_path / "new" / "t5" / "t5-v1_1-xxl" / "tokenizer.json")
    this_run = (tmp_path / "w2" / "t5_init" / "t5-v1_1-xxl" / "tokenizer.json")
    assert new_tokenizer.read_text() == this_run.read_text()
    pipe = MagiPipeline.from_pretrained(str(tmp_path / "p2" / "demo.json"), device="cpu")
    frames = pipe("a red ball falls", num_frames=24, num_inference_steps=4, seed=0, progress=False).frames[0]
    assert frames.shape == (24, 64, 64, 3)


def test_train_demo_flags_reach_the_recipe_settings():
    """`magi1 train demo --vae-lr ...`: every VAE knob of the command line lands in RecipeSettings."""
    from magi1.train.cli import build_parser, demo_settings
    from magi1.train.demo_recipe import RecipeSettings

    args = build_parser().parse_args(["demo", "--vae-lr", "7e-4", "--vae-mlp-ratio", "1.5",
                                      "--vae-temporal-weight", "0.5", "--decoder-steps", "10",
                                      "--vae-motion-steps", "7", "--vae-motion-weight", "2", "--vae-motion-lr", "3e-4",
                                      "--dit-lr", "1e-4", "--init-from", "old_demo", "--fresh-dit", "--dit-hidden", "192"])
    args.command_line = "magi1 train demo"
    settings = demo_settings(args)
    assert (settings.vae_lr, settings.vae_mlp_ratio, settings.vae_temporal_weight, settings.decoder_steps) == (
        7e-4, 1.5, 0.5, 10)
    assert (settings.vae_motion_steps, settings.vae_motion_weight, settings.vae_motion_lr, settings.dit_lr,
            settings.init_from, settings.fresh_dit, settings.dit_hidden) == (7, 2.0, 3e-4, 1e-4, "old_demo", True, 192)
    plain = build_parser().parse_args(["demo"])
    plain.command_line = "magi1 train demo"
    assert demo_settings(plain).vae_lr == RecipeSettings().vae_lr


def test_demo_dit_width_sets_heads_groups_and_mlp():
    """--dit-hidden W: heads of 32 in pairs, MLP 4W; the default is the shipped 128-wide DiT."""
    from magi1.train.demo_recipe import demo_model_config

    shipped = demo_model_config()
    assert (shipped.hidden_size, shipped.num_attention_heads, shipped.num_query_groups, shipped.ffn_hidden_size) == (
        128, 4, 2, 512)
    wide = demo_model_config(64, 8, 192)
    assert (wide.num_attention_heads, wide.num_query_groups, wide.ffn_hidden_size, wide.kv_channels) == (6, 3, 768, 32)
    with pytest.raises(ValueError, match="multiple of 64"):
        demo_model_config(64, 8, 100)


def _magi1_train(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([str(Path(sys.executable).with_name("magi1")), "train", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_low_level_trainers_refuse_bad_inputs_in_one_line_before_any_work(tiny_model, tmp_path):
    """`magi1 train vae|dit|distill` used to meet these as tracebacks (some after making the clips)."""
    t5, config = str(tiny_model.parent / "t5"), str(tiny_model)
    loop = ["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"]
    vae = ["vae", "--clips", "2", "--frames", "24", "--size", "32", *loop]
    dit = ["--config", config, "--text-encoder", t5, *loop]
    from magi1.train.data import LatentClips

    cache = tmp_path / "latents.safetensors"
    LatentClips(torch.zeros(1, 16, 6, 4, 4), ["a red ball"], torch.zeros(1, 16, 1, 4, 4)).save(cache)
    cases = [
        ([*vae, "--size", "30"], "--size must be a multiple of 16"),
        ([*vae, "--frames", "8"], "--frames must be at least 12"),
        ([*vae, "--ddconfig", "{bad"], "--ddconfig is neither a JSON file nor a JSON object"),
        ([*vae, "--videos", str(tmp_path / "no_such_folder")], "is not a folder"),
        ([*vae, "--threads", "-1"], "argument --threads: must be at least 1"),
        (["dit", *dit, "--latents", config], "is not a latent cache written by `magi1 train encode`"),
        (["distill", *dit, "--latents", str(tmp_path / "missing.safetensors")], "--latents:"),
        (["dit", "--config", config, "--text-encoder", str(tmp_path / "no_t5"), "--latents", str(cache), *loop],
         "--text-encoder: T5 text encoder not found"),
    ]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # independent refusals: two at a time keeps the suite short
        results = list(pool.map(lambda case: _magi1_train(*case[0], cwd=tmp_path), cases))
    for (argv, expected), done in zip(cases, results):
        assert done.returncode == 2, (argv, done.stderr[-1500:])
        lines = done.stderr.strip().splitlines()
        assert "Traceback" not in done.stderr and expected in lines[-1] and "error:" in lines[-1], (argv, lines)
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_train_vae_on_short_clips_resumes_only_under_its_own_settings(tmp_path):
    # --frames under 24 failed in the synthetic scenes (their 24 shared conditioning frames); a rerun with another
    # --batch continued the old state silently; a finished rerun printed "{}".
    argv = ["vae", "--clips", "2", "--frames", "16", "--size", "32", "--batch", "2", "--steps", "1", "--workdir",
            str(tmp_path / "work"), "--out", str(tmp_path / "vae"), "--quiet"]
    done = _magi1_train(*argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "vae" / "config.json").is_file()
    other = _magi1_train(*[("3" if a == "2" and argv[i - 1] == "--batch" else a) for i, a in enumerate(argv)],
                         cwd=tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1] == (
        f"magi1 train: error: --workdir {tmp_path / 'work'} holds a run with other settings (--batch: 2 there, "
        f"3 now); resume it with the settings it was started with, or give a new --workdir")
    again = _magi1_train(*argv, "--threads", "1", cwd=tmp_path)  # how a run goes may change
    assert again.returncode == 0, again.stderr[-2000:]
    assert "all 1 steps were trained by an earlier run" in again.stdout
