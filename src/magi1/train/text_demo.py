"""The demo's text encoder: a tiny T5 v1.1-style encoder and a tokenizer trained here, offline.

Inference treats it exactly like the official T5-XXL: `T5TextEncoder` loads the folder
`<t5_pretrained>/t5-v1_1-xxl` (config.json, model.safetensors, tokenizer.json), cleans the prompt, pads to
`caption_max_length` and returns last_hidden_state. Only the sizes differ.

- Tokenizer: a SentencePiece-style Unigram model (the `tokenizers` library, no network), trained on the
  training captions plus a word list, with every printable ASCII character in its alphabet, so unseen
  words split into pieces instead of vanishing; pad 0, EOS 1 appended, unk 2, as T5.
- Model: `transformers.T5EncoderModel` with a small config (gated-GELU, relative position buckets).
  It starts random and trains jointly with the DiT through the caption path (cross-attention), so the
  DiT's loss decides what the embeddings encode.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..models.text_encoder import OFFICIAL_T5_SUBFOLDER, T5TextEncoder

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
DEMO_T5_DIMS = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4}

# Words a user may reasonably type at the demo besides the training captions' own vocabulary.
EXTRA_WORDS = (
    "a an the and or with without of on in into onto from to toward towards at by over under above below "
    "left right up down top bottom middle center side corner edge wall floor ground ceiling table ramp slope "
    "ball balls sphere square squares cube box block blocks circle disk triangle object objects shape shapes "
    "red green blue yellow orange purple pink white black gray grey brown cyan magenta dark light bright "
    "small big large tiny huge heavy light fast slow slowly quickly gently hard soft "
    "bounce bounces bouncing fall falls falling drop drops dropping roll rolls rolling slide slides sliding "
    "move moves moving collide collides collision hit hits push pushes swing swings swinging spin spins "
    "rest rests stop stops float floats rise rises sink sinks fly flies throw thrown toss tossed "
    "one two three four five several many another other each both together apart against off "
    "gravity friction pendulum spring water light shadow background scene camera video frame"
).split()


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512):
    """A Unigram tokenizer (tokenizers.Tokenizer) with T5's special ids and EOS post-processing."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        unk_token="<unk>",
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        shrinking_factor=0.75,
    )
    texts = [line.strip() for line in corpus if line and line.strip()]
    texts += [" ".join(EXTRA_WORDS)] * 3
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    for index, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != index:
            raise RuntimeError(f"tokenizer put {token} at id {tokenizer.token_to_id(token)}, T5 needs {index}")
    return tokenizer


def save_tokenizer(tokenizer, folder: str | Path, max_length: int) -> None:
    """tokenizer.json plus the small JSON files `AutoTokenizer` reads to build a T5 tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = dict(special, tokenizer_class="T5TokenizerFast", model_max_length=max_length, extra_ids=0,
                  additional_special_tokens=[])
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def build_tiny_t5(vocab_size: int, *, seed: int = 0, **dims) -> nn.Module:
    """A randomly initialised T5EncoderModel with the demo dimensions (overridable)."""
    from transformers import T5Config, T5EncoderModel

    sizes = dict(DEMO_T5_DIMS, **dims)
    config = T5Config(vocab_size=vocab_size, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False,
                      pad_token_id=0, eos_token_id=1, **sizes)
    torch.manual_seed(seed)
    return T5EncoderModel(config)


def save_text_encoder(model: nn.Module, tokenizer_folder: str | Path, t5_root: str | Path,
                      weights: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write `<t5_root>/t5-v1_1-xxl/` (config, safetensors weights, tokenizer files); returns that folder.

    `weights` (e.g. EMA weights) replace the module's own when given; `dtype` is the storage dtype.
    """
    folder = Path(t5_root) / OFFICIAL_T5_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    if weights is not None:
        # EMA copies hold parameters once; T5 ties encoder.embed_tokens to shared, so that key may be absent.
        result = model.load_state_dict(weights, strict=False)
        missing = [k for k in result.missing_keys if k != "encoder.embed_tokens.weight"]
        if missing or result.unexpected_keys:
            raise KeyError(f"T5 weights do not match: missing {missing}, unexpected {result.unexpected_keys}")
    original = next(model.parameters()).dtype
    model.to(dtype).save_pretrained(str(folder), safe_serialization=True)
    model.to(original)
    source = Path(tokenizer_folder)
    if source.resolve() != folder.resolve():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).write_bytes((source / name).read_bytes())
    return folder


def load_t5_module(path: str | Path) -> nn.Module:
    """The T5EncoderModel of a text-encoder folder (official parent layout or the folder itself), float32."""
    from transformers import T5EncoderModel

    from ..models.text_encoder import resolve_t5_folder

    folder = resolve_t5_folder(path)
    return T5EncoderModel.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)


class TrainableCaptionEncoder:
    """Captions → (embeddings (B, Lc, C) float32, mask (B, Lc)) through a T5 that can train.

    Tokenization (cleaning included) is the inference encoder's own (`T5TextEncoder.tokenize` on the saved
    folder), so training and generation see identical token ids. Token ids are cached per caption.
    """

    def __init__(self, module: nn.Module, folder: str | Path, max_length: int, *, trainable: bool = True) -> None:
        self.module = module
        self.trainable = trainable
        self.max_length = max_length
        self.tokenizer = T5TextEncoder(folder, max_length=max_length, cache_size=0)
        self.channels = int(module.config.d_model)
        self._ids: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        module.requires_grad_(trainable)

    def train(self, mode: bool) -> None:
        self.module.train(mode and self.trainable)

    def tokens(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, masks = [], []
        for caption in captions:
            if caption not in self._ids:
                self._ids[caption] = self.tokenizer.tokenize(caption)
            i, m = self._ids[caption]
            ids.append(i[0])
            masks.append(m[0])
        return torch.stack(ids), torch.stack(masks)

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokens(captions)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self.module(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden.float(), mask


class TableCaptionEncoder:
    """A stand-in caption encoder for tests: one learned vector per word, no tokenizer files needed."""

    def __init__(self, channels: int, max_length: int, vocabulary: Iterable[str], *, trainable: bool = True) -> None:
        self.words = {w: i + 1 for i, w in enumerate(sorted(set(vocabulary)))}
        self.module = nn.Embedding(len(self.words) + 1, channels)
        self.channels = channels
        self.max_length = max_length
        self.trainable = trainable
        self.module.requires_grad_(trainable)

    def train(self, mode: bool) -> None:
        self.module.train(mode)

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        for row, caption in enumerate(captions):
            words = [self.words.get(w, 0) for w in caption.lower().split()][: self.max_length]
            ids[row, : len(words)] = torch.tensor(words, dtype=torch.long)
            mask[row, : len(words)] = 1
        return self.module(ids).float(), mask
