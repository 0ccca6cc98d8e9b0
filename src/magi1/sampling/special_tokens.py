"""The learned "special tokens" MAGI-1 prepends to caption rows (official `special_tokens.npz`).

They are vectors in T5-output space, not token ids. The file stores float64 values; the official
loader rounds them to float16 before use, and that rounding changes them, so we round the same way
(straight from float64, as numpy's astype does) before widening to float32.

Tags: TRANS, HQ, STATIC_FIRST_FRAMES, DYNAMIC_FIRST_FRAMES, BORDERNESS, DURATION_1..8, THREE_D_MODEL,
TWO_D_ANIME (rows of `other_tokens`), plus CAPTION and LOGO (their own arrays; used only in the negative
prompt). DURATION_m says how many chunks are left, this one included (capped at 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..runtime import env_flag

OTHER_TOKEN_ROWS = {
    "TRANS": 0,
    "HQ": 1,
    "STATIC_FIRST_FRAMES": 2,
    "DYNAMIC_FIRST_FRAMES": 3,
    "BORDERNESS": 4,
    **{f"DURATION_{m}": 6 + m for m in range(1, 9)},  # rows 7..14
    "THREE_D_MODEL": 15,
    "TWO_D_ANIME": 16,
}
MAX_DURATION = 8

# Positive tags in the order the official switches add them; each is prepended in turn, so the last
# one ends up first in the row. "DURATION" stands for the per-chunk DURATION_m.
POSITIVE_ORDER = ("STATIC_FIRST_FRAMES", "DYNAMIC_FIRST_FRAMES", "BORDERNESS", "HQ", "THREE_D_MODEL",
                  "TWO_D_ANIME", "DURATION")
DEFAULT_POSITIVE = ("HQ", "DURATION")  # what the shipped run scripts and the ComfyUI node switch on
NEGATIVE_ORDER = ("CAPTION", "LOGO", "TRANS", "BORDERNESS")  # row reads BORDERNESS, TRANS, LOGO, CAPTION, ...
_ENV_SWITCHES = {
    "PAD_STATIC": "STATIC_FIRST_FRAMES",
    "PAD_DYNAMIC": "DYNAMIC_FIRST_FRAMES",
    "PAD_BORDERNESS": "BORDERNESS",
    "PAD_HQ": "HQ",
    "PAD_THREE_D_MODEL": "THREE_D_MODEL",
    "PAD_TWO_D_ANIME": "TWO_D_ANIME",
    "PAD_DURATION": "DURATION",
}


def _fp16_rounded(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values).astype(np.float16).astype(np.float32))


@dataclass(frozen=True)
class SpecialTokens:
    vectors: Mapping[str, torch.Tensor]  # tag -> (Ct,) float32, already rounded through float16

    @classmethod
    def load(cls, path: str | Path) -> "SpecialTokens":
        with np.load(Path(path)) as data:
            missing = {"caption_token", "logo_token", "other_tokens"} - set(data.files)
            if missing:
                raise ValueError(f"{path} lacks the array(s) {sorted(missing)}")
            other = _fp16_rounded(data["other_tokens"])
            vectors = {"CAPTION": _fp16_rounded(data["caption_token"]).reshape(-1),
                       "LOGO": _fp16_rounded(data["logo_token"]).reshape(-1)}
        if other.shape[0] <= max(OTHER_TOKEN_ROWS.values()):
            need = max(OTHER_TOKEN_ROWS.values()) + 1
            raise ValueError(f"{path}: other_tokens has {other.shape[0]} rows, need {need}")
        vectors.update({name: other[row] for name, row in OTHER_TOKEN_ROWS.items()})
        return cls(vectors)

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.vectors[name]
        except KeyError:
            raise KeyError(f"unknown special token {name!r}; known: {sorted(self.vectors)}") from None

    @property
    def channels(self) -> int:
        return int(self["HQ"].shape[0])

    def duration(self, chunks_left: int) -> torch.Tensor:
        """DURATION_m for a chunk with `chunks_left` chunks to go, itself included (m capped at 8)."""
        return self[f"DURATION_{min(max(chunks_left, 1), MAX_DURATION)}"]


def ordered_positive(tags: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The chosen positive tags in official application order (unknown tags are an error)."""
    unknown = set(tags) - set(POSITIVE_ORDER)
    if unknown:
        raise ValueError(f"unknown positive special token(s) {sorted(unknown)}; choose from {POSITIVE_ORDER}")
    return tuple(tag for tag in POSITIVE_ORDER if tag in tags)


def positive_tags_from_env() -> tuple[str, ...]:
    """The official PAD_* environment switches, for parity with runs configured that way."""
    return tuple(tag for env, tag in _ENV_SWITCHES.items() if env_flag(env))


def negative_tokens_from_env() -> bool:
    """The official NEG_PROMPT switch."""
    return env_flag("NEG_PROMPT")
