"""Text encoders: a prompt in, (embeddings, mask) out, in the layout the DiT consumes.

The official pipeline uses the T5 v1.1 XXL encoder in float32 (reference-vae-t5-infra.md §2):
clean the prompt twice, tokenize to exactly `caption_max_length` (800) tokens with EOS appended,
run `T5EncoderModel`, return `last_hidden_state` as (1, 1, Lc, C) float32 with an int64 mask (1, Lc).
`T5TextEncoder` does that for any T5 encoder size, so the demo's tiny T5 is just another folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import torch

from magi1.models.caption_cleaning import clean_caption
from magi1.runtime import parse_dtype, pick_device

# Official layout: `t5_pretrained` is a parent folder and the model sits in this subfolder.
OFFICIAL_T5_SUBFOLDER = "t5-v1_1-xxl"
DEFAULT_CAPTION_MAX_LENGTH = 800

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",  # the official folder: loaded by transformers with weights_only=True
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")

Embedding = tuple[torch.Tensor, torch.Tensor]  # (embeddings (1, 1, Lc, C) float32, mask (1, Lc) int64)


class TextEncoder(ABC):
    """Anything that turns a prompt into caption embeddings for the DiT.

    `encode` returns CPU tensors: embeddings (1, 1, max_length, hidden_size) float32 and an int64
    mask (1, max_length) with 1 for real tokens (EOS included) and 0 for padding.
    """

    max_length: int
    hidden_size: int

    @abstractmethod
    def encode(self, prompt: str) -> Embedding: ...

    def encode_many(self, prompts: Iterable[str]) -> list[Embedding]:
        """One (embeddings, mask) pair per prompt, e.g. one prompt per chunk."""
        return [self.encode(prompt) for prompt in prompts]


def resolve_t5_folder(path: str | Path) -> Path:
    """The folder holding the T5 model: `<path>/t5-v1_1-xxl` (official) or `path` itself."""
    root = Path(path).expanduser()
    official = root / OFFICIAL_T5_SUBFOLDER
    folder = official if official.is_dir() else root
    problems = []
    if not (folder / "config.json").is_file():
        problems.append("config.json")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        problems.append("weights (model.safetensors or pytorch_model.bin, possibly sharded with an index)")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        problems.append("a tokenizer (tokenizer.json or spiece.model)")
    if problems:
        where = f"{folder}" if folder.is_dir() else f"{official} or {root} (neither exists)"
        raise FileNotFoundError(
            f"T5 text encoder not found in {where}: missing {', '.join(problems)}. Pass the official "
            f"`t5_pretrained` parent folder (holding {OFFICIAL_T5_SUBFOLDER}/) or a folder that directly "
            f"holds a transformers T5 encoder (config.json, weights, tokenizer)."
        )
    return folder


class _SentencePieceTokenizer:
    """Tokenizes with spiece.model directly, as the T5 tokenizer does for ordinary text.

    Used when the folder has no tokenizer.json (the official T5 folder ships only spiece.model);
    converting it to a fast tokenizer would need protobuf, and the ids are the same for cleaned
    prompts: pieces, truncated to max_length - 1, then EOS, then padding.
    """

    def __init__(self, model_file: Path) -> None:
        import sentencepiece

        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.eos_id = self._processor.eos_id()
        self.pad_id = max(self._processor.pad_id(), 0)  # T5: pad 0, eos 1
        if self.eos_id < 0:
            raise ValueError(f"{model_file} defines no EOS piece; T5 needs one")

    def __call__(self, text: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self._processor.encode(text)[: max_length - 1] + [self.eos_id]
        padding = max_length - len(ids)
        input_ids = torch.tensor([ids + [self.pad_id] * padding], dtype=torch.int64)
        mask = torch.tensor([[1] * len(ids) + [0] * padding], dtype=torch.int64)
        return input_ids, mask


class _TransformersTokenizer:
    """Wraps a tokenizer.json tokenizer with the official call arguments (§2.4)."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    def __call__(self, text: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self._tokenizer(
            text,
            max_length=max_length,
            padding="max_length",
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tokens.input_ids.long(), tokens.attention_mask.long()


def _load_tokenizer(folder: Path):
    if (folder / "tokenizer.json").is_file():
        return _TransformersTokenizer(folder)
    return _SentencePieceTokenizer(folder / "spiece.model")


