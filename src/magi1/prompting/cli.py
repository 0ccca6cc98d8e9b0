"""Command-line side of prompt enhancement: the `--enhance` options of `magi1 generate`, and `magi1 enhance`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .settings import DEFAULT_TIMEOUT_S, KEY_ENV, MODEL_ENV, URL_ENV, VISION_CHOICES, EnhanceError, EnhanceSettings

logger = logging.getLogger("magi1")


def add_endpoint_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "prompt enhancement",
        f"any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, llama.cpp, Ollama, a hosted API); the key "
        f"is read from {KEY_ENV}. Without an endpoint, deterministic templates are used.")
    group.add_argument("--enhance_url", default=None,
                       help=f"API base, e.g. http://localhost:8000/v1 (default: ${URL_ENV})")
    group.add_argument("--enhance_model", default=None, help=f"model name the endpoint serves (default: ${MODEL_ENV})")
    group.add_argument("--enhance_timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request")
    group.add_argument("--enhance_vision", choices=VISION_CHOICES, default="auto",
                       help="send the i2v image / v2v frames to the model: auto (text path if it refuses them), "
                            "on, off (text-only models)")


def add_story_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("story mode", "the model writes one caption per shot and picks the chunk each starts at")
    group.add_argument("--story", default=None,
                       help="a short story: the model splits it over the run's chunks (per-chunk prompts)")
    group.add_argument("--beat", action="append", default=[], metavar="TEXT",
                       help="one beat of a story (repeatable, in order); the model picks each beat's first chunk")


def add_generate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--enhance", action="store_true",
                   help="rewrite --prompt (or --story / --beat) into MAGI-1 captions before the run")
    add_endpoint_options(p)
    add_story_options(p)


def settings_from_args(args) -> EnhanceSettings:
    return EnhanceSettings.from_env(args.enhance_url, args.enhance_model, timeout_s=args.enhance_timeout,
                                    vision=args.enhance_vision)


def wants_enhancement(args) -> bool:
    return bool(getattr(args, "enhance", False) or getattr(args, "story", None) or getattr(args, "beat", None))


def check_generate_enhance_args(args) -> None:
    """The enhancement flags' own checks, before anything loads (EnhanceError: one line, exit code 2)."""
    story_mode = bool(args.story or args.beat)
    if args.story and args.beat:
        raise EnhanceError("give --story or --beat, not both")
    if story_mode and args.prompt:
        raise EnhanceError("--story / --beat replace --prompt; give one or the other")
    if story_mode and args.chunk_prompt:
        raise EnhanceError("--story / --beat make the chunk prompts; drop --chunk_prompt")
    if not wants_enhancement(args) and (args.enhance_url or args.enhance_model):
        raise EnhanceError("--enhance_url / --enhance_model take effect with --enhance")
    if wants_enhancement(args):
        settings_from_args(args)


def enhanced_run_prompts(args, mode: str, config, prompt: str, chunk_prompts: dict[int, str] | None, ctx):
    """EnhancedPrompts for a `magi1 generate` run, made on one rank and shared with the others under torchrun.

    `--resume` takes the captions recorded in the interrupted run's partial file, so the resumed run continues
    with the same captions (a model asked again would answer differently).
    """
    from ..parallel import is_output_rank, share_from_source

    payload = None
    if is_output_rank(ctx):
        try:
            payload = ("ok", _recorded_for_resume(args) or _enhance_run(args, mode, config, prompt, chunk_prompts))
        except EnhanceError as err:
            payload = ("error", str(err))
    status, value = share_from_source(ctx, payload)
    if status == "error":
        raise EnhanceError(value)
    return value


def _recorded_for_resume(args):
    from ..io.video import partial_path_for
    from .prompts import read_enhanced_prompts

    if not args.resume:
        return None
    # the interrupted run's own file (written in place), or the hidden partial file of an older magi1
    for written in (Path(args.output_path), partial_path_for(args.output_path)):
        if written.is_file():
            recorded = read_enhanced_prompts(written)
            if recorded is not None:
                logger.info("resuming with the enhanced prompts recorded in %s", written)
                return recorded
    return None


