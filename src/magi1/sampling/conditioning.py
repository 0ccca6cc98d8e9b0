"""Caption rows the sampler hands to the DiT: one conditional and one null row per chunk.

Output, as official: y (2, n_chunks, Lc, Ct) float32, row 0 conditional, row 1 null; masks
(2, n_chunks, Lc) float32 (only truthiness is read). n_chunks = prefix chunks + generated chunks.

- Conditional rows of generated chunks: that chunk's caption (the same caption repeated, officially; a
  different one per chunk for scene changes), with special tokens prepended (each prepend shifts the row
  right and drops its last position, so rows stay Lc long; the mask gets a 1 in front the same way).
- Conditional rows of whole prefix chunks: the model's null_caption_embedding with an all-zero mask
  (never read: prefix chunks never enter a denoising window).
- Null rows: null_caption_embedding (optionally with the negative tags in front), mask = first 50
  positions, so the "empty prompt" is 50 learned vectors; there is no T5 pass for it.
- Negative prompt (a magi1 extension, off unless given): the null rows of the generated chunks become
  the negative prompt's T5 rows and mask, so the passes that read null rows (the text-free pass with
  context and the context-free pass) see it instead of the empty prompt; prefix chunks keep null rows.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from .special_tokens import DEFAULT_POSITIVE, NEGATIVE_ORDER, SpecialTokens, ordered_positive

NULL_TOKEN_LENGTH = 50


class Conditioning(NamedTuple):
    y: torch.Tensor  # (2, n_chunks, Lc, Ct) float32
    masks: torch.Tensor  # (2, n_chunks, Lc) float32


def prepend_token(rows: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """rows (..., Lc, Ct): put token (Ct,) at position 0 of every row and keep the first Lc positions."""
    front = token.to(rows.dtype).expand(*rows.shape[:-2], 1, rows.shape[-1])
    return torch.cat([front, rows], dim=-2)[..., : rows.shape[-2], :]


def prepend_mask_one(masks: torch.Tensor) -> torch.Tensor:
    """masks (..., Lc): a 1 at position 0, first Lc positions kept."""
    one = torch.ones(*masks.shape[:-1], 1, dtype=torch.float32, device=masks.device)
    return torch.cat([one, masks.to(torch.float32)], dim=-1)[..., : masks.shape[-1]]


def _per_chunk(captions: torch.Tensor, masks: torch.Tensor, generated_chunks: int):
    """Caption (n, Lc, Ct) and mask (n, Lc) rows, one per generated chunk (a single caption is repeated)."""
    lc, ct = captions.shape[-2:]
    captions = captions.reshape(-1, lc, ct).to(torch.float32)
    masks = masks.reshape(-1, lc).to(torch.float32)
    if captions.shape[0] != masks.shape[0]:
        raise ValueError(f"{captions.shape[0]} caption rows but {masks.shape[0]} mask rows")
    if captions.shape[0] == 1:
        return captions.expand(generated_chunks, lc, ct), masks.expand(generated_chunks, lc)
    if captions.shape[0] != generated_chunks:
        raise ValueError(f"give one caption or one per generated chunk ({generated_chunks}), got {captions.shape[0]}")
    return captions, masks


def build_conditioning(
    captions: torch.Tensor,
    caption_masks: torch.Tensor,
    null_caption_embedding: torch.Tensor,
    *,
    generated_chunks: int,
    prefix_chunks: int = 0,
    special_tokens: SpecialTokens | None = None,
    positive_tags: Sequence[str] = DEFAULT_POSITIVE,
    negative_tokens: bool = False,
    null_token_length: int = NULL_TOKEN_LENGTH,
    negative_captions: torch.Tensor | None = None,
    negative_masks: torch.Tensor | None = None,
) -> Conditioning:
    """y and masks for `prefix_chunks` whole prefix chunks followed by `generated_chunks` new ones.

    captions: T5 output, (Lc, Ct), (1, Lc, Ct) or the official (1, 1, Lc, Ct) for one prompt, or
    (generated_chunks, Lc, Ct) for a prompt per chunk (e.g. `torch.cat` of scenes repeated to their
    lengths); caption_masks likewise without the last axis.
    special_tokens: needed when positive_tags or negative_tokens ask for any (the official run scripts
    use HQ and DURATION; pass positive_tags=() for none).
    negative_captions / negative_masks: a negative prompt's T5 output, shaped like one caption; it
    replaces the null rows of the generated chunks (the negative tags, if asked for, go in front of it).
    """
    if generated_chunks <= 0:
        raise ValueError(f"generated_chunks must be positive, got {generated_chunks}")
    null = null_caption_embedding.to(torch.float32)
    lc, ct = null.shape
    if captions.shape[-2:] != (lc, ct):
        raise ValueError(f"captions end in {tuple(captions.shape[-2:])}, the null caption is {(lc, ct)}")
    tags = ordered_positive(tuple(positive_tags))
    if (tags or negative_tokens) and special_tokens is None:
        raise ValueError("special tokens were asked for but no SpecialTokens were given")
    total = prefix_chunks + generated_chunks

    null_rows = null.expand(total, lc, ct)
    if negative_tokens:
        for tag in NEGATIVE_ORDER:
            null_rows = prepend_token(null_rows, special_tokens[tag])
    # The mask stays the first 50 positions even with negative tags in front (official behaviour).
    null_masks = torch.zeros(total, lc, dtype=torch.float32, device=null.device)
    null_masks[:, :null_token_length] = 1
    if negative_captions is not None:
        if negative_masks is None:
            raise ValueError("negative_captions needs negative_masks")
        rows, row_masks = _per_chunk(negative_captions.to(null.device), negative_masks.to(null.device), 1)
        if negative_tokens:
            for tag in NEGATIVE_ORDER:
                rows = prepend_token(rows, special_tokens[tag].to(null.device))
                row_masks = prepend_mask_one(row_masks)
        null_rows = torch.cat([null_rows[:prefix_chunks], rows.expand(generated_chunks, lc, ct)])
        null_masks = torch.cat([null_masks[:prefix_chunks], row_masks.expand(generated_chunks, lc)])

    rows, masks = _per_chunk(captions.to(null.device), caption_masks.to(null.device), generated_chunks)
    if not bool(masks.any()):
        # Official: an all-empty caption makes both rows null.
        y = torch.stack([null_rows, null_rows]).contiguous()
        return Conditioning(y, torch.stack([null_masks, null_masks]))
    for tag in tags:
        if tag == "DURATION":
            durations = torch.stack([special_tokens.duration(generated_chunks - i) for i in range(generated_chunks)])
            front = durations.to(device=null.device)[:, None, :]
            rows = torch.cat([front, rows], dim=1)[:, :lc]
        else:
            rows = prepend_token(rows, special_tokens[tag].to(null.device))
        masks = prepend_mask_one(masks)

    cond_rows = torch.cat([null.expand(prefix_chunks, lc, ct), rows], dim=0)
    cond_masks = torch.cat([torch.zeros(prefix_chunks, lc, device=null.device), masks], dim=0)
    y = torch.stack([cond_rows, null_rows]).contiguous()
    return Conditioning(y, torch.stack([cond_masks, null_masks]).contiguous())
