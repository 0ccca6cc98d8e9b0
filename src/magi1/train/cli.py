"""`magi1 train ...`: the demo recipe, and each trainer on its own for your own data.

    magi1 train demo      retrain the shipped demo model (VAE → latents → text → DiT → distill → presets)
    magi1 train vae       train a ViT VAE on clips (synthetic, or a folder of mp4 + .txt captions)
    magi1 train encode    encode clips into a latent cache with a trained VAE
    magi1 train dit       train a DiT with the MAGI-1 objective on a latent cache
    magi1 train distill   shortcut-distil a trained DiT into a few-step, cfg-free one
    magi1 train lora      LoRA adapters (or full fine-tuning) of any MAGI-1 DiT on a folder of captioned clips

Every trainer resumes from its `--workdir` when rerun with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..arg_types import non_negative_int, positive_float, positive_int
from ..errors import InputError


def _source(args):
    """The clip source the flags describe: a folder of videos or the synthetic physics generator."""
    if args.videos:
        from .data import VideoFolder

        try:
            return VideoFolder(args.videos, height=args.size, width=args.size, fps=args.fps, num_frames=args.frames)
        except ValueError as err:  # no usable clip: say so, not a traceback
            raise InputError(f"--videos: {err}") from None
    from .synthetic import SceneConfig, SyntheticPhysicsDataset

    # Clips shorter than the scenes' usual 24 shared conditioning frames share all of them.
    scene = SceneConfig(height=args.size, width=args.size, num_frames=args.frames,
                        conditioning_frames=min(args.frames, SceneConfig.conditioning_frames))
    return SyntheticPhysicsDataset(args.clips, scene, first_seed=args.seed)


def _add_source_flags(p, frames: int) -> None:
    p.add_argument("--videos", default=None, help="folder of *.mp4 with same-name .txt captions (default: synthetic)")
    p.add_argument("--clips", type=positive_int, default=400, help="synthetic clips to generate")
    p.add_argument("--frames", type=positive_int, default=frames, help="frames per clip")
    p.add_argument("--size", type=positive_int, default=64, help="square frame size (multiple of 16)")
    p.add_argument("--fps", type=positive_int, default=24)


def _add_loop_flags(p, steps: int) -> None:
    p.add_argument("--steps", type=positive_int, default=steps)
    p.add_argument("--workdir", required=True, help="resumable state and the loss log live here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--checkpoint-every", type=positive_float, default=180.0, help="seconds between resumable saves")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _loop(args, name: str):
    from .loop import LoopSettings

    work = Path(args.workdir)
    return LoopSettings(total_steps=args.steps, state_dir=str(work / f"state_{name}"),
                        checkpoint_every_s=args.checkpoint_every, log_path=str(work / "loss_log.txt"), desc=name,
                        progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magi1 train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)

    from .demo_recipe import RecipeSettings

    defaults = RecipeSettings()
    p = sub.add_parser("demo", help="retrain the shipped demo model end to end")
    p.add_argument("--workdir", default=defaults.workdir)
    p.add_argument("--out-dir", default=defaults.out_dir, help="where vae/, t5/, dit/ and the log are written")
    p.add_argument("--preset-dir", default=defaults.preset_dir, help="where demo.json / demo_distill.json go")
    for name in ("seed", "vae_steps", "vae_motion_steps", "decoder_steps", "vae_clips", "dit_steps", "dit_clips",
                 "distill_steps", "base_steps", "distill_infer_steps", "dit_tokens_per_step", "dit_layers",
                 "dit_hidden"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    p.add_argument("--caption-variants", type=int, default=defaults.caption_variants,
                   help="wordings per clip for the DiT (synonyms, short and long forms, counts); 1: canonical only")
    p.add_argument("--vae-mlp-ratio", type=float, default=defaults.vae_mlp_ratio, help="VAE MLP width / embed_dim")
    p.add_argument("--vae-temporal-weight", type=float, default=defaults.vae_temporal_weight,
                   help="weight of the frame-change loss of the VAE stages (0: off)")
    p.add_argument("--vae-lr", type=float, default=defaults.vae_lr, help="peak learning rate of the VAE stage")
    p.add_argument("--vae-motion-weight", type=float, default=defaults.vae_motion_weight,
                   help="frame-change loss weight of the vae_motion stage (its steps: --vae-motion-steps)")
    p.add_argument("--vae-motion-lr", type=float, default=defaults.vae_motion_lr)
    p.add_argument("--dit-lr", type=float, default=defaults.dit_lr, help="peak learning rate of the DiT stage")
    p.add_argument("--init-from", default=defaults.init_from, metavar="DEMO_DIR",
                   help="start the VAE and the DiT (and its T5) from a demo folder with vae/, dit/ and t5/ "
                        "(e.g. the shipped src/magi1/demo) instead of from scratch")
    p.add_argument("--fresh-dit", action="store_true",
                   help="with --init-from: take only its VAE; the DiT and its T5 start from scratch on the new latents")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--checkpoint-every", type=positive_float, default=defaults.checkpoint_every_s)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("vae", help="train a ViT VAE")
    _add_source_flags(p, frames=48)
    _add_loop_flags(p, steps=1600)
    p.add_argument("--out", required=True, help="VAE folder to write (config.json + safetensors)")
    p.add_argument("--ddconfig", default=None, help="JSON file or string with ddconfig overrides")
    p.add_argument("--batch", type=positive_int, default=4)

    p = sub.add_parser("encode", help="encode clips into a latent cache")
    _add_source_flags(p, frames=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae", required=True, help="VAE folder")
    p.add_argument("--out", required=True, help="latent cache file (.safetensors)")

    for name, steps in (("dit", 2000), ("distill", 400)):
        p = sub.add_parser(name, help="train a DiT with the MAGI-1 objective" if name == "dit"
                           else "shortcut-distil a trained DiT")
        _add_loop_flags(p, steps=steps)
        p.add_argument("--config", required=True, help="config JSON (model_config and runtime_config are used)")
        p.add_argument("--latents", required=True, help="latent cache from `magi1 train encode`")
        p.add_argument("--text-encoder", required=True, help="T5 folder (official parent layout or the folder)")
        p.add_argument("--out", required=True, help="checkpoint root: writes inference_weight[.distill]/")
        p.add_argument("--tokens-per-step", type=non_negative_int, default=2304)
        p.add_argument("--lr", type=positive_float, default=5e-4 if name == "dit" else 2e-4)
        if name == "dit":
            p.add_argument("--train-text-encoder", action="store_true",
                           help="train the T5 along (saved into --out/t5)")
        else:
            p.add_argument("--finest-steps", type=positive_int, default=None, help="default: the config's num_steps")
    from ..lora.cli import add_lora_parser

    add_lora_parser(sub)
    return parser


def main_train(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:  # a bare `magi1 train`: what it can train, not "the following arguments are required: what"
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.command_line = "magi1 train " + " ".join(argv)
    if args.what in ("vae", "encode", "dit", "distill"):
        _refuse_bad_inputs(args)  # every path and number, before a clip is made or a model loads
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if getattr(args, "quiet", False):  # the top-level --quiet handling never sees a delegated command's flags
        from ..cli import _silence_library_progress_bars

        _silence_library_progress_bars()
    return {"demo": _demo, "vae": _vae, "encode": _encode, "dit": _dit, "distill": _distill,
            "lora": _lora}[args.what](args)


def _refuse_bad_inputs(args) -> None:
    """What the low-level trainers would otherwise find out as a traceback, minutes in."""
    if hasattr(args, "size") and args.size % 16:
        raise InputError(f"--size must be a multiple of 16 (the VAE's 8x patches, then the DiT's 2x2), got {args.size}")
    if getattr(args, "videos", None) and not Path(args.videos).is_dir():
        raise InputError(f"--videos: {args.videos} is not a folder")
    if args.what == "vae":
        from .vae_trainer import VAETrainSettings

        longest = max(VAETrainSettings.lengths)
        if args.frames < longest:
            raise InputError(f"--frames must be at least {longest} (the VAE trains on crops of up to {longest} "
                             f"frames), got {args.frames}")
        args.ddconfig_overrides = _ddconfig_overrides(args.ddconfig)
    if args.what == "encode" and not Path(args.vae).is_dir():
        raise InputError(f"--vae: {args.vae} is not a folder (a VAE from `magi1 train vae`)")
    if args.what in ("dit", "distill"):
        from ..config import ConfigError, load_config
        from ..models.text_encoder import resolve_t5_folder

        try:
            load_config(args.config)
        except ConfigError as err:
            raise InputError(str(err)) from None
        if not Path(args.latents).is_file():
            raise InputError(f"--latents: {args.latents} is not a file (a latent cache from `magi1 train encode`)")
        try:
            from safetensors import safe_open

            with safe_open(str(args.latents), framework="pt") as handle:
                usable = "latents" in handle.keys() and "captions" in (handle.metadata() or {})
        except Exception:  # safetensors raises its own error types for a file that is not one
            usable = False
        if not usable:
            raise InputError(f"--latents: {args.latents} is not a latent cache written by `magi1 train encode`")
        try:
            resolve_t5_folder(args.text_encoder)
        except FileNotFoundError as err:
            raise InputError(f"--text-encoder: {err}") from None
    if args.what != "encode":
        _refuse_other_settings(args)


# Flags that do not change what a run trains: they may differ when a --workdir is resumed.
RUN_ONLY_FLAGS = ("what", "workdir", "out", "threads", "quiet", "checkpoint_every", "command_line",
                  "ddconfig_overrides")


def _refuse_other_settings(args) -> None:
    from .resume import refuse_other_settings

    settings = {}
    for key, value in vars(args).items():
        if key in RUN_ONLY_FLAGS:
            continue
        if key in ("videos", "config", "latents", "text_encoder") and value is not None:
            value = str(Path(value).resolve())
        settings[key] = value
    work = Path(args.workdir)
    try:
        refuse_other_settings(work, settings, has_state=(work / f"state_{args.what}").exists(), what="--workdir",
                              settings_file=f"args_{args.what}.json")
    except ValueError as err:
        raise InputError(str(err)) from None


def _ddconfig_overrides(text: str | None) -> dict:
    if not text:
        return {}
    source = Path(text).read_text() if Path(text).is_file() else text
    try:
        overrides = json.loads(source)
    except json.JSONDecodeError as err:
        raise InputError(f"--ddconfig is neither a JSON file nor a JSON object ({err.msg} at char {err.pos})") from None
    if not isinstance(overrides, dict):
        raise InputError("--ddconfig must be a JSON object of ddconfig keys, e.g. '{\"embed_dim\": 512}'")
    return overrides


def _outcome(outcome: dict, args) -> str:
    """The last logged metrics, or what a rerun of a finished --workdir did (it trains nothing)."""
    if outcome["resumed_from"] >= args.steps:
        return f"all {args.steps} steps were trained by an earlier run in {args.workdir}; nothing left to train"
    return str(outcome["metrics"])


def _lora(args) -> int:
    from ..lora.cli import main_train_lora

    return main_train_lora(args)


def demo_settings(args):
    """The RecipeSettings of a parsed `magi1 train demo` command line."""
    from .demo_recipe import RecipeSettings

    return RecipeSettings(
        workdir=args.workdir, out_dir=args.out_dir, preset_dir=args.preset_dir, seed=args.seed,
        vae_steps=args.vae_steps, decoder_steps=args.decoder_steps, vae_clips=args.vae_clips,
        dit_steps=args.dit_steps, dit_clips=args.dit_clips, dit_layers=args.dit_layers,
        dit_hidden=args.dit_hidden,
        distill_steps=args.distill_steps, base_steps=args.base_steps, distill_infer_steps=args.distill_infer_steps,
        dit_tokens_per_step=args.dit_tokens_per_step, checkpoint_every_s=args.checkpoint_every,
        caption_variants=args.caption_variants, vae_mlp_ratio=args.vae_mlp_ratio,
        vae_temporal_weight=args.vae_temporal_weight, vae_lr=args.vae_lr, vae_motion_steps=args.vae_motion_steps,
        vae_motion_weight=args.vae_motion_weight, vae_motion_lr=args.vae_motion_lr, dit_lr=args.dit_lr,
        init_from=args.init_from, fresh_dit=args.fresh_dit,
        threads=args.threads, progress=not args.quiet, command=args.command_line,
    )


def _demo(args) -> int:
    from .demo_recipe import DemoRecipe

    try:  # the settings are checked before any stage runs: a refusal is one line, not a traceback
        recipe = DemoRecipe(demo_settings(args))
    except ValueError as err:
        print(f"magi1 train demo: error: {err}", file=sys.stderr)
        return 2
    outcome = recipe.run()
    print(f"demo model trained in {outcome['seconds'] / 60:.1f} min; log: {Path(args.out_dir) / 'training_log.txt'}")
    return 0


def _vae(args) -> int:
    from ..models.vae import VAEConfig, ViTVAE
    from .data import PixelClips
    from .demo_recipe import DEMO_VAE_DDCONFIG, save_vae
    from .loop import run_loop
    from .vae_trainer import VAETrainer, VAETrainSettings

    ddconfig = {**DEMO_VAE_DDCONFIG, "video_size": args.size, **args.ddconfig_overrides}
    vae = ViTVAE(VAEConfig.from_ddconfig(ddconfig)).init_weights(args.seed).requires_grad_(True)
    clips = PixelClips.from_source(_source(args), progress=not args.quiet)
    trainer = VAETrainer(vae, clips, VAETrainSettings(steps=args.steps, batch=args.batch, seed=args.seed))
    outcome = run_loop(trainer, _loop(args, "vae"))
    vae.load_state_dict(trainer.averaged_weights())
    save_vae(vae.eval(), args.out)
    print(f"VAE written to {args.out}: {_outcome(outcome, args)}")
    return 0


def _encode(args) -> int:
    from ..models.vae import ViTVAE
    from .data import build_latent_cache
    from .demo_recipe import inference_encoders

    vae = ViTVAE.from_pretrained(args.vae, dtype=torch.float32, device="cpu")
    clips = build_latent_cache(_source(args), *inference_encoders(vae, fps=args.fps),
                               meta={"fps": args.fps, "clip_frames": args.frames})
    clips.save(args.out)
    print(f"{len(clips)} clips, {clips.num_frames} latent frames each, written to {args.out}")
    return 0


def _dit(args) -> int:
    from ..checkpoint.writer import save_official
    from ..config import load_config
    from ..models.dit import MagiDiT
    from .data import LatentClips
    from .dit_trainer import DiTTrainer, DiTTrainSettings, init_dit_for_training
    from .loop import run_loop
    from .text_demo import TrainableCaptionEncoder, load_t5_module, save_text_encoder

    config = load_config(args.config)
    clips = LatentClips.load(args.latents)
    text = TrainableCaptionEncoder(load_t5_module(args.text_encoder), args.text_encoder,
                                   config.model_config.caption_max_length, trainable=args.train_text_encoder)
    model = init_dit_for_training(MagiDiT(config.model_config), seed=args.seed).requires_grad_(True)
    trainer = DiTTrainer(model, config, clips, text, DiTTrainSettings(steps=args.steps, lr=args.lr, seed=args.seed,
                                                                      tokens_per_step=args.tokens_per_step))
    outcome = run_loop(trainer, _loop(args, "dit"))
    save_official(trainer.averaged_weights(), Path(args.out) / "inference_weight")
    if args.train_text_encoder:
        from ..models.text_encoder import resolve_t5_folder

        save_text_encoder(text.module, resolve_t5_folder(args.text_encoder), Path(args.out) / "t5",
                          weights=trainer.averaged_text_weights())
    print(f"DiT written to {Path(args.out) / 'inference_weight'}: {_outcome(outcome, args)}")
    return 0


def _distill(args) -> int:
    from ..checkpoint.loader import load_dit
    from ..checkpoint.writer import save_official
    from ..config import load_config
    from ..models.dit import MagiDiT
    from .data import LatentClips
    from .distill import DistillSettings, ShortcutDistiller
    from .loop import run_loop
    from .text_demo import TrainableCaptionEncoder, load_t5_module

    config = load_config(args.config)
    if config.engine_config.distill:
        config = config.replace(distill=False, cfg_number=3)  # the teacher is the base model
    teacher = load_dit(config, device="cpu", dtype=torch.float32)
    student = MagiDiT(config.model_config, distill=True)
    student.load_state_dict(teacher.state_dict())
    student.requires_grad_(True)
    text = TrainableCaptionEncoder(load_t5_module(args.text_encoder), args.text_encoder,
                                   config.model_config.caption_max_length, trainable=False)
    finest = args.finest_steps or config.runtime_config.num_steps
    settings = DistillSettings(steps=args.steps, lr=args.lr, finest_steps=finest, seed=args.seed,
                               tokens_per_step=args.tokens_per_step)
    distiller = ShortcutDistiller(student, teacher, config, LatentClips.load(args.latents), text, settings)
    outcome = run_loop(distiller, _loop(args, "distill"))
    save_official(distiller.averaged_weights(), Path(args.out) / "inference_weight.distill")
    print(f"distilled DiT written to {Path(args.out) / 'inference_weight.distill'}: {_outcome(outcome, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main_train())
