"""Train the shipped demo model end to end, with the same model code as the official sizes.

Stages (each resumable; a finished stage is skipped on a rerun):

1. VAE      the official ViTVAE architecture with a small ddconfig, on 64×64 synthetic physics clips.
            Its latent scale is folded into the weights so that `latent × 0.18215` (the official,
            hard-wired scale) has unit standard deviation, as the DiT expects.
1b. vae_motion (with vae_motion_steps) the whole VAE fine-tuned with the frame-change loss weighted up, so
            the latent carries the motion inside its 4 frames; the latent scale is folded in again.
2. latents  every training clip encoded once through the inference helpers (tiled encode, posterior
            mean, × 0.18215), plus each clip's first frame encoded as an image (the i2v condition).
3. decoder  more steps for the VAE decoder alone (encoder frozen, so the cached latents stay valid).
4. text     a Unigram tokenizer trained on the captions, and a tiny T5 encoder (random start).
5. DiT      the MAGI-1 objective (train.dit_trainer), the T5 training along through the caption path.
6. distill  shortcut distillation into a cfg-free few-step model (train.distill).
7. presets  `presets/demo.json` (base, cfg 3) and `presets/demo_distill.json` (distill, cfg 1), in the
            official format with paths relative to the JSON; a training log next to the weights.

With `init_from` (a previous demo folder) the VAE stage copies that VAE and the DiT stage starts from that
DiT and its T5 (and tokenizer) instead of a random init: a new generation built on the last one. With
`fresh_dit` as well, only the VAE is taken over; the DiT and its T5 start from scratch on the new latents.

Everything is a function of the settings and the seed. Weights are stored so that the whole demo stays
small: the DiTs in bfloat16 like the official checkpoints (their float32 islands in float32), as zstd-compressed
shards, which the official layout allows; VAE and T5 in bfloat16 (their loaders cast them to the runtime dtype).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import EngineConfig, MagiConfig, ModelConfig, RuntimeConfig
from .demo_vae import fold_latent_scale, inference_encoders, save_vae  # noqa: F401  (re-exported)
from .loop import LoopSettings, run_loop
from .resume import refuse_other_settings

PACKAGE_DIR = Path(__file__).resolve().parents[1]
DEMO_DIR = PACKAGE_DIR / "demo"
PRESET_DIR = PACKAGE_DIR / "presets"
TRAINING_LOG = "training_log.txt"

# The official ViTVAE with a small ddconfig: 8×8×4 patches, 16 latent channels, one block per side.
# Width: each decoder token un-patchifies into embed_dim / (4·8·8) pixel channels ahead of the RGB conv, and
# the decoder's last LayerNorm removes every token's mean and scale. With 3 channels (768) a flat-coloured
# token keeps only 2 colour degrees of freedom (all flat colours on one plane: greens and reds collapse);
# 1024 gives the 4 channels of the official model, the 4th free to absorb the mean.
# The rest is cut to fit the size budget: a tiny MLP, and a position table for one latent frame (video_length
# 4), resized to the 3-frame inference tiles like any other grid.
# [finding] That tiny MLP (128 units) makes the decoder nearly linear in the latent, and a linear map of 16
# numbers cannot draw an object at 4 places in the 4 frames of a token: it draws one frame 4 times and jumps at
# every latent-frame boundary (boundary / in-group change about 3x, eval.smoothness). Widening the decoder
# alone did not help (docs/demo-model.md has the pilots); fine-tuning the encoder with it does (the
# vae_motion stage): the latent has to carry the motion. A DiT fine-tuned on such latents did not yet sample
# smoother videos, so the shipped VAE is still the one without that stage.
DEMO_VAE_DDCONFIG = dict(
    video_size=64, video_length=4, patch_size=8, patch_length=4, in_chans=3, z_chans=16, double_z=True,
    embed_dim=1024, depth=1, num_heads=16, mlp_ratio=0.125, qkv_bias=True, with_cls_token=True, norm_code=False,
    ln_in_attn=True, conv_last_layer=True, use_rope=False, use_final_proj=False,
)
DEMO_SCALE_FACTOR = 0.18215
# The seed a run gets without --seed. Not the official 1234: with it this tiny model showed what the prompt names
# in 6 of the 14 `magi1 eval prompts` prompts (5 distilled); with 0 in 12 (10), and in 10 (9) of 10 other
# phrasings against 7 (7) with 1234, so the gain is not a pick on the eval's own prompts (docs/demo-model.md).
DEMO_SEED = 0


def demo_model_config(caption_channels: int = 64, num_layers: int = 8, hidden_size: int = 128) -> ModelConfig:
    """A tiny MAGI-1 DiT: `num_layers` × `hidden_size` (8 × 128, the shipped demo: 1.95 M parameters;
    generation 1 had 6 layers), query heads of 32 (4 at width 128) in KV groups of 2 heads, GELU MLP 4× wide.

    Stored and run in bfloat16 like the official models (the float32 islands stay float32); it trains in
    float32 (`training_config`).
    """
    if hidden_size % 64 or hidden_size <= 0:
        raise ValueError(f"the demo DiT's width must be a positive multiple of 64 (heads of 32 in pairs), "
                         f"got {hidden_size}")
    return ModelConfig(
        model_name="videodit_ardf", num_layers=num_layers, hidden_size=hidden_size, ffn_hidden_size=4 * hidden_size,
        num_attention_heads=hidden_size // 32, num_query_groups=hidden_size // 64, kv_channels=32,
        layernorm_epsilon=1e-6, apply_layernorm_1p=True,
        x_rescale_factor=1.0, half_channel_vae=False, params_dtype="torch.bfloat16", patch_size=2, t_patch_size=1,
        in_channels=16, out_channels=16, cond_hidden_ratio=0.25, caption_channels=caption_channels, caption_max_length=64,
        xattn_cond_hidden_ratio=1.0, cond_gating_ratio=1.0, gated_linear_unit=False,
    )


def training_config(config: MagiConfig) -> MagiConfig:
    """The same config with float32 parameters: the weights train in float32 and ship in params_dtype."""
    return dataclasses.replace(config, model_config=dataclasses.replace(config.model_config,
                                                                        params_dtype="torch.float32"))


def shipping_weights(state_dict: dict[str, torch.Tensor], params_dtype: str) -> dict[str, torch.Tensor]:
    """Weights as stored: params_dtype, except the tensors the model keeps in float32 anyway."""
    from ..models.dit import high_precision_param
    from ..runtime import parse_dtype

    dtype = parse_dtype(params_dtype)
    return {name: t if high_precision_param(name) or not t.is_floating_point() else t.to(dtype)
            for name, t in state_dict.items()}


def demo_config(model_config: ModelConfig, *, distill: bool, num_steps: int, paths: dict[str, str] | None = None,
                size: int = 64) -> MagiConfig:
    """The demo preset: official fields and values, except sizes, step count and the local paths."""
    paths = paths or {"load": "../demo/dit", "t5_pretrained": "../demo/t5", "vae_pretrained": "../demo/vae"}
    # Guidance: the official buckets, with milder scales. The official 7.5 (text) and 1.5 (previous chunks)
    # make this tiny model paint its caption's colours over whole regions. A small sweep on the held-out
    # clips of `magi1 eval physics` (text / previous-chunk scales 7.5/1.5, 3/1.5, 7.5/1, 1/1.5 on 4 scenarios;
    # 1/1, 2/1, 1.5/1.25 on 12) put 1.5 / 1.25 at the best Physics-IQ with an MSE under copy-last-frame's.
    runtime = RuntimeConfig(
        cfg_number=1 if distill else 3, cfg_t_range=[0.0, 0.0217, 0.1, 0.3, 0.999],
        prev_chunk_scales=[1.25, 1.25, 1.25, 1.0, 1.0], text_scales=[1.5, 1.5, 1.5, 0.0, 0.0],
        noise2clean_kvrange=[5, 4, 3, 2], clean_chunk_kvrange=1, clean_t=0.9999, seed=DEMO_SEED, num_frames=96,
        video_size_h=size, video_size_w=size, num_steps=num_steps, window_size=4, fps=24, chunk_width=6,
        load=paths["load"], t5_pretrained=paths["t5_pretrained"], t5_device="cpu",
        vae_pretrained=paths["vae_pretrained"], scale_factor=DEMO_SCALE_FACTOR, temporal_downsample_factor=4,
    )
    engine = EngineConfig(
        distributed_backend="nccl", distributed_timeout_minutes=15, pp_size=1, cp_size=1, cp_strategy="none",
        ulysses_overlap_degree=1, fp8_quant=False, distill_nearly_clean_chunk_threshold=0.3,
        shortcut_mode="8,16,16", distill=distill, kv_offload=False, enable_cuda_graph=False,
    )
    return MagiConfig(model_config=model_config, runtime_config=runtime, engine_config=engine)


@dataclass
class RecipeSettings:
    workdir: str = "outputs/demo_train"     # resumable state, caches, loss log (not shipped)
    out_dir: str = str(DEMO_DIR)             # vae/, t5/, dit/, training_log.txt
    preset_dir: str = str(PRESET_DIR)        # demo.json, demo_distill.json
    seed: int = 0
    size: int = 64
    clip_frames: int = 120                   # 5 chunks: one clean + the four a window holds
    vae_clips: int = 300
    vae_clip_frames: int = 48
    vae_steps: int = 1200
    vae_batch: int = 6
    vae_lr: float = 2e-3
    vae_mlp_ratio: float = 0.125             # DEMO_VAE_DDCONFIG mlp_ratio (decoder capacity, see above)
    vae_temporal_weight: float = 0.0         # VAETrainSettings.temporal_weight (frame-change magnitudes)
    vae_lengths: tuple[int, ...] = (12, 4, 4, 1)  # crop lengths of the VAE stages (1: a still image)
    vae_motion_steps: int = 0                # whole-VAE fine-tune with the frame-change loss, before the latents
    vae_motion_weight: float = 8.0           # its frame-change weight (VAETrainSettings.temporal_weight)
    vae_motion_lr: float = 1e-3
    init_from: str | None = None             # a demo folder (vae/, dit/, t5/) to start from instead of from scratch
    fresh_dit: bool = False                  # with init_from: its VAE only, a DiT and T5 from scratch
    decoder_steps: int = 1500                # decoder-only fine-tune after the latents are cached
    decoder_lr: float = 1e-3
    dit_clips: int = 600
    dit_layers: int = 8                      # demo_model_config num_layers (generation 1: 6)
    dit_hidden: int = 128                    # demo_model_config hidden_size (a multiple of 64)
    caption_variants: int = 12               # wordings per clip (train.captions); 1: the canonical caption only
    dit_steps: int = 5000                    # generation 1: 4,000 steps of a 6-layer DiT
    dit_lr: float = 8e-4
    dit_tokens_per_step: int = 2304
    distill_steps: int = 400
    heldout_clips: int = 8                   # held-out VAE round trips measured after each VAE stage
    base_steps: int = 32                     # demo.json num_steps; also the finest distillation grid
    distill_infer_steps: int = 8             # demo_distill.json num_steps
    vocab_size: int = 400
    checkpoint_every_s: float = 180.0
    threads: int | None = None
    progress: bool = True
    command: str = field(default_factory=lambda: " ".join(shlex.quote(a) for a in sys.argv))


# Settings that say how a run goes, not what it makes: a resumed run may change them.
RUN_ONLY_SETTINGS = ("workdir", "threads", "progress", "checkpoint_every_s", "command")
SETTINGS_FILE = "settings.json"  # in the workdir: the settings its stages were made with


class DemoRecipe:
    def __init__(self, settings: RecipeSettings) -> None:
        self.s = settings
        self.work = Path(settings.workdir)
        self.out = Path(settings.out_dir)
        self.presets = Path(settings.preset_dir)
        if settings.fresh_dit and not settings.init_from:
            raise ValueError("--fresh-dit keeps the VAE of --init-from and retrains the DiT; without --init-from "
                             "everything is trained from scratch already")
        if settings.init_from and Path(settings.init_from).resolve() == self.out.resolve():
            raise ValueError(f"--init-from {settings.init_from} is the output folder; write the new demo elsewhere")
        demo_model_config(hidden_size=settings.dit_hidden)  # a bad width is refused now, not after the VAE stages
        if settings.init_from and not settings.fresh_dit:
            self._check_previous_dit_fits()
        settings_record = self._check_same_settings()
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / SETTINGS_FILE).write_text(json.dumps(settings_record, indent=1))
        self.presets.mkdir(parents=True, exist_ok=True)  # relative paths in the config go through it
        self.loss_log = self.work / "loss_log.txt"
        self.timings: dict[str, float] = self._read_json("timings.json", {})
        self.cpu_timings: dict[str, float] = self._read_json("cpu_timings.json", {})
        self._clock: tuple[float, float] = (time.perf_counter(), time.process_time())
        self.results: dict[str, dict] = self._read_json("results.json", {})

    def _check_same_settings(self) -> dict:
        """A workdir holds the stages of one set of settings: resuming it with others would mix the two (a VAE
        of one run under a DiT of another, a schedule cut short), so that is refused, naming what changed.
        Returns the settings to record in the workdir."""
        wanted = json.loads(json.dumps({k: v for k, v in asdict(self.s).items() if k not in RUN_ONLY_SETTINGS}))
        refuse_other_settings(self.work, wanted, has_state=bool(self._read_json("results.json", {})), what="--workdir",
                              settings_file=SETTINGS_FILE, holds="stages trained", listed_at_most=3)
        return wanted

    def _check_previous_dit_fits(self) -> None:
        """Refuse at once, not after the VAE stages, a previous DiT whose sizes differ from this run's."""
        from ..checkpoint.loader import CheckpointReader
        from ..models.dit import MagiDiT

        with torch.device("meta"):  # shapes only, no memory
            wanted = MagiDiT(self.config(distill=False).model_config).state_dict()
        reader = CheckpointReader(Path(self.s.init_from) / "dit" / "inference_weight")
        try:
            stored = set(reader.keys())
            for name, tensor in wanted.items():
                if name in stored and tuple(reader[name].shape) != tuple(tensor.shape):
                    raise ValueError(f"--init-from {self.s.init_from} has a DiT of other sizes ({name}: "
                                     f"{tuple(reader[name].shape)}, this run: {tuple(tensor.shape)}); add --fresh-dit "
                                     f"to keep only its VAE and train a new DiT")
        finally:
            reader.close()

    # ------------------------------------------------------------------ bookkeeping
    def _read_json(self, name: str, default):
        path = self.work / name
        return json.loads(path.read_text()) if path.is_file() else default

    def _start(self) -> float:
        """Start a stage's clocks (wall and CPU); returns the wall start for the callers that still want it."""
        self._clock = (time.perf_counter(), time.process_time())
        return self._clock[0]

    def _record(self, stage: str, seconds: float, result: dict, outcome: dict | None = None) -> None:
        """Store a finished stage. A stage resumed from a checkpoint also counts its earlier runs' loop time
        (`outcome` from run_loop); the minutes between a stage's last checkpoint and a kill are lost."""
        outcome = outcome or {}
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds + outcome.get("elapsed_before_s", 0.0)
        cpu = time.process_time() - self._clock[1] + outcome.get("cpu_before_s", 0.0)
        self.cpu_timings[stage] = self.cpu_timings.get(stage, 0.0) + cpu
        self.results[stage] = result
        (self.work / "timings.json").write_text(json.dumps(self.timings, indent=1))
        (self.work / "cpu_timings.json").write_text(json.dumps(self.cpu_timings, indent=1))
        (self.work / "results.json").write_text(json.dumps(self.results, indent=1))

    def _done(self, stage: str) -> bool:
        return stage in self.results

    def _loop(self, name: str, steps: int) -> LoopSettings:
        return LoopSettings(total_steps=steps, state_dir=str(self.work / f"state_{name}"),
                            checkpoint_every_s=self.s.checkpoint_every_s, log_every=25, log_path=str(self.loss_log),
                            desc=name, progress=self.s.progress)

    @property
    def vae_dir(self) -> Path:
        return self.out / "vae"

    @property
    def t5_root(self) -> Path:
        return self.out / "t5"

    @property
    def dit_root(self) -> Path:
        return self.out / "dit"

    def config(self, *, distill: bool) -> MagiConfig:
        from .text_demo import DEMO_T5_DIMS

        rel = lambda p: os.path.relpath(p, self.presets)  # noqa: E731  (paths relative to the JSON)
        paths = {"load": rel(self.dit_root), "t5_pretrained": rel(self.t5_root), "vae_pretrained": rel(self.vae_dir)}
        steps = self.s.distill_infer_steps if distill else self.s.base_steps
        model_config = demo_model_config(DEMO_T5_DIMS["d_model"], self.s.dit_layers, self.s.dit_hidden)
        config = demo_config(model_config, distill=distill, num_steps=steps, paths=paths, size=self.s.size)
        config.source_dir = str(self.presets.resolve())
        return config

    def scene_config(self, frames: int):
        from .synthetic import SceneConfig

        return SceneConfig(height=self.s.size, width=self.s.size, num_frames=frames)

    def heldout_vae_metrics(self, vae) -> dict:
        """PSNR and smoothness (group-boundary / in-group change) of the VAE round trip of held-out clips,
        through the inference helpers."""
        from ..eval.smoothness import group_boundary_ratio
        from ..models.vae_helpers import decode_chunk, encode_video
        from .synthetic import EVAL_FIRST_SEED, SyntheticPhysicsDataset

        source = SyntheticPhysicsDataset(self.s.heldout_clips, self.scene_config(48), first_seed=EVAL_FIRST_SEED + 4_000)
        truth = [source[i]["frames"] for i in range(len(source))]
        decoded = [decode_chunk(vae, encode_video(vae, f, fps=24), fps=24).numpy() for f in truth]
        mse = np.mean([((d.astype(np.float32) - t) ** 2).mean() for d, t in zip(decoded, truth)])
        return {"heldout_psnr": float(10 * np.log10(255.0**2 / mse)),
                "heldout_boundary_ratio": group_boundary_ratio(decoded).ratio,
                "truth_boundary_ratio": group_boundary_ratio(truth).ratio}

    def vae_clips(self):
        """The VAE's pixel clips (their own seeds, apart from the DiT's and the eval's)."""
        from .data import PixelClips
        from .synthetic import SyntheticPhysicsDataset

        source = SyntheticPhysicsDataset(self.s.vae_clips, self.scene_config(self.s.vae_clip_frames),
                                         first_seed=500_000 + self.s.seed)
        return PixelClips.from_source(source, progress=self.s.progress)

    # ------------------------------------------------------------------ stages
    def run(self) -> dict:
        if self.s.threads:
            torch.set_num_threads(self.s.threads)
        started = time.perf_counter()
        for stage in (self.train_vae, self.teach_vae_motion, self.encode_latents, self.finetune_decoder,
                      self.build_text_encoder, self.train_dit, self.distill, self.write_presets):
            stage()
        self.write_training_log()
        return {"seconds": time.perf_counter() - started, "results": self.results}

    def train_vae(self) -> None:
        if self._done("vae"):
            return
        from ..models.vae import VAEConfig, ViTVAE
        from .vae_trainer import VAETrainer, VAETrainSettings

        t0 = self._start()
        if self.s.init_from:
            vae = ViTVAE.from_pretrained(Path(self.s.init_from) / "vae", dtype=torch.float32, device="cpu")
            save_vae(vae, self.vae_dir, dtype=torch.bfloat16)
            self._record("vae", time.perf_counter() - t0,
                         {"init_from": str(self.s.init_from), "params": vae.num_parameters(),
                          **self.heldout_vae_metrics(vae)})
            return
        clips = self.vae_clips()
        ddconfig = dict(DEMO_VAE_DDCONFIG, mlp_ratio=self.s.vae_mlp_ratio)
        vae = ViTVAE(VAEConfig.from_ddconfig(ddconfig)).init_weights(self.s.seed).requires_grad_(True)
        trainer = VAETrainer(vae, clips, VAETrainSettings(steps=self.s.vae_steps, batch=self.s.vae_batch,
                                                          lr=self.s.vae_lr, seed=self.s.seed,
                                                          temporal_weight=self.s.vae_temporal_weight,
                                                          lengths=tuple(self.s.vae_lengths)))
        outcome = run_loop(trainer, self._loop("vae", self.s.vae_steps))
        vae.load_state_dict(trainer.averaged_weights())
        vae.eval().requires_grad_(False)
        probe = clips.sample(16, 12, torch.Generator().manual_seed(1))
        gain = fold_latent_scale(vae, probe, DEMO_SCALE_FACTOR)
        save_vae(vae, self.vae_dir, dtype=torch.bfloat16)
        from .vae_trainer import reconstruction_psnr

        stored = ViTVAE.from_pretrained(self.vae_dir, dtype=torch.float32, device="cpu")
        psnr = reconstruction_psnr(stored, probe)
        self._record("vae", time.perf_counter() - t0,
                     {**outcome["metrics"], "heldin_psnr_mean_decode": psnr, "latent_gain": gain,
                      "params": stored.num_parameters(), **self.heldout_vae_metrics(stored)}, outcome)

    def teach_vae_motion(self) -> None:
        """Fine-tune the whole VAE, encoder too, with the frame-change loss weighted up, on 12-frame crops.

        [finding] The decoder alone cannot learn motion inside a latent frame (docs/demo-model.md, "Smoothness"):
        the latent must carry it. Starting from the generation-2 VAE, 1,000 steps of this at weight 8 took the
        held-out boundary ratio from 4.24 to 2.15 and the held-out PSNR from 21.7 to 23.0 dB (600 steps: weight
        3, 2.57; weight 8, 2.44); trained from scratch with the loss on, a VAE did not get smoother. It runs
        before the latents are cached, since it changes the encoder; the latent scale is folded in again
        afterwards. 12-frame crops are the inference tiles (3 latent frames), where the
        frame-change loss sees the boundaries between latent frames.
        """
        if self._done("vae_motion") or self.s.vae_motion_steps <= 0:
            return
        from ..models.vae import ViTVAE
        from .vae_trainer import VAETrainer, VAETrainSettings

        t0 = self._start()
        clips = self.vae_clips()
        vae = ViTVAE.from_pretrained(self.vae_dir, dtype=torch.float32, device="cpu")
        before = self.heldout_vae_metrics(vae)
        settings = VAETrainSettings(steps=self.s.vae_motion_steps, batch=self.s.vae_batch, lr=self.s.vae_motion_lr,
                                    warmup=20, seed=self.s.seed + 3, temporal_weight=self.s.vae_motion_weight,
                                    lengths=(12,))
        trainer = VAETrainer(vae.requires_grad_(True), clips, settings)
        outcome = run_loop(trainer, self._loop("vae_motion", self.s.vae_motion_steps))
        vae.load_state_dict(trainer.averaged_weights())
        vae.eval().requires_grad_(False)
        gain = fold_latent_scale(vae, clips.sample(16, 12, torch.Generator().manual_seed(1)), DEMO_SCALE_FACTOR)
        save_vae(vae, self.vae_dir, dtype=torch.bfloat16)
        stored = ViTVAE.from_pretrained(self.vae_dir, dtype=torch.float32, device="cpu")
        self._record("vae_motion", time.perf_counter() - t0,
                     {**outcome["metrics"], "latent_gain": gain,
                      **{k + "_before": v for k, v in before.items() if k != "truth_boundary_ratio"},
                      **self.heldout_vae_metrics(stored)}, outcome)

    def encode_latents(self) -> None:
        cache = self.work / "latents.safetensors"
        if self._done("latents") and cache.is_file():
            return
        from ..models.vae import ViTVAE
        from .data import build_latent_cache
        from .synthetic import SyntheticPhysicsDataset

        t0 = self._start()
        vae = ViTVAE.from_pretrained(self.vae_dir, dtype=torch.float32, device="cpu")
        source = SyntheticPhysicsDataset(self.s.dit_clips, self.scene_config(self.s.clip_frames),
                                         first_seed=self.s.seed)
        clips = build_latent_cache(source, *inference_encoders(vae, fps=24), progress=self.s.progress,
                                   meta={"fps": 24, "clip_frames": self.s.clip_frames})
        if self.s.caption_variants > 1:
            from .captions import caption_variants

            clips.caption_choices = [caption_variants(source.clip(i), source.config, self.s.caption_variants,
                                                      seed=self.s.seed) for i in range(len(source))]
        clips.save(cache)
        std = float(clips.latents.std())
        self._record("latents", time.perf_counter() - t0,
                     {"clips": len(clips), "latent_frames": clips.num_frames, "latent_std": std})

    def finetune_decoder(self) -> None:
        """More training for the decoder alone, with the encoder (so the cached latents) fixed.

        The decoder is what the user sees, and the joint stage ends while it is still improving; freezing
        the encoder keeps every latent the DiT trains on unchanged, so this stage is independent of the DiT's.
        """
        if self._done("decoder") or self.s.decoder_steps <= 0:
            return
        from ..models.vae import ViTVAE
        from .vae_trainer import VAETrainer, VAETrainSettings, reconstruction_psnr

        t0 = self._start()
        clips = self.vae_clips()
        vae = ViTVAE.from_pretrained(self.vae_dir, dtype=torch.float32, device="cpu")
        probe = clips.sample(16, 12, torch.Generator().manual_seed(1))
        before = reconstruction_psnr(vae, probe)
        settings = VAETrainSettings(steps=self.s.decoder_steps, batch=self.s.vae_batch, lr=self.s.decoder_lr,
                                    train_encoder=False, seed=self.s.seed + 2,
                                    temporal_weight=self.s.vae_temporal_weight, lengths=tuple(self.s.vae_lengths))
        trainer = VAETrainer(vae.requires_grad_(True), clips, settings)
        outcome = run_loop(trainer, self._loop("decoder", self.s.decoder_steps))
        vae.load_state_dict(trainer.averaged_weights())
        vae.eval().requires_grad_(False)
        save_vae(vae, self.vae_dir, dtype=torch.bfloat16)
        stored = ViTVAE.from_pretrained(self.vae_dir, dtype=torch.float32, device="cpu")
        self._record("decoder", time.perf_counter() - t0,
                     {**outcome["metrics"], "heldin_psnr_mean_decode_before": before,
                      "heldin_psnr_mean_decode": reconstruction_psnr(stored, probe), **self.heldout_vae_metrics(stored)},
                     outcome)

    def build_text_encoder(self) -> None:
        if self._done("text"):
            return
        from .data import LatentClips
        from .text_demo import build_tiny_t5, save_text_encoder, save_tokenizer, train_tokenizer

        t0 = self._start()
        clips = LatentClips.load(self.work / "latents.safetensors")
        tokenizer = train_tokenizer(clips.all_captions(), vocab_size=self.s.vocab_size)
        tokenizer_dir = self.work / "tokenizer"
        save_tokenizer(tokenizer, tokenizer_dir, max_length=demo_model_config().caption_max_length)
        model = build_tiny_t5(tokenizer.get_vocab_size(), seed=self.s.seed)
        save_text_encoder(model, tokenizer_dir, self.work / "t5_init", dtype=torch.float32)
        self._record("text", time.perf_counter() - t0, {"vocab": tokenizer.get_vocab_size(),
                                                        "params": sum(p.numel() for p in model.parameters())})

    def train_dit(self) -> None:
        if self._done("dit"):
            return
        from ..checkpoint.writer import save_official
        from ..models.dit import MagiDiT
        from .data import LatentClips
        from .dit_trainer import DiTTrainer, DiTTrainSettings, init_dit_for_training
        from .captions import write_demo_vocabulary
        from ..models.text_encoder import resolve_t5_folder
        from .text_demo import TrainableCaptionEncoder, load_t5_module, save_text_encoder

        t0 = self._start()
        config = self.config(distill=False)
        clips = LatentClips.load(self.work / "latents.safetensors")
        init_dir = self.work / "t5_init"
        # From a previous demo: its T5 and its tokenizer (the Unigram trainer orders the characters the captions
        # never use differently on every run, so this run's tokenizer would not match those T5 weights).
        from_previous = bool(self.s.init_from) and not self.s.fresh_dit
        text_start = Path(self.s.init_from) / "t5" if from_previous else init_dir
        tokenizer_folder = resolve_t5_folder(text_start)
        text = TrainableCaptionEncoder(load_t5_module(text_start), tokenizer_folder,
                                       config.model_config.caption_max_length)
        start = None
        if from_previous:  # a previous generation's DiT and its jointly trained T5, on this run's latents
            from ..checkpoint.loader import load_dit

            start = load_dit(config, device="cpu", dtype=torch.float32, load_root=Path(self.s.init_from) / "dit")
        config = training_config(config)
        model = MagiDiT(config.model_config)
        if start is None:
            init_dit_for_training(model, seed=self.s.seed)
        else:
            model.load_state_dict(start.state_dict())
        model.requires_grad_(True)
        settings = DiTTrainSettings(steps=self.s.dit_steps, lr=self.s.dit_lr,
                                    tokens_per_step=self.s.dit_tokens_per_step, seed=self.s.seed)
        trainer = DiTTrainer(model, config, clips, text, settings)
        outcome = run_loop(trainer, self._loop("dit", self.s.dit_steps))
        save_official(shipping_weights(trainer.averaged_weights(), self.config(distill=False).model_config.params_dtype),
                      self.dit_root / "inference_weight", compress_zst=True)
        folder = save_text_encoder(text.module, tokenizer_folder, self.t5_root,
                                   weights=trainer.averaged_text_weights(), dtype=torch.bfloat16)
        write_demo_vocabulary(folder)
        self._record("dit", time.perf_counter() - t0, {**outcome["metrics"],
                                                      "params": sum(p.numel() for p in model.parameters())}, outcome)

    def distill(self) -> None:
        if self._done("distill"):
            return
        from ..checkpoint.loader import load_dit
        from ..checkpoint.writer import save_official
        from ..models.dit import MagiDiT
        from .data import LatentClips
        from .distill import DistillSettings, ShortcutDistiller
        from .text_demo import TrainableCaptionEncoder, load_t5_module

        t0 = self._start()
        config = self.config(distill=False)
        teacher = load_dit(config, device="cpu", dtype=torch.float32)
        student = MagiDiT(training_config(config).model_config, distill=True)
        student.load_state_dict(teacher.state_dict())
        student.requires_grad_(True)
        clips = LatentClips.load(self.work / "latents.safetensors")
        text = TrainableCaptionEncoder(load_t5_module(self.t5_root), self.t5_root,
                                       config.model_config.caption_max_length, trainable=False)
        settings = DistillSettings(steps=self.s.distill_steps, finest_steps=self.s.base_steps,
                                   tokens_per_step=self.s.dit_tokens_per_step, seed=self.s.seed + 1)
        distiller = ShortcutDistiller(student, teacher, config, clips, text, settings)
        outcome = run_loop(distiller, self._loop("distill", self.s.distill_steps))
        save_official(shipping_weights(distiller.averaged_weights(), config.model_config.params_dtype),
                      self.dit_root / "inference_weight.distill", compress_zst=True)
        self._record("distill", time.perf_counter() - t0, dict(outcome["metrics"], cycle=distiller.cycle), outcome)

    def write_presets(self) -> None:
        self.presets.mkdir(parents=True, exist_ok=True)
        for name, distill in (("demo", False), ("demo_distill", True)):
            self.config(distill=distill).to_json(self.presets / f"{name}.json")

    # ------------------------------------------------------------------ the log that ships
    def write_training_log(self) -> Path:
        sizes = {str(p.relative_to(self.out)): p.stat().st_size for p in sorted(self.out.rglob("*")) if p.is_file()
                 and p.suffix in (".safetensors", ".zst", ".json")}
        weights = sum(v for k, v in sizes.items() if k.endswith((".safetensors", ".zst")))
        lines = [
            "magi1 demo model: training log",
            "",
            f"command:   {self.s.command}",
            f"python:    {platform.python_version()}  torch {torch.__version__}  threads {torch.get_num_threads()}",
            f"machine:   {platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPUs visible)",
            f"settings:  {json.dumps({k: v for k, v in asdict(self.s).items() if k != 'command'})}",
            "",
            "stage times (minutes, summed over resumes):",
        ]
        lines[-1] = "stage times (minutes, summed over resumes; wall clock, and CPU time / 2 cores):"
        lines += [f"  {stage:8s} {seconds / 60:6.1f}  cpu/2 {self.cpu_timings.get(stage, 0.0) / 120:6.1f}"
                  for stage, seconds in self.timings.items()]
        lines += [f"  {'total':8s} {sum(self.timings.values()) / 60:6.1f}  cpu/2 "
                  f"{sum(self.cpu_timings.values()) / 120:6.1f}", "", "stage results:"]
        lines += [f"  {stage:8s} {json.dumps(result)}" for stage, result in self.results.items()]
        lines += ["", f"weights: {weights / 2**20:.2f} MiB in all"]
        lines += [f"  {name}: {size / 2**20:.2f} MiB" for name, size in sizes.items() if name.endswith((".safetensors", ".zst"))]
        lines += ["", "loss log (running means over 25 steps):"]
        if self.loss_log.is_file():
            lines += self.loss_log.read_text().splitlines()
        path = self.out / TRAINING_LOG
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path


def preview(preset: str | Path, prompt: str, png_path: str | Path, *, seed: int | None = None,
            num_frames: int | None = None, image=None, video=None) -> Path:
    """Generate with a demo preset and save a contact sheet of the frames (checks after training)."""
    from PIL import Image

    from ..io.contact_sheet import contact_sheet
    from ..pipeline import MagiPipeline
    from ..utils import video_to_uint8

    pipe = MagiPipeline.from_pretrained(str(preset), device="cpu")
    out = pipe(prompt, seed=seed, num_frames=num_frames, image=image, video=video)
    Image.fromarray(contact_sheet(video_to_uint8(out.frames[0]))).save(png_path)  # frames[0]: the first video
    return Path(png_path)
