"""One-line refusals of unknown command-line flags, with the closest flags the subcommand has.

argparse reports `--num_steps 8` under `magi1 generate` as the top-level parser's "unrecognized arguments"
after the whole top-level usage; a user who typed the diffusers or official name of a flag wants to know the
one this command calls it.
"""

from __future__ import annotations

import argparse
import difflib


def subcommand_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    """The parser of subcommand `command` (None when it has none)."""
    for action in parser._actions:  # argparse keeps its subparsers only there
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command)
    return None


def subcommand_names(parser: argparse.ArgumentParser) -> list[str]:
    """The subcommands of `parser`, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def unknown_command_message(word: str, commands: list[str]) -> str:
    """"unknown command 'genrate' (did you mean generate?); commands: ..." for `magi1 genrate`."""
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown command {word!r}{hint}; the commands are {', '.join(commands)}; see `magi1 --help`"


# The names other tools give the flags of `magi1 generate` (diffusers, the official configs, other video CLIs)
# (abbreviations such as --image or --output need none: argparse takes any unique prefix of a flag)
SYNONYMS = {"--num_inference_steps": "--steps", "--num_steps": "--steps", "--sample_steps": "--steps",
            "--video": "--prefix_video_path", "--video_path": "--prefix_video_path", "--frames": "--num_frames"}


def config_field_names() -> dict[str, str]:
    """{'fps': 'runtime_config.fps', ...}: every field a `--set` override can reach."""
    import dataclasses

    from .config import EngineConfig, ModelConfig, RuntimeConfig

    sections = {"runtime_config": RuntimeConfig, "engine_config": EngineConfig, "model_config": ModelConfig}
    return {f.name: f"{section}.{f.name}" for section, cls in sections.items() for f in dataclasses.fields(cls)}


def flag_hint(flag: str, known: list[str], set_fields: dict[str, str]) -> str | None:
    """What the user probably meant by the unknown `flag`, or None."""
    if SYNONYMS.get(flag) in known:
        return f"use {SYNONYMS[flag]}"
    field = set_fields.get(flag.lstrip("-").replace("-", "_"))
    if field:
        return f"it is a config field: --set {field}=VALUE"
    close = difflib.get_close_matches(flag, known, n=2, cutoff=0.7)
    return f"did you mean {' or '.join(close)}?" if close else None


def unknown_flags_message(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """'unrecognized argument --num_steps 8 (--num_steps: use --steps)' for the words argparse left over."""
    known = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    set_fields = config_field_names() if "--set" in known else {}
    hints = []
    for word in unknown:
        flag = word.split("=", 1)[0]
        hint = flag_hint(flag, known, set_fields) if flag.startswith("--") else None
        if hint:
            hints.append(f"{flag}: {hint}")
    plural = "s" if len(unknown) != 1 else ""
    message = f"unrecognized argument{plural}: {' '.join(unknown)}"
    if hints:
        message += " (" + "; ".join(hints) + ")"
    return message + f"; see `{parser.prog} --help`"
