"""Errors meant for the person at the keyboard: the CLI prints them as one line instead of a traceback."""

from __future__ import annotations


class MagiError(Exception):
    """Base class for mistakes in inputs, files or settings that a user can fix."""


class InputError(MagiError, ValueError):
    """An input (prompt, image, video, size, frame count) that cannot be used."""


class MissingWeightsError(MagiError, FileNotFoundError):
    """A weights folder or file that a config names is not there."""


def is_user_facing(err: BaseException) -> bool:
    """True for errors raised on purpose by magi1 about the user's inputs, files or settings."""
    if isinstance(err, MagiError):
        return True
    # Errors that magi1's own modules raise deliberately (ConfigError, CheckpointError, VAE config errors ...)
    # subclass ValueError / FileNotFoundError and live in magi1.*; library bugs do not look like that.
    module = type(err).__module__ or ""
    return module.startswith("magi1") and isinstance(err, (ValueError, FileNotFoundError, RuntimeError))