def _folder_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of the model files: changes when the model is replaced."""
    entries = sorted(
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in folder.iterdir() if p.is_file()
    )
    return f"{folder.resolve()}|" + "|".join(entries)


class T5TextEncoder(TextEncoder):
    """T5 encoder (any size) through transformers, loaded lazily, with prompt caches.

    path: the official `t5_pretrained` parent folder or a folder holding the model itself.
    device: where T5 runs ("cpu" by default, as in the official 4.5B configs). Results are
        returned on the CPU either way.
    dtype: T5 weight dtype; float32 is the official choice, the output is always float32.
    cache_size: prompts kept in memory (each costs max_length * hidden_size * 4 bytes).
    cache_dir: optional folder of safetensors files, one per (model, settings, prompt).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_length: int = DEFAULT_CAPTION_MAX_LENGTH,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype = torch.float32,
        clean_prompts: bool = True,
        cache_size: int = 16,
        cache_dir: str | Path | None = None,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.folder = resolve_t5_folder(path)
        self.max_length = int(max_length)
        self.device = pick_device(device)
        self.dtype = parse_dtype(dtype)
        self.clean_prompts = clean_prompts
        self.cache_size = int(cache_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        config = json.loads((self.folder / "config.json").read_text())
        self.hidden_size = int(config["d_model"])
        self._tokenizer = None
        self._model = None
        self._memory: OrderedDict[str, Embedding] = OrderedDict()
        self._lock = threading.Lock()  # the server may encode from several threads
        self.memory_hits = 0
        self.disk_hits = 0
        self.misses = 0

    # -- model lifetime ------------------------------------------------------------------------

    def load(self) -> None:
        """Load tokenizer and weights now (otherwise done on the first cache miss)."""
        if self._model is not None:
            return
        from transformers import T5EncoderModel

        self._tokenizer = _load_tokenizer(self.folder)
        model = T5EncoderModel.from_pretrained(str(self.folder), dtype=self.dtype, local_files_only=True)
        # The explicit cast also covers transformers 4.x, which spells the load argument torch_dtype.
        self._model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)

    def unload(self) -> None:
        """Free the weights (like the official OFFLOAD_T5_CACHE); caches are kept."""
        self._model = None
        self._tokenizer = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    # -- encoding -------------------------------------------------------------------------------

    def clean(self, prompt: str) -> str:
        """The text T5 actually sees."""
        return clean_caption(prompt) if self.clean_prompts else str(prompt).lower().strip()

    def tokenize(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (1, Lc) int64, mask (1, Lc) int64) for the cleaned prompt."""
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self.folder)
        return self._tokenizer(self.clean(prompt), self.max_length)

    def encode(self, prompt: str) -> Embedding:
        with self._lock:
            cached = self._from_memory(prompt)
            if cached is None:
                cached = self._from_disk(prompt)
                if cached is None:
                    self.misses += 1
                    cached = self._run_t5(prompt)
                    self._to_disk(prompt, cached)
                self._to_memory(prompt, cached)
        embeddings, mask = cached
        # Copies, so a caller editing its tensors in place cannot corrupt the cache.
        return embeddings.clone(), mask.clone()

    @torch.no_grad()
    def _run_t5(self, prompt: str) -> Embedding:
        self.load()
        input_ids, mask = self.tokenize(prompt)
        hidden = self._model(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
        ).last_hidden_state
        embeddings = hidden.float()[:, None].cpu()  # (1, 1, Lc, C)
        return embeddings.contiguous(), mask.contiguous()

    # -- caches ---------------------------------------------------------------------------------

    def clear_cache(self) -> None:
        """Forget in-memory entries (files in cache_dir stay)."""
        with self._lock:
            self._memory.clear()

    def _from_memory(self, prompt: str) -> Embedding | None:
        entry = self._memory.get(prompt)
        if entry is not None:
            self._memory.move_to_end(prompt)
            self.memory_hits += 1
        return entry

    def _to_memory(self, prompt: str, entry: Embedding) -> None:
        if self.cache_size <= 0:
            return
        self._memory[prompt] = entry
        self._memory.move_to_end(prompt)
        while len(self._memory) > self.cache_size:
            self._memory.popitem(last=False)

    def disk_cache_path(self, prompt: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = "\n".join(
            [_folder_fingerprint(self.folder), str(self.dtype), str(self.max_length), str(self.clean_prompts), prompt]
        )
        return self.cache_dir / f"t5-{hashlib.sha256(key.encode('utf-8')).hexdigest()}.safetensors"

    def _from_disk(self, prompt: str) -> Embedding | None:
        path = self.disk_cache_path(prompt)
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
            entry = (tensors["embeddings"], tensors["mask"])
        except Exception:
            return None  # a damaged cache file is recomputed and overwritten
        self.disk_hits += 1
        return entry

    def _to_disk(self, prompt: str, entry: Embedding) -> None:
        path = self.disk_cache_path(prompt)
        if path is None:
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        save_file({"embeddings": entry[0], "mask": entry[1]}, str(partial))
        partial.replace(path)  # atomic: readers never see half a file
