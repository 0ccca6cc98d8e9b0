"""`magi1 ...`: a thin command line over the library.

Flags are parsed, validated and turned into a config before any weights are read, so a wrong path or an
impossible size fails in a second, not after loading tens of gigabytes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .arg_types import non_negative_float, positive_float, positive_int

logger = logging.getLogger("magi1")

DEFAULT_PROMPT = "a red ball and a blue square fall and bounce on the floor"


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------- generate
def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="make a video (t2v, i2v or v2v); the embedded demo model when no config is given",
        description="Generate a video chunk by chunk, appending each chunk to the output file as soon as it is clean.",
    )
    # The official flags, spelled as the official entry point spells them.
    p.add_argument("--config_file", default="demo",
                   help="official config JSON, or a preset name (demo, 4.5B_base, 4.5B_distill, 24B_base, ...)")
    p.add_argument("--mode", choices=["t2v", "i2v", "v2v"], default=None,
                   help="t2v, i2v (needs --image_path) or v2v (needs --prefix_video_path); inferred when omitted")
    p.add_argument("--prompt", default=None, help=f"text prompt (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--image_path", default=None, help="conditioning image for i2v")
    p.add_argument("--prefix_video_path", default=None,
                   help="video to continue for v2v: its first 32 frames at the model's fps and size, as the "
                        "official code takes them (--prefix_from end: its last 32); the output holds only the "
                        "new frames")
    p.add_argument("--prefix_from", choices=["start", "end"], default="start",
                   help="which 32 frames of --prefix_video_path to continue (default start, as the official code)")
    p.add_argument("--output_path", default="output.mp4", help="the mp4 to write")
    # Overrides.
    p.add_argument("--chunk_prompt", action="append", default=[], metavar="CHUNK:PROMPT",
                   help="switch the caption from generated chunk CHUNK on (repeatable), e.g. --chunk_prompt '2:a blue ball falls'")
    p.add_argument("--num_frames", type=int, default=None,
                   help="frames to make (default: the config's); the video is whole chunks of 24 frames, so "
                        "another count is rounded, with a warning")
    p.add_argument("--height", type=int, default=None, help="multiple of 16")
    p.add_argument("--width", type=int, default=None, help="multiple of 16")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (multiple of the window size)")
    p.add_argument("--seed", type=int, default=None,
                   help="noise seed (default: the config's); the same seed gives the same video on any device")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None,
                   help="float32, bfloat16 or float16 (default: the DiT in its checkpoint's params_dtype, bfloat16 "
                        "for the demo and the official weights, CPU included; the VAE bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--special_tokens", default=None,
                   help="official special_tokens.npz (enables the HQ and duration tokens as the official run scripts do)")
    p.add_argument("--keep_aspect", action="store_true",
                   help="resize image/video inputs by centre crop instead of the official stretch")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set runtime_config.window_size=2")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the chunks already saved next to the output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    from .memory.cli import add_offload_options
    from .lora.pipeline_api import add_generate_lora_options
    from .prompting.cli import add_generate_options

    add_offload_options(p)
    add_generate_options(p)
    add_generate_lora_options(p)
    p.set_defaults(func=run_generate)


def infer_mode(args) -> str:
    if args.mode:
        return args.mode
    if args.image_path and args.prefix_video_path:
        raise UsageError("give either --image_path (i2v) or --prefix_video_path (v2v), not both")
    if args.image_path:
        return "i2v"
    if args.prefix_video_path:
        return "v2v"
    return "t2v"


def parse_chunk_prompts(items: list[str]) -> dict[int, str]:
    schedule: dict[int, str] = {}
    for item in items:
        head, sep, text = item.partition(":")
        if not sep or not head.strip().isdigit() or not text.strip():
            raise UsageError(f"--chunk_prompt {item!r} must look like CHUNK:PROMPT, e.g. '2:a blue ball falls'")
        if int(head) in schedule:
            raise UsageError(f"--chunk_prompt gives chunk {int(head)} twice ({schedule[int(head)]!r} and "
                             f"{text.strip()!r}); give each chunk one prompt")
        schedule[int(head)] = text.strip()
    return schedule


def run_prompts(args) -> tuple[str, dict[int, str]]:
    """(--prompt, the per-chunk captions with chunk 0's filled in) of a generate run, as the run uses them."""
    prompt = args.prompt or DEFAULT_PROMPT
    chunk_prompts = parse_chunk_prompts(args.chunk_prompt)
    if args.prompt is not None and 0 in chunk_prompts:  # one of the two would be dropped without a word
        raise UsageError(f"--prompt and --chunk_prompt '0:{chunk_prompts[0]}' both give the first chunk's caption; "
                         f"give one of them")
    if chunk_prompts:
        chunk_prompts = {0: prompt, **chunk_prompts}
    return prompt, chunk_prompts


def validate_generate_args(args):
    """Everything that can be checked without loading a model (or importing torch); returns (mode, config).

    The decoded image / video is kept on `args.checked_image` / `args.checked_video`, so the render does not
    read the files again.
    """
    from .config import ConfigError, load_config
    from .errors import InputError
    from .preflight import check_config_name, check_run, check_special_tokens_file, check_weights_present
    from .runtime import canonical_dtype_name, check_device_name

    mode = infer_mode(args)
    if mode == "i2v" and not args.image_path:
        raise UsageError("--mode i2v needs --image_path")
    if mode == "v2v" and not args.prefix_video_path:
        raise UsageError("--mode v2v needs --prefix_video_path")
    if mode == "t2v" and (args.image_path or args.prefix_video_path):
        raise UsageError("--mode t2v takes no --image_path or --prefix_video_path")
    if mode == "i2v" and args.prefix_video_path:
        raise UsageError("--mode i2v takes --image_path, not --prefix_video_path")
    if mode == "v2v" and args.image_path:
        raise UsageError("--mode v2v takes --prefix_video_path, not --image_path")
    for flag, path in (("--image_path", args.image_path), ("--prefix_video_path", args.prefix_video_path),
                       ("--special_tokens", args.special_tokens)):
        if path and not Path(path).is_file():
            raise UsageError(f"{flag}: no such file: {path}")
    if args.prefix_video_path and Path(args.output_path).exists() and \
            os.path.samefile(args.prefix_video_path, args.output_path):
        # The first chunk replaces the output file: the clip being continued would be gone.
        raise UsageError(f"--output_path {args.output_path} is the --prefix_video_path being continued, which the "
                         f"new video would overwrite; give another output path")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.threads is not None and args.threads > _usable_cpus():
        # More threads than CPUs only slows torch down, and a huge count exhausts memory creating them.
        raise UsageError(f"--threads {args.threads} is more than the {_usable_cpus()} CPUs this process may use")
    if args.blocks_on_device is not None and args.blocks_on_device < 1:
        raise UsageError(f"--blocks_on_device must be at least 1, got {args.blocks_on_device}")
    timeout = getattr(args, "enhance_timeout", None)
    if timeout is not None and not 0 < timeout < float("inf"):
        raise UsageError(f"--enhance_timeout must be a positive number of seconds, got {timeout}")
    try:
        if args.dtype is not None:
            canonical_dtype_name(args.dtype)
        check_device_name(args.device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        check_config_name(args.config_file)
        config = load_config(args.config_file)
        if args.set:
            config = config.with_overrides(args.set)
    except ConfigError as err:
        raise UsageError(one_line(str(err))) from None
    if args.special_tokens:
        check_special_tokens_file(args.special_tokens)
    check_weights_present(config)
    prompt, chunk_prompts = run_prompts(args)
    try:
        checked = check_run(config, mode=mode, prompt=args.prompt or DEFAULT_PROMPT, chunk_prompts=chunk_prompts,
                            image=args.image_path, video=args.prefix_video_path, num_frames=args.num_frames,
                            height=args.height, width=args.width, num_inference_steps=args.steps, seed=args.seed,
                            keep_aspect=args.keep_aspect, output_path=args.output_path, resume=args.resume,
                            prefix_from=args.prefix_from)
    except InputError as err:
        raise UsageError(_flag_names(str(err))) from None
    args.checked_image, args.checked_video = checked.image, checked.video
    if args.resume:
        _check_resume_matches(args, mode, checked.config, prompt, chunk_prompts)
    _warn_of_a_large_resume_state(checked)
    from .resume import resume_state_path

    if not args.resume and resume_state_path(args.output_path).is_file():
        logger.warning("magi1: %s holds an interrupted run (saved state %s); this run starts over and replaces "
                       "it; stop now and add --resume to continue that one instead", args.output_path,
                       resume_state_path(args.output_path).name)
    from .lora.pipeline_api import check_lora_options

    check_lora_options(args, config)
    from .prompting.cli import check_generate_enhance_args

    check_generate_enhance_args(args)
    return mode, checked.config


def _check_resume_matches(args, mode, config, prompt, chunk_prompts) -> None:
    """--resume under other settings than the partial video's: name each changed flag, before any weights load.

    The partial mp4 records its run's settings (run_tags); the saved state's fingerprint still guards what the
    tags do not hold (--set overrides, inputs' pixels), after the model loads.
    """
    from .prompting.cli import wants_enhancement
    from .resume import check_resume_state_readable, resume_state_path
    from .run_tags import changed_settings, read_run_settings, run_settings

    check_resume_state_readable(resume_state_path(args.output_path))  # a cut-off state: now, not after loading
    try:
        recorded = read_run_settings(args.output_path) if Path(args.output_path).is_file() else None
    except Exception:  # noqa: BLE001 - an unreadable partial file is rewritten from the state anyway
        recorded = None
    if not recorded:
        return
    wanted = run_settings(config, config_name=args.config_file, mode=mode, prompt=prompt,
                          chunk_prompts=chunk_prompts, loras=getattr(args, "lora", None))
    # Enhanced captions are only known once the endpoint answers: the fingerprint compares them later.
    skip = ("prompt", "chunk_prompts") if wants_enhancement(args) else ()
    changes = changed_settings(recorded, wanted, skip=skip)
    if changes:
        raise UsageError(f"--resume: {args.output_path} was started with {'; '.join(changes)}; resume with its "
                         f"settings, or run without --resume to start over")


def one_line(message: str) -> str:
    """ConfigError's "invalid config:\n  - a\n  - b" as one line: "invalid config: a; b"."""
    head, *items = message.split("\n  - ")
    return f"{head} {'; '.join(items)}" if items else message


# Above this the resume state, rewritten after every chunk, costs seconds per chunk and as much disk.
LARGE_RESUME_STATE_BYTES = 512 * 2**20


def _warn_of_a_large_resume_state(checked) -> None:
    """Say so when --num_frames asks for a video whose saved state (the whole latent video) is huge."""
    from .preflight import latent_video_bytes

    r = checked.config.runtime_config
    state = latent_video_bytes(checked.config, checked.total_chunks * r.chunk_width)
    if state > LARGE_RESUME_STATE_BYTES:
        hours = r.num_frames / r.fps / 3600
        logger.warning("magi1: --num_frames %d is %.1f hours of video in %d chunks; the resume state kept beside "
                       "the output is %.1f GiB and is rewritten after every chunk", r.num_frames, hours,
                       checked.num_generated, state / 2**30)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what a container or taskset leaves us, not the host's count
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _flag_names(message: str) -> str:
    """A preflight sentence in the CLI's words: `steps` is --steps, and so on."""
    for name in ("num_frames", "height", "width", "steps", "seed"):
        if message.startswith(f"{name} "):
            return f"--{message}"
    return message


def run_generate(args) -> int:
    mode, config = validate_generate_args(args)
    from .parallel import is_output_rank, quiet_other_ranks, setup_from_env, teardown
    from .runtime import set_threads

    set_threads(args.threads)
    # None unless launched by torchrun with several processes; a multi-GPU config run alone warns and runs.
    ctx = setup_from_env(config, single_process_fallback=True)
    quiet_other_ranks(ctx)
    try:
        return _generate(args, mode, config, ctx, is_output_rank(ctx))
    finally:
        teardown(ctx)


def _show_prompt_warnings_plainly() -> None:
    """A PromptWarning (the prompt uses no word the model knows) as one line on stderr, not a code location."""
    import warnings

    from .models.prompt_vocabulary import PromptWarning

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PromptWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show


# Into a log file or a pipe a bar's every redraw stays in the text, so it is redrawn at most this often there.
LOG_PROGRESS_INTERVAL_S = 30.0


def _progress_setting(quiet: bool):
    """The denoising bar: off with --quiet, tqdm's live bar on a terminal, a sparse one into a file or pipe."""
    if quiet:
        return False
    if sys.stderr.isatty():
        return True
    return {"mininterval": LOG_PROGRESS_INTERVAL_S}


def _generate(args, mode, config, ctx, output_rank: bool) -> int:
    from .pipeline import MagiPipeline
    from .prompting.cli import enhanced_run_prompts, wants_enhancement

    prompt, chunk_prompts = run_prompts(args)
    _show_prompt_warnings_plainly()
    metadata = None
    if wants_enhancement(args):  # before any weights load: a wrong endpoint fails in seconds
        enhanced = enhanced_run_prompts(args, mode, config, prompt, chunk_prompts, ctx)
        prompt, chunk_prompts, metadata = enhanced.prompt, enhanced.chunk_prompts, enhanced.video_metadata()
        if output_rank:
            print(enhanced.describe(), flush=True)
    from .run_tags import run_settings, with_run_settings

    metadata = with_run_settings(metadata, run_settings(config, config_name=args.config_file, mode=mode,
                                                        prompt=prompt, chunk_prompts=chunk_prompts,
                                                        loras=getattr(args, "lora", None)))
    pipe = MagiPipeline.from_pretrained(config, device=ctx.device if ctx else args.device, dtype=args.dtype,
                                        special_tokens_path=args.special_tokens, parallel=ctx,
                                        offload=args.offload, blocks_on_device=args.blocks_on_device,
                                        weights=args.weights)
    from .lora.pipeline_api import apply_lora_options

    apply_lora_options(pipe, args)
    report = pipe.generate_to_file(
        args.output_path,
        prompt=None if chunk_prompts else prompt,
        chunk_prompts=chunk_prompts or None,
        image=args.checked_image if mode == "i2v" else None,
        video=args.checked_video if mode == "v2v" else None,
        keep_aspect=args.keep_aspect,
        resume=args.resume,
        progress=_progress_setting(args.quiet),
        metadata=metadata,
    )
    if output_rank:
        print(report.summary())
    return 0


# ----------------------------------------------------------------------------- other subcommands
def add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="web page and HTTP API with a job queue")
    p.add_argument("--config_file", default="demo")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (127.0.0.1 unless you mean to expose it: any other needs an API key)")
    p.add_argument("--api_key", "--api-key", action="append", default=None, metavar="KEY",
                   help="an API key clients must send (Authorization: Bearer KEY); repeat for several, or set "
                        "MAGI1_API_KEYS=KEY1,KEY2; each key sees only its own jobs")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch, as in magi1 generate (default: torch's own count)")
    p.add_argument("--special_tokens", default=None)
    p.add_argument("--max_queue", type=int, default=8)
    p.add_argument("--results_dir", default=None,
                   help="where jobs and videos are kept, and interrupted jobs resume from (default: a temp folder); "
                        "one server per folder")
    p.add_argument("--max_job_cost", type=positive_int, default=None,
                   help="per-job budget in pixel-steps, frames x height x width x steps (default: 8x the config's "
                        "default job)")
    p.add_argument("--max_jobs_per_client", type=positive_int, default=None,
                   help="unfinished jobs one client (one API key) may have at a time (default 8)")
    p.add_argument("--result_ttl_hours", type=positive_float, default=None,
                   help="finished jobs are deleted this long after they finish (default 24)")
    p.add_argument("--max_results_gb", type=positive_float, default=None,
                   help="oldest finished jobs are deleted while all results take more than this (default 10)")
    p.add_argument("--min_free_disk_gb", type=non_negative_float, default=None,
                   help="new jobs are refused (507) while the disk has less free space than this (default 1)")
    p.add_argument("--header_timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="a request's headers must arrive within this (default 10)")
    p.add_argument("--body_timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="a request's body must arrive within this (default 120)")
    p.add_argument("--keep_alive_timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="idle keep-alive connections are closed after this (default 5)")
    p.add_argument("--pipeline", default=None, metavar="MODULE:CALLABLE",
                   help="serve your own pipeline: CALLABLE(config) returns an object with MagiPipeline's stream()")
    from .prompting.cli import add_endpoint_options

    add_endpoint_options(p)  # for jobs that send "enhance": true or a "story"
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    missing = []
    for name in ("fastapi", "uvicorn", "multipart"):
        try:
            __import__(name)
        except ImportError:
            missing.append("python-multipart" if name == "multipart" else name)
    if missing:
        raise UsageError(f"magi1 serve needs the server extra ({', '.join(missing)} not installed): "
                         f"pip install 'magi1[serve]'")
    return _delegate("magi1.server.serve_command", "main_serve", args)


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the VAE / DiT / shortcut distillation (see `magi1 train -h`)",
                              add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: _delegate_argv("magi1.train.cli", "main_train", args.rest))


def add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluation (`magi1 eval physics|quality ...`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: _delegate_argv("magi1.eval.cli", "main_eval", args.rest))


def add_make_tiny_parser(subparsers) -> None:
    p = subparsers.add_parser("make-tiny", help="write a tiny random-weight model in the official layout (smoke tests)")
    p.add_argument("folder", help="where to write config.json, dit/, vae/, t5/")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_make_tiny)


def run_make_tiny(args) -> int:
    from .errors import InputError
    from .testing import make_tiny_model_folder

    if Path(args.folder).exists() and not Path(args.folder).is_dir():
        raise InputError(f"{args.folder} is a file; make-tiny writes a folder (config.json, dit/, vae/, t5/)")
    try:
        path = make_tiny_model_folder(args.folder, seed=args.seed)
    except OSError as err:  # a folder that cannot be created or written (read-only, /proc, a full disk)
        raise InputError(f"cannot write the tiny model into {args.folder}: {err.strerror or err}") from None
    print(f"wrote {path} (random weights: its videos are noise; for checking that every code path runs)")
    return 0


def _delegate(module: str, func: str, args) -> int:
    import importlib

    return int(getattr(importlib.import_module(module), func)(args) or 0)


def _delegate_argv(module: str, func: str, argv: list[str]) -> int:
    import importlib

    return int(getattr(importlib.import_module(module), func)(argv) or 0)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's errors (a bad number, a missing argument) as one line, as magi1's own refusals are, not after
    a usage block of twenty lines; --help still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="magi1", description="MAGI-1 autoregressive video generation")
    parser.add_argument("--version", action="version", version=f"magi1 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    add_generate_parser(subparsers)
    add_serve_parser(subparsers)
    add_train_parser(subparsers)
    add_eval_parser(subparsers)
    add_make_tiny_parser(subparsers)
    from .download import add_download_parser
    from .io.contact_sheet import add_contact_sheet_parser
    from .memory.cli import add_plan_parser
    from .prompting.cli import add_enhance_parser

    add_enhance_parser(subparsers)
    add_download_parser(subparsers)
    add_plan_parser(subparsers)
    add_contact_sheet_parser(subparsers)
    return parser


# Subcommands with their own parsers: every word after the name is theirs, `-h` included.
DELEGATED = {"train": ("magi1.train.cli", "main_train"), "eval": ("magi1.eval.cli", "main_eval")}


def _silence_library_progress_bars() -> None:
    """--quiet: the bars transformers ("Loading weights", "Writing model shards") and huggingface_hub draw too."""
    try:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bars()
        disable_progress_bar()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:  # a bare `magi1`: the commands and what each does, not "the following arguments are required"
        parser.print_help(sys.stderr)
        return 2
    words = [i for i, word in enumerate(argv) if not word.startswith("-")]
    if words:
        from .cli_suggest import subcommand_names, unknown_command_message

        commands = subcommand_names(parser)
        if argv[words[0]] not in commands:  # one line with the closest command, not argparse's usage block
            parser.exit(2, f"magi1: error: {unknown_command_message(argv[words[0]], commands)}\n")
    if words and argv[words[0]] in DELEGATED:  # argparse would take their -h as its own unknown flag
        head, name, rest = argv[:words[0]], argv[words[0]], argv[words[0] + 1:]
        args = parser.parse_args([*head, name])
        args.rest = rest
    else:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # one line naming the closest flags, not the top-level usage
            from .cli_suggest import subcommand_parser, unknown_flags_message

            sub = subcommand_parser(parser, args.command) or parser
            sub.exit(2, f"{sub.prog}: error: {unknown_flags_message(sub, unknown)}\n")
    # magi1's own INFO lines (what runs where, time to the first chunk); other libraries only warn, unless -v:
    # torch's INFO at exit ("FakeTensor cache stats" after an early Ctrl-C), httpx's per-request lines, ...
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("magi1").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if getattr(args, "quiet", False):
        _silence_library_progress_bars()
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # a log line during a progress bar prints above it, not glued to its end
            return args.func(args)
    except UsageError as err:
        print(f"magi1 {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted_message(args, argv), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `magi1 plan ... | head`: the reader has what it wanted
        # Python would report the pipe again when it flushes stdout at exit; point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as err:  # a clear one-line message for the errors we raise on purpose
        from .errors import is_user_facing

        if is_user_facing(err):
            print(f"magi1 {args.command}: error: {err}", file=sys.stderr)
            return 2
        raise


def _interrupted_message(args, argv: list[str]) -> str:
    """What Ctrl-C leaves: for a generate run with a saved state, the finished chunks and the command that resumes."""
    import shlex

    if args.command != "generate":
        return "interrupted"
    from .resume import resume_state_path

    state = resume_state_path(args.output_path)
    if not state.is_file():
        return "interrupted before the first chunk finished; nothing to resume"
    from .resume import ResumeState

    finished = ResumeState.load(state).finished_chunks
    program = sys.argv[0] if Path(sys.argv[0]).name == "magi1" else "magi1"
    command = shlex.join([program, *argv, *([] if "--resume" in argv else ["--resume"])])
    return (f"interrupted after {finished} finished chunk{'s' if finished != 1 else ''} "
            f"(kept in {args.output_path}, a playable video of them); to continue, run:\n  {command}")


if __name__ == "__main__":
    sys.exit(main())
