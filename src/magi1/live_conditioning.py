"""Live prompt changes as DiT caption rows: the sampler's `caption_rows` hook for MagiPipeline.

The schedule itself (which chunk gets which prompt, transitions) is `sampling.live_prompts.LivePrompts`;
this turns each chunk's caption into the conditional rows the DiT reads, built by the same
`build_conditioning` as the run's planned captions, so a hard switch equals `chunk_prompts` exactly.
"""

from __future__ import annotations

from typing import Callable

from .errors import InputError
from .sampling.live_prompts import LivePrompts, Mixture


def pipeline_caption_rows(pipeline, live: LivePrompts, prompts, chunk_prompts, prompt_embeds,
                          num_generated: int, clean_chunks: int):
    """The hook for one MagiPipeline run (one video) whose captions may change while it goes."""
    from .pipeline import chunk_prompt_schedule
    from .sampling.conditioning import DEFAULT_POSITIVE, build_conditioning

    if prompt_embeds is not None:
        raise InputError("live prompt changes need text prompts, not prompt_embeds")
    if len(prompts) != 1:
        raise InputError("live prompt changes steer one video; give one prompt")
    null_caption = pipeline.dit.y_embedder.null_caption_embedding.detach().float().cpu()
    special = pipeline.special_tokens

    def conditioning(caption, mask):
        return build_conditioning(caption, mask, null_caption, generated_chunks=num_generated,
                                  prefix_chunks=clean_chunks, special_tokens=special,
                                  positive_tags=DEFAULT_POSITIVE if special is not None else ())

    planned = chunk_prompt_schedule(prompts[0], chunk_prompts, num_generated)
    return live_caption_rows(live, planned, first_generated=clean_chunks, encode=pipeline.encode_prompts,
                             conditioning=conditioning)

def live_caption_rows(live: LivePrompts, planned: list[str], *, first_generated: int,
                      encode: Callable, conditioning: Callable):
    """The sampler's `caption_rows` hook for a run whose prompts may change live.

    planned: the caption the run had for each generated chunk. encode(prompts) -> (embeds, masks) as
    MagiPipeline.encode_prompts gives them; conditioning(caption (1, Lc, C), mask (1, Lc)) -> the run's
    Conditioning for that one caption, from which the chunk's rows are taken, so special tokens and the
    DURATION tag come out exactly as for a planned caption.
    """
    cache: dict[str, tuple] = {}

    def embedding(prompt: str):
        if prompt not in cache:
            embeds, masks = encode([prompt])
            cache[prompt] = (embeds[0].reshape(1, *embeds[0].shape[-2:]), masks[0].reshape(1, -1))
        return cache[prompt]

    def rows(chunk: int):
        generated = chunk - first_generated
        if not 0 <= generated < len(planned):
            return None
        caption = live.caption_for(generated, planned[generated])
        if caption.is_single and caption.mixture[0][0] == planned[generated]:
            return None  # what the run had planned: its own rows are already in place
        caption_embedding, mask = mixture_embedding(caption.mixture, embedding)
        cond = conditioning(caption_embedding, mask)
        return cond.y[0, chunk][None], cond.masks[0, chunk][None]  # the conditional row of one video

    return rows


def mixture_embedding(mixture: Mixture, embedding: Callable):
    """(caption (1, Lc, C), mask (1, Lc)) of a mixture; one prompt gives its own embedding unchanged.

    A blend weighs each prompt's embedding with its padding zeroed (T5 leaves values there that the mask
    hides), and attends to the union of their tokens.
    """
    import torch

    if len(mixture) == 1:
        return embedding(mixture[0][0])
    total, union = None, None
    for prompt, weight in mixture:
        caption, mask = embedding(prompt)
        part = weight * caption * (mask[..., None] > 0).to(caption.dtype)
        total = part if total is None else total + part
        union = mask.clone() if union is None else torch.maximum(union, mask)
    return total, union
