"""`magi1 eval prompts`: does each prompt a newcomer types give a video that shows what it names?

The README's own examples and the plain phrasings people try first ("a red ball bounces", "two balls
collide", colours and shapes in any order) are generated with the model as `magi1 generate` would, and
each video is checked with the colour segmentation of `eval.persistence`:

- every colour the prompt names is present in a share of frames (the worst colour is reported);
- the number of objects the prompt names ("two balls", "a red ball and a blue square": 2) is reached in a
  share of frames, counting objects of any demo colour;
- a prompt "shows" what it names when both shares are at least `--threshold` (0.9).
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass

import numpy as np

from ..arg_types import non_negative_int, positive_int
from ..errors import InputError
from ..train.captions import KNOWN_SHAPES
from .persistence import COUNT_WORDS, named_colours, object_counts

logger = logging.getLogger(__name__)

# (prompt, seed): the README's examples first (with the seeds it gives), then what newcomers type.
README_PROMPTS = (
    ("a red ball and a blue square fall and bounce on the floor", 0),  # `magi1 generate` with no --prompt or --seed
    ("a green ball falls and bounces", 7),
    ("a red ball bounces", 1),
    ("a red ball falls and bounces on the floor", 0),
    ("a blue square and a green ball fall", 1),
    ("a red ball rolls", 7),
)
NEWCOMER_PROMPTS = (
    ("two balls collide", 0),
    ("a blue square slides to the left", 0),
    ("a yellow ball", 0),
    ("purple square", 0),
    ("ball, orange", 0),
    ("a green sphere drops", 0),
    ("three balls fall", 0),
    ("a red square and a green square", 0),
)
SHAPE_WORDS = frozenset(KNOWN_SHAPES)  # the demo's shape words, singular and plural


def named_object_count(prompt: str) -> int:
    """How many objects a prompt names: "two balls collide" → 2, "a red ball and a blue square" → 2,
    "purple square" → 1; a shape said again after "the" ("the red ball hits the blue square") adds none."""
    words = re.findall(r"[a-z]+", prompt.lower())
    total = 0
    for i, word in enumerate(words):
        if word not in SHAPE_WORDS:
            continue
        before = words[max(0, i - 2):i]
        if "the" in before:
            continue
        total += next((COUNT_WORDS[w] for w in reversed(before) if w in COUNT_WORDS), 1)
    return max(total, sum(named_colours(prompt).values()))


@dataclass
class PromptResult:
    prompt: str
    seed: int
    frames: int
    colours: dict[str, float]        # named colour → share of frames showing it
    objects_named: int
    count_reached: float             # share of frames with at least objects_named objects

    @property
    def worst_colour(self) -> float:
        return min(self.colours.values(), default=1.0)

    def shows(self, threshold: float) -> bool:
        return self.worst_colour >= threshold and self.count_reached >= threshold


def check_video(prompt: str, frames: np.ndarray, seed: int = 0) -> PromptResult:
    """uint8 (T, H, W, 3) frames of a video made from `prompt` → what of the prompt they show."""
    counts = object_counts(frames)
    named = named_colours(prompt)
    wanted = named_object_count(prompt)
    colours = {c: float(np.mean([n.get(c, 0) >= 1 for n in counts])) for c in named}
    reached = float(np.mean([sum(n.values()) >= wanted for n in counts]))
    return PromptResult(prompt, seed, len(frames), colours, wanted, reached)


def share_of_frames(text: str) -> float:
    """--threshold: a share of frames, above 0 and at most 1 (2 would pass nothing, -0.5 everything)."""
    value = float(text)
    if not 0 < value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a share of frames above 0 and at most 1 (0.9 = 90%), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ..cli import OneLineErrorParser

    p = OneLineErrorParser(prog="magi1 eval prompts", description=__doc__.splitlines()[0])
    p.add_argument("--config_file", default="demo", help="model to evaluate (preset or official config JSON)")
    p.add_argument("--prompts", nargs="+", default=None,
                   help="prompts to try (seed 0); default: the README's examples and newcomer phrasings")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="run every prompt at this seed (default: the seed listed with each prompt)")
    p.add_argument("--num_frames", type=positive_int, default=96)
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps per chunk (default: the config's)")
    p.add_argument("--threshold", type=share_of_frames, default=0.9, help="share of frames a prompt must show")
    p.add_argument("--device", default="auto")
    p.add_argument("--save_frames", default=None, help="folder for a contact sheet PNG per prompt")
    return p


def evaluate_prompts(args) -> list[PromptResult]:
    from ..pipeline import MagiPipeline
    from .quality import prepare_output_folder, save_sheet

    if args.prompts and not all(p.strip() for p in args.prompts):
        raise InputError("--prompts has an empty prompt: an empty prompt names nothing to check")
    prepare_output_folder("--save_frames", args.save_frames)  # a folder it cannot write: refused before any run
    cases = [(p, 0) for p in args.prompts] if args.prompts else list(README_PROMPTS + NEWCOMER_PROMPTS)
    if args.seed is not None:
        cases = [(prompt, args.seed) for prompt, _ in cases]
    pipe = MagiPipeline.from_pretrained(args.config_file, device=args.device)
    results = []
    for k, (prompt, seed) in enumerate(cases):
        frames = pipe(prompt, num_frames=args.num_frames, seed=seed, progress=False,
                      num_inference_steps=args.steps, output_type="np").frames[0]
        frames = np.round(frames * 255.0).astype(np.uint8)  # "np" is float in [0, 1], exact from uint8
        result = check_video(prompt, frames, seed)
        logger.info("%r (seed %d): colours %s, %d objects in %.0f%% of frames", prompt, seed, result.colours,
                    result.objects_named, 100 * result.count_reached)
        results.append(result)
        if args.save_frames:
            save_sheet(args.save_frames, f"prompt_{k:02d}.png", frames)
    return results


def prompts_table(results: list[PromptResult], threshold: float) -> str:
    lines = ["| prompt | seed | named colours: share of frames | objects named | frames with that many | shows it |",
             "|---|---|---|---|---|---|"]
    for r in results:
        colours = ", ".join(f"{c} {v:.0%}" for c, v in r.colours.items()) or "-"
        lines.append(f"| {r.prompt} | {r.seed} | {colours} | {r.objects_named} | {r.count_reached:.0%} | "
                     f"{'yes' if r.shows(threshold) else 'no'} |")
    shown = sum(r.shows(threshold) for r in results)
    lines.append(f"\n{shown} of {len(results)} prompts show what they name (threshold {threshold:.0%} of frames)")
    return "\n".join(lines)


def main_prompts(argv: list[str]) -> int:
    from .cli import parse_eval_args

    args = parse_eval_args(build_parser(), argv)
    print(prompts_table(evaluate_prompts(args), args.threshold))
    return 0
