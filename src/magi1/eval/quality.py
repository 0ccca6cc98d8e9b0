"""`magi1 eval quality`: smoothness and object persistence of a model's videos of held-out synthetic scenes.

For each held-out scenario (seeds the training never saw) the model makes a t2v video from the scene's
caption and a v2v continuation of the scene's first 32 frames, and the ground truth goes through the VAE
alone. Reported:

- smoothness (`eval.smoothness`): change across 4-frame group boundaries / change inside groups, pooled over
  the VAE round trips, the t2v videos and the v2v continuations (real footage: about 1.0);
- persistence (`eval.persistence`): per run, the share of frames showing each named object and the share
  with nothing unnamed; the worst object of each run, the share of runs that pass (every named object in
  ≥ 95% of frames and ≥ 95% clean frames), and the same near chunk boundaries.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

import numpy as np

from ..arg_types import non_negative_int, positive_int
from ..errors import InputError
from .persistence import PersistenceReport, persistence
from .smoothness import group_boundary_ratio

logger = logging.getLogger(__name__)

QUALITY_FIRST_SEED_OFFSET = 5_000  # held-out seeds apart from the Physics-IQ scenarios (EVAL_FIRST_SEED + 0..)
PREFIX_FRAMES = 32


def build_parser() -> argparse.ArgumentParser:
    from ..cli import OneLineErrorParser

    p = OneLineErrorParser(prog="magi1 eval quality", description=__doc__.splitlines()[0])
    p.add_argument("--config_file", default="demo", help="model to evaluate (preset or official config JSON)")
    p.add_argument("--scenarios", type=positive_int, default=8, help="held-out synthetic scenes")
    p.add_argument("--num_frames", type=positive_int, default=96,
                   help="frames per t2v video and per v2v continuation")
    p.add_argument("--modes", nargs="+", default=["t2v", "v2v"], choices=["t2v", "v2v"])
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps per chunk (default: the config's)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--save_frames", default=None, help="folder for a contact sheet PNG per run")
    return p


@dataclass
class QualityResult:
    smoothness: dict = field(default_factory=dict)                 # "vae round trip" / mode → SmoothnessReport
    persistence: dict = field(default_factory=dict)                # mode → [PersistenceReport]


def held_out_clips(count: int, num_frames: int, size: tuple[int, int], fps: int):
    from ..train.synthetic import EVAL_FIRST_SEED, SceneConfig, make_clip

    config = SceneConfig(height=size[0], width=size[1], num_frames=num_frames, fps=float(fps),
                         conditioning_frames=min(PREFIX_FRAMES, num_frames))
    return [make_clip(EVAL_FIRST_SEED + QUALITY_FIRST_SEED_OFFSET + k, config) for k in range(count)]


def evaluate_quality(args) -> QualityResult:
    from ..models.vae_helpers import decode_chunk, encode_video
    from ..pipeline import MagiPipeline

    prepare_output_folder("--save_frames", args.save_frames)  # a folder it cannot write: refused before any run
    pipe = MagiPipeline.from_pretrained(args.config_file, device=args.device)
    r = pipe.config.runtime_config
    clips = held_out_clips(args.scenarios, PREFIX_FRAMES + args.num_frames, (r.video_size_h, r.video_size_w), r.fps)
    videos: dict[str, list[np.ndarray]] = {"vae round trip": [], **{m: [] for m in args.modes}}
    result = QualityResult(persistence={m: [] for m in args.modes})
    for k, clip in enumerate(clips):
        # Whole 4-frame groups only: the smoothness ratio reads groups, and the tiled encoder refuses a last
        # tile of 2 or 3 frames, which 32 prefix frames + an odd --num_frames would otherwise hand it.
        truth = clip.frames[:len(clip.frames) - len(clip.frames) % 4]
        latent = encode_video(pipe.vae, truth, fps=r.fps)
        videos["vae round trip"].append(decode_chunk(pipe.vae, latent, fps=r.fps).cpu().numpy())
        named = {o.colour: 1 for o in clip.objects}
        for mode in args.modes:
            inputs = {"video": clip.frames[:PREFIX_FRAMES]} if mode == "v2v" else {}
            frames = pipe(clip.caption, num_frames=args.num_frames, seed=args.seed + k, progress=False,
                          num_inference_steps=args.steps, output_type="np", **inputs).frames[0]  # one video of the batch
            frames = np.round(frames * 255.0).astype(np.uint8)  # "np" is float in [0, 1], exact from uint8
            # A decoded video ends at the end of a chunk (so of a 4-frame group); a v2v continuation starts inside
            # the chunk that holds the end of the prefix, so its groups and chunks are counted from the end.
            chunk = 4 * r.chunk_width
            videos[mode].append(frames[len(frames) % 4:])
            report = persistence(frames, named, chunk_frames=chunk, first_chunk_start=len(frames) % chunk)
            result.persistence[mode].append(report)
            logger.info("%s %d (%s): %s", mode, k, clip.caption, report)
            if args.save_frames:
                save_sheet(args.save_frames, f"{mode}_{k:02d}.png", frames)
    result.smoothness = {name: group_boundary_ratio(v) for name, v in videos.items()}
    return result


def prepare_output_folder(flag: str, folder) -> None:
    """Create an output folder up front; one that cannot be made is the user's one sentence, not a traceback
    after every video was generated."""
    if folder is None:
        return
    from pathlib import Path

    if Path(folder).exists() and not Path(folder).is_dir():
        raise InputError(f"{flag} {folder} is a file, not a folder")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{flag} {folder} cannot be made as a folder ({err.strerror or err})") from None


def save_sheet(folder, name: str, frames: np.ndarray) -> None:
    from pathlib import Path

    from PIL import Image

    from ..io.contact_sheet import contact_sheet

    Path(folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(frames, every=4, columns=12)).save(Path(folder) / name)


def persistence_summary(reports: list[PersistenceReport], threshold: float = 0.95) -> dict[str, float]:
    """Means over the runs; the two boundary figures are over the runs that cross a chunk boundary, and nan
    where none does (a one-chunk video has no boundary to judge)."""
    worst = [min(r.presence.values(), default=1.0) for r in reports]
    with_boundary = [r for r in reports if not np.isnan(r.boundary_clean)]
    near = [min(r.boundary_presence.values(), default=1.0) for r in with_boundary]
    return {
        "runs": len(reports),
        "pass": float(np.mean([r.passes(threshold) for r in reports])),
        "worst named object present (mean over runs)": float(np.mean(worst)),
        "clean frames (mean)": float(np.mean([r.clean for r in reports])),
        "near chunk boundaries: worst object present": float(np.mean(near)) if near else float("nan"),
        "near chunk boundaries: clean frames": (float(np.mean([r.boundary_clean for r in with_boundary]))
                                                if with_boundary else float("nan")),
    }


def _share(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.1%}"


def quality_table(result: QualityResult) -> str:
    lines = ["| videos | boundary change | in-group change | ratio |", "|---|---|---|---|"]
    for name, report in result.smoothness.items():
        lines.append(f"| {name} | {report.boundary_change:.3f} | {report.within_change:.3f} | {report.ratio:.2f} |")
    lines += ["", "| mode | runs | runs passing | worst named object present | clean frames | "
                  "near boundaries: worst present | near boundaries: clean |", "|---|---|---|---|---|---|---|"]
    for mode, reports in result.persistence.items():
        s = persistence_summary(reports)
        lines.append(f"| {mode} | {s['runs']} | {s['pass']:.0%} | {s['worst named object present (mean over runs)']:.1%} "
                     f"| {s['clean frames (mean)']:.1%} | {_share(s['near chunk boundaries: worst object present'])} | "
                     f"{_share(s['near chunk boundaries: clean frames'])} |")
    return "\n".join(lines)


def main_quality(argv: list[str]) -> int:
    from .cli import parse_eval_args

    args = parse_eval_args(build_parser(), argv)
    print(quality_table(evaluate_quality(args)))
    return 0
