"""`magi1 eval physics`: Physics-IQ of a model's continuations of held-out synthetic clips, beside baselines.

The held-out set is written in the real benchmark's layout (two takes per scenario, so the physical
variance is defined); the model continues each take-1 conditioning video (v2v) or its last frame (i2v);
two baselines do the same without a model: the last frame copied (no motion) and the last frame shifted by
a random walk (motion in the wrong places). All are scored by `score_generated_folder`, which also scores
any folder laid out like the real benchmark (`magi1 eval physics --benchmark_root ... --generated ...`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..arg_types import positive_float, positive_int
from ..errors import InputError
from .benchmark import read_video, score_generated_folder, write_lossless_video

logger = logging.getLogger(__name__)

PREFIX_FRAMES = 32  # the official v2v takes the first 32 frames of the prefix video
EVALUATIONS = ("physics", "quality", "prompts")


def build_parser() -> argparse.ArgumentParser:
    from ..cli import OneLineErrorParser

    p = OneLineErrorParser(prog="magi1 eval physics", description=__doc__.splitlines()[0])
    p.add_argument("--config_file", default="demo", help="model to evaluate (preset or official config JSON)")
    p.add_argument("--scenarios", type=positive_int, default=12, help="held-out synthetic scenarios")
    p.add_argument("--all_perspectives", action="store_true", help="score left/center/right (default: center)")
    p.add_argument("--seconds", type=positive_float, default=2.0, help="seconds of continuation that are scored")
    p.add_argument("--modes", nargs="+", default=["v2v", "i2v"], choices=["v2v", "i2v"])
    p.add_argument("--steps", type=positive_int, default=None,
                   help="denoising steps per chunk (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="keep the benchmark and generated videos here")
    p.add_argument("--benchmark_root", default=None, help="score an existing folder instead (real layout)")
    p.add_argument("--generated", default=None, help="with --benchmark_root: the generated videos to score")
    return p


def parse_eval_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse one evaluation's options; an unknown flag is one line naming the closest flags, as `magi1 generate`
    does, not the whole usage (the parser is a OneLineErrorParser, so its other errors are one line too)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        from ..cli_suggest import unknown_flags_message

        parser.exit(2, f"{parser.prog}: error: {unknown_flags_message(parser, unknown)}\n")
    return args


def main_eval(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        usage = "usage: magi1 eval physics|quality|prompts [options]   (magi1 eval physics -h for the options)"
        if not argv:  # no subcommand is a usage error (exit 2), as for `magi1` and `magi1 train`
            print(usage, file=sys.stderr)
            return 2
        print(usage)
        return 0
    if argv[0] == "quality":
        from .quality import main_quality

        return main_quality(argv[1:])
    if argv[0] == "prompts":
        from .prompts import main_prompts

        return main_prompts(argv[1:])
    if argv[0] != "physics":
        import difflib

        close = difflib.get_close_matches(argv[0], EVALUATIONS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"magi1 eval: error: unknown evaluation {argv[0]!r}{hint}; available: {', '.join(EVALUATIONS)}",
              file=sys.stderr)
        return 2
    parser = build_parser()
    args = parse_eval_args(parser, argv[1:])
    if args.benchmark_root:
        if not args.generated:
            print("magi1 eval physics: error: --benchmark_root needs --generated (the folder of videos to score)",
                  file=sys.stderr)
            return 2
        for flag, folder in (("--benchmark_root", args.benchmark_root), ("--generated", args.generated)):
            if not Path(folder).is_dir():
                raise InputError(f"{flag} {folder} is not a folder")
        try:
            result = score_generated_folder(args.benchmark_root, args.generated, seconds=args.seconds)
        except FileNotFoundError as err:  # a folder without the benchmark's videos: its one sentence
            raise InputError(str(err)) from None
        print(results_table({"generated": result}))
        return 0
    from .quality import prepare_output_folder

    prepare_output_folder("--out", args.out)  # a folder it cannot write: refused before the model loads
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out) if args.out else Path(scratch)
        results = evaluate_physics(root, args)
    print(results_table(results))
    return 0


def evaluate_physics(root: Path, args) -> dict:
    from ..pipeline import MagiPipeline
    from ..train.synthetic import PERSPECTIVES, write_physics_iq_eval_set
    from ..utils import video_to_uint8

    pipe = MagiPipeline.from_pretrained(args.config_file, device=args.device)
    r = pipe.config.runtime_config
    fps = r.fps
    testing_frames = int(round(args.seconds * fps))
    perspectives = PERSPECTIVES if args.all_perspectives else ("perspective-center",)
    bench = root / "benchmark"
    manifest = write_physics_iq_eval_set(bench, num_scenarios=args.scenarios, fps=fps, height=r.video_size_h,
                                         width=r.video_size_w, conditioning_seconds=PREFIX_FRAMES / fps,
                                         testing_seconds=args.seconds, perspectives=perspectives)
    views = [m for m in manifest if m["take"] == 1]
    rng = np.random.default_rng(args.seed)
    folders = {name: root / "generated" / name for name in ["copy last frame", "random motion", *args.modes]}
    for view in views:
        conditioning = read_video(view["conditioning"])  # (T, H, W, 3) uint8
        name = f"{view['id']}_generated_{Path(view['testing']).name.split('_', 2)[2]}"
        last = conditioning[-1]
        write_lossless_video(folders["copy last frame"] / name, np.repeat(last[None], testing_frames, 0), fps)
        write_lossless_video(folders["random motion"] / name, random_walk(last, testing_frames, rng), fps)
        for mode in args.modes:
            inputs = {"video": conditioning} if mode == "v2v" else {"image": last}
            result = pipe(view["caption"], num_frames=testing_frames + 4 * r.chunk_width, seed=args.seed,
                          num_inference_steps=args.steps, progress=False, **inputs)
            out = video_to_uint8(result.frames[0])  # the first (only) video of the batch, as bytes
            # i2v output starts with the image's own latent frame (the image repeated over 4 pixel frames).
            frames = out[r.temporal_downsample_factor:] if mode == "i2v" else out
            write_lossless_video(folders[mode] / name, frames[:testing_frames], fps)
        logger.info("scored view %s (%s)", view["id"], view["caption"])
    return {label: score_generated_folder(bench, folder, fps=fps, seconds=args.seconds)
            for label, folder in folders.items()}


def random_walk(frame: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """The frame shifted by a random walk of whole pixels: motion, but not physical motion."""
    offsets = np.cumsum(rng.integers(-2, 3, size=(count, 2)), axis=0)
    return np.stack([np.roll(frame, tuple(o), axis=(0, 1)) for o in offsets])


def results_table(results: dict) -> str:
    lines = ["| method | Physics-IQ | spatiotemporal IoU | spatial IoU | weighted spatial IoU | MSE |",
             "|---|---|---|---|---|---|"]
    for label, result in results.items():
        s = result.score
        lines.append(f"| {label} | {s.score:.2f} | {s.spatiotemporal_iou:.4f} | {s.spatial_iou:.4f} | "
                     f"{s.weighted_spatial_iou:.4f} | {s.mse:.5f} |")
    return "\n".join(lines)