def _enhance_run(args, mode: str, config, prompt: str, chunk_prompts: dict[int, str] | None):
    from .enhancer import PromptEnhancer
    from .run_shape import generated_chunk_count, seconds_per_chunk

    enhancer = PromptEnhancer(settings_from_args(args))
    inputs = dict(mode=mode, image=args.image_path if mode == "i2v" else None,
                  video=args.prefix_video_path if mode == "v2v" else None, fps=config.runtime_config.fps)
    logger.info("enhancing the prompt with %s", enhancer.settings.describe())
    if args.story or args.beat:
        num_chunks = generated_chunk_count(config, mode, inputs["video"])
        return enhancer.enhance_story(args.story, beats=args.beat or None, num_chunks=num_chunks,
                                      seconds_per_chunk=seconds_per_chunk(config), **inputs)
    return enhancer.enhance_schedule(prompt, chunk_prompts, **inputs)


# ----------------------------------------------------------------------------- magi1 enhance
def add_enhance_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "enhance", help="turn a short idea (or a story) into MAGI-1 captions and print them",
        description="Print the caption `magi1 generate --enhance` would use. Story mode prints one CHUNK:PROMPT "
                    "line per shot, ready for --chunk_prompt.")
    p.add_argument("prompt", nargs="?", default=None, help="the idea to enhance")
    p.add_argument("--mode", choices=["t2v", "i2v", "v2v"], default=None, help="inferred from the inputs when omitted")
    p.add_argument("--image_path", default=None, help="the i2v image (shown to vision models)")
    p.add_argument("--prefix_video_path", default=None, help="the v2v video (its last frames are shown)")
    p.add_argument("--num_chunks", type=int, default=None,
                   help="story mode: chunks of the run (default: from --config_file and --num_frames)")
    p.add_argument("--config_file", default=None,
                   help="the run's config, for the chunk count in story mode (default: demo)")
    p.add_argument("--num_frames", type=int, default=None, help="the run's frame count, for story mode")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_endpoint_options(p)
    add_story_options(p)
    p.set_defaults(func=run_enhance)


def run_enhance(args) -> int:
    from .enhancer import PromptEnhancer

    mode = args.mode or ("i2v" if args.image_path else "v2v" if args.prefix_video_path else "t2v")
    story_mode = bool(args.story or args.beat)
    if story_mode and args.prompt:
        raise EnhanceError("--story / --beat replace the prompt; give one or the other")
    if not story_mode and not args.prompt:
        raise EnhanceError('give a prompt (magi1 enhance "a cat jumps") or --story / --beat')
    if args.story and args.beat:
        raise EnhanceError("give --story or --beat, not both")
    if args.num_chunks is not None and (not story_mode or args.num_chunks < 1):
        raise EnhanceError("--num_chunks is for story mode and must be at least 1")
    # EnhanceError is user-facing: the CLI prints it as one line and exits with 2.
    enhancer = PromptEnhancer(settings_from_args(args))
    inputs = dict(mode=mode, image=args.image_path, video=args.prefix_video_path)
    if story_mode:
        num_chunks, seconds, fps = _story_shape(args, mode)
        result = enhancer.enhance_story(args.story, beats=args.beat or None, num_chunks=num_chunks,
                                        seconds_per_chunk=seconds, fps=fps, **inputs)
    else:
        result = enhancer.enhance(args.prompt, **inputs)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    elif result.chunk_prompts or story_mode:  # story mode always prints CHUNK:PROMPT lines, one shot included
        for chunk, caption in sorted((result.chunk_prompts or {0: result.prompt}).items()):
            print(f"{chunk}:{caption}")
    else:
        print(result.prompt)
    return 0


def _story_shape(args, mode: str) -> tuple[int, float, int]:
    """(chunks, seconds per chunk, fps) of the run the story is for."""
    if args.num_chunks is not None and args.config_file is None:
        return args.num_chunks, 1.0, 24  # MAGI-1's chunk: 24 frames at 24 fps (no config read, no torch import)
    from ..config import ConfigError, load_config
    from .run_shape import generated_chunk_count, seconds_per_chunk

    try:
        config = load_config(args.config_file or "demo")
        if args.num_frames is not None:
            config = config.replace(num_frames=args.num_frames)
    except ConfigError as err:
        raise EnhanceError(str(err)) from None
    if args.num_chunks is not None:
        return args.num_chunks, seconds_per_chunk(config), config.runtime_config.fps
    try:
        num_chunks = generated_chunk_count(config, mode, args.prefix_video_path)
    except (OSError, ValueError) as err:
        raise EnhanceError(f"--prefix_video_path: {err}") from None
    return num_chunks, seconds_per_chunk(config), config.runtime_config.fps
