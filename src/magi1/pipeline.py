"""MagiPipeline: prompt / image / video in, clean chunks out, as a generator; and to a streamed mp4 file.

Data flows one way: prompt → text encoder → DiT chunk loop ↔ KV cache → VAE decode → frames → file.
Everything that consumes video (the CLI, the server, `__call__`) is written on top of `stream()`.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .config import MagiConfig
from .diffusers_api import DiffusersConventions
from .errors import InputError, MissingWeightsError
# check_run and check_weights_present are re-exported: the server and tests import them from here
from .preflight import check_output_path, check_run, check_weights_present  # noqa: F401
from .preflight import t5_present as _t5_present, vae_present as _vae_present
from .resume import ResumeState, resume_state_path, run_fingerprint  # noqa: F401 (re-exported)
from .lora.pipeline_api import LoraPipelineMixin
from .runtime import parse_dtype, pick_device
from .sampling.prompt_schedule import chunk_prompt_schedule  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("latent", "pt", "np", "pil")


@dataclass
class ChunkOutput:
    """One generated chunk, emitted the moment it is clean."""

    index: int                      # 0-based among the generated chunks
    num_chunks: int                 # how many this run generates
    latents: torch.Tensor           # (1, 16, t, h, w) float32, scaled VAE latents, t <= chunk_width
    frames: object                  # "np": (4t, H, W, 3) uint8 | "pt": (4t, 3, H, W) float | "pil": list | None


@dataclass
class BatchChunkOutput:
    """One generated chunk of every video of a batch, emitted the moment it is clean."""

    index: int
    num_chunks: int
    latents: torch.Tensor                 # (B, 16, t, h, w) float32
    frames: list[np.ndarray] | None       # B arrays (4t, H, W, 3) uint8; None for output_type="latent"


@dataclass
class MagiPipelineOutput:
    """What `pipe(...)` returns: a batch of videos, as diffusers pipelines do (`frames[0]` is the first video)."""

    frames: object                  # np (B,T,H,W,3) float32 in [0,1] | torch (B,T,3,H,W) | B lists of PIL | latents
    latents: torch.Tensor           # (B, 16, T_lat, h, w) float32, every generated chunk

    # As diffusers' BaseOutput: output[0] / output["frames"] and to_tuple() (code written for it indexes outputs)
    def to_tuple(self) -> tuple:
        return (self.frames, self.latents)

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in ("frames", "latents"):
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]


@dataclass
class GenerationReport:
    path: str
    num_frames: int
    num_chunks: int
    seconds_total: float
    seconds_to_first_chunk: float | None
    resumed_chunks: int = 0

    def summary(self) -> str:
        first = "n/a" if self.seconds_to_first_chunk is None else f"{self.seconds_to_first_chunk:.1f}s"
        resumed = f", {self.resumed_chunks} resumed" if self.resumed_chunks else ""
        chunks = f"{self.num_chunks} chunk{'' if self.num_chunks == 1 else 's'}"
        return (f"wrote {self.path}: {self.num_frames} frames in {chunks}{resumed}; "
                f"first chunk after {first}, total {self.seconds_total:.1f}s")


@dataclass
class RunSettings:
    """The per-call values that may differ from the config (size, frames, steps, seed)."""

    height: int
    width: int
    num_frames: int
    num_steps: int
    seed: int
    extra: dict = field(default_factory=dict)


class GenerationCancelled(Exception):
    """Raised out of `stream()` when `should_stop()` turned true between two denoising steps."""


class MagiPipeline(LoraPipelineMixin, DiffusersConventions):
    def __init__(self, config: MagiConfig, dit, vae, text_encoder, *, device: torch.device, special_tokens=None,
                 parallel=None):
        self.config = config
        self.dit = dit
        self.vae = vae
        self.text_encoder = text_encoder
        self.device = device
        self.special_tokens = special_tokens
        self.parallel = parallel  # a magi1.parallel.ParallelContext under torchrun, else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path | MagiConfig = "demo", *,
                        variant: str | None = None, config: str | Path | MagiConfig | None = None,
                        torch_dtype: str | torch.dtype | None = None, device_map: str | None = None,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        special_tokens_path: str | None = None, t5_device: str | None = None, parallel=None,
                        local_files_only: bool = False, cache_dir: str | Path | None = None,
                        revision: str | None = None, token: str | bool | None = None,
                        offload: str = "none", blocks_on_device: int = 2, weights: str = "auto") -> "MagiPipeline":
        """Build a pipeline, diffusers style.

        pretrained_model_name_or_path: a hub repository id with `variant` ("sand-ai/MAGI-1",
            variant="4.5B_distill": fetched into the Hugging Face cache unless already there; offline with
            HF_HUB_OFFLINE=1 or local_files_only=True), a folder from `magi1 download --dir` (with variant)
            or from `save_pretrained`, an official config JSON, a preset name, or a MagiConfig.
        config: the architecture for a downloaded variant, when not the variant's own preset.
        torch_dtype (alias dtype): weights and activations dtype. Default: the DiT keeps its checkpoint's
            params_dtype (bfloat16 for the demo and the official weights, on a CPU too, as the official loader
            does) and the VAE runs in bfloat16 on a GPU, float32 on a CPU; torch.float32 is float32 throughout.
        device_map: None (everything on `device`, default: the GPU when there is one) or one device name.
        special_tokens_path: the official special_tokens.npz; found by itself beside hub downloads.
        offload: "none", "model", "blocks" (with blocks_on_device layers on the device) or "auto" (the
            fastest the device's free memory holds, see docs/memory.md; refuses up front when none does).
        weights: "fp8" stores a bf16 checkpoint's layers 1..L-2 in fp8 (half the bytes, bf16 compute).
        """
        from .checkpoint.loader import load_dit
        from .hub import resolve_pretrained
        from .models.text_encoder import T5TextEncoder
        from .models.vae import ViTVAE
        from .sampling.special_tokens import SpecialTokens

        from .call_inputs import check_load_options, check_local_source

        check_load_options(pretrained_model_name_or_path, offload=offload, weights=weights,
                           blocks_on_device=blocks_on_device)  # before any weights are read
        check_local_source(pretrained_model_name_or_path, variant)
        if device_map is not None:
            if device is not None or not isinstance(device_map, str) or device_map in ("balanced", "sequential"):
                raise InputError("device_map takes None or one device name (e.g. 'cuda'); to spread a model over "
                                 "memory kinds use the offload options, over GPUs run under torchrun")
            device = device_map
        if torch_dtype is not None:
            if dtype is not None:
                raise InputError("give torch_dtype or dtype, not both")
            dtype = torch_dtype
        config, beside = resolve_pretrained(pretrained_model_name_or_path, variant=variant, config=config,
                                            local_files_only=local_files_only, cache_dir=cache_dir,
                                            revision=revision, token=token)
        if special_tokens_path is None and beside is not None:
            logger.info("using the special tokens %s", beside)
            special_tokens_path = str(beside)
        elif special_tokens_path is not None:  # the user's own file: refused in one sentence before any weights
            from .preflight import check_special_tokens_file

            check_special_tokens_file(special_tokens_path, "special_tokens_path")
        # The DiT must be there; T5 and the VAE only when a prompt is encoded or frames decoded (a run given
        # prompt_embeds and returning latents needs neither), so their absence is reported at first use.
        check_weights_present(config, text_encoder=False, vae=False)
        device = pick_device(device)
        dtype = parse_dtype(dtype) if dtype is not None else None
        r = config.runtime_config
        from .parallel import is_text_rank, parallelize_dit

        from .memory.placement import plan_for_run

        plan = None
        if offload != "none":
            plan = plan_for_run(config, device=device, dtype=dtype, offload=offload, blocks_on_device=blocks_on_device,
                                weights=weights)
            offload, blocks_on_device = plan.mode, plan.blocks_on_device or blocks_on_device
            logger.info("%s", plan.describe())
        # An offloaded DiT loads into host memory (only the layers running come to the device); so does
        # one to be stored in fp8, so the bf16 weights never sit on the device.
        quantize = weights == "fp8" and not config.engine_config.fp8_quant
        on_host = offload != "none" or quantize
        dit = load_dit(config, device=torch.device("cpu") if on_host else device, dtype=dtype,
                       pp_rank=parallel.pp_rank if parallel else 0)
        if quantize:
            from .ops.fp8_storage import quantize_dit_weights

            quantize_dit_weights(dit)
            if offload == "none":
                dit.to(device)
        parallelize_dit(dit, parallel)
        vae = None
        if _vae_present(config):
            vae = ViTVAE.from_pretrained(config.resolve_path(r.vae_pretrained), device=device, dtype=dtype)
        text_encoder = None
        if _t5_present(config) and is_text_rank(parallel):  # T5 runs on one rank; its output is broadcast
            # T5 runs where the config says (the 4.5B configs keep it on the CPU); "cuda" falls back when absent.
            text_device = pick_device(t5_device or ("auto" if r.t5_device != "cpu" else "cpu"))
            text_encoder = T5TextEncoder(config.resolve_path(r.t5_pretrained), device=text_device,
                                         max_length=config.model_config.caption_max_length)
        special = SpecialTokens.load(special_tokens_path) if special_tokens_path else None
        pipe = cls(config, dit, vae, text_encoder, device=device, special_tokens=special, parallel=parallel)
        pipe.variant, pipe.special_tokens_path = variant, special_tokens_path
        pipe.memory_plan = plan
        if offload != "none":
            pipe.enable_offload(offload, blocks_on_device=blocks_on_device)
        return pipe

    @property
    def dtype(self) -> torch.dtype:
        """The DiT's compute dtype (its residual stream), as diffusers' `pipe.dtype`."""
        return self.dit.compute_dtype

    @property
    def dit_device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def fps(self) -> int:
        return self.config.runtime_config.fps

    # ------------------------------------------------------------------ inputs
    def settings_for(self, *, height=None, width=None, num_frames=None, num_inference_steps=None,
                     seed=None, guidance_scale=None, prev_chunk_guidance_scale=None) -> tuple[MagiConfig, RunSettings]:
        """A per-call config with the overrides applied and validated (sizes, step divisibility, guidance)."""
        from .preflight import call_config
        from .sampling.guidance import guidance_overrides

        # sizes, frames, steps and seed: checked with the caller's names (InputError), not as config fields
        config = call_config(self.config, num_frames=num_frames, height=height, width=width,
                             num_inference_steps=num_inference_steps, seed=seed)
        overrides = {}
        if guidance_scale is not None or prev_chunk_guidance_scale is not None:
            if self.config.runtime_config.cfg_number == 1:
                raise InputError("this model is guidance-distilled (cfg_number 1): its guidance is trained in, so "
                                 "guidance_scale and prev_chunk_guidance_scale do not apply")
            for name, value in (("guidance_scale", guidance_scale),
                                ("prev_chunk_guidance_scale", prev_chunk_guidance_scale)):
                if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                          or not math.isfinite(value) or value < 0):
                    raise InputError(f"{name} must be a number >= 0, got {value!r}")
            as_float = [None if v is None else float(v) for v in (guidance_scale, prev_chunk_guidance_scale)]
            overrides.update(guidance_overrides(self.config.runtime_config, *as_float))  # np.float32 too
        config = config.replace(**overrides) if overrides else config
        r = config.runtime_config
        return config, RunSettings(r.video_size_h, r.video_size_w, r.num_frames, r.num_steps, r.seed)

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """T5 embeddings (1, 1, Lc, C) float32 and masks (1, Lc) for each prompt, cached per prompt."""
        from .parallel import broadcast_text, is_text_rank

        embeds = masks = None
        if is_text_rank(self.parallel):
            if self.text_encoder is None:
                check_weights_present(self.config, vae=False)  # raises, naming the missing folder
            embeds, masks = [], []
            for text in prompts:
                warn_if_unknown_prompt(text, self.text_encoder.folder)
                emb, mask = self.text_encoder.encode(text)
                if int(mask.sum()) >= mask.shape[-1]:  # T5 cuts a long prompt off without a word (as official)
                    logger.warning("magi1: the prompt %r fills all %d caption tokens of this model; words past "
                                   "them are cut off", text[:60] + ("..." if len(text) > 60 else ""), mask.shape[-1])
                embeds.append(emb.float().cpu())
                masks.append(mask.cpu())
        if self.parallel is None:
            return embeds, masks
        return broadcast_text(embeds, masks, self.parallel)

    def encode_prefix(self, config: MagiConfig, *, image=None, video=None, keep_aspect: bool = False,
                      prefix_from: str = "start"):
        """The scaled VAE latent of the conditioning image (1,16,1,h,w) or prefix video (1,16,Tp,h,w), or None.

        A video file or array gives its first PREFIX_FRAMES frames (its last with prefix_from="end").
        """
        from .io.image import load_image
        from .models.vae_helpers import encode_image, encode_video
        from .preflight import load_checked_video

        r = config.runtime_config
        if (image is not None or video is not None) and self.vae is None:
            check_weights_present(self.config, text_encoder=False)  # raises, naming the missing VAE folder
        if image is not None and video is not None:
            raise InputError("give an image (i2v) or a video (v2v), not both")
        if image is not None:
            pixels = load_image(image, r.video_size_h, r.video_size_w, keep_aspect=keep_aspect)
            latent = encode_image(self.vae, pixels, fps=r.fps)
        elif video is not None:
            # a file and an array alike: the same frames of it, resized the same way
            frames = load_checked_video(video, r.video_size_h, r.video_size_w, r.fps, keep_aspect,
                                        prefix_from=prefix_from)
            latent = encode_video(self.vae, frames, fps=r.fps)
        else:
            return None
        # The official prefix latent is bf16 (its VAE runs in bf16, the scale multiply too): a float32 VAE's
        # latent is rounded to bf16 and stays bf16, so the DiT sees the prefix in the official dtype.
        return latent.to(torch.bfloat16).cpu()

    # ------------------------------------------------------------------ the generator
    def stream(self, prompt: str | None = None, *, chunk_prompts: Mapping[int, str] | Sequence[str] | None = None,
               prompt_embeds: torch.Tensor | None = None, prompt_attention_mask: torch.Tensor | None = None,
               negative_prompt: str | Sequence[str] | None = None, image=None, video=None,
               prefix_latents: torch.Tensor | None = None, num_frames: int | None = None, height: int | None = None,
               width: int | None = None, num_inference_steps: int | None = None, seed: int | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None,
               latents: torch.Tensor | None = None, guidance_scale: float | None = None,
               prev_chunk_guidance_scale: float | None = None, output_type: str = "np", keep_aspect: bool = False,
               prefix_from: str = "start", progress: bool = False,
               callback: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
               resume_state: "ResumeState | None" = None,
               on_state: Callable[["ResumeState"], None] | None = None, live_prompts=None) -> Iterator[ChunkOutput]:
        """Yield each generated chunk of one video as soon as it is clean, its frames as output_type says.

        output_type: chunk.frames is "np" uint8 (4t, H, W, 3) (what a video encoder takes) | "pt" float32
        (4t, 3, H, W) in [0, 1] | "pil" a list of PIL images | "latent" None (chunk.latents only).
        `latents` is the full initial noise (1, 16, chunks*chunk_width, h, w); without it the noise is drawn
        from `generator` (one, or a list of one; on the generator's device) or on the CPU from a generator
        seeded with `seed` (default: the config's seed; give seed or generator, not both). Tensors may be
        numpy arrays.
        image: a path, a PIL image, a numpy array or a torch tensor ((3, H, W) float in [0, 1], or uint8).
        prefix_latents: an already-encoded scaled VAE latent instead of `image` / `video` (the official
        `prefix_video` tensor: 1 frame for i2v, Tp frames for v2v).
        video: a file or frames at the model's fps (a uint8 (T, H, W, 3) array, a list of PIL images, a torch
        tensor (T, 3, H, W); float frames in [0, 1]); v2v continues its first PREFIX_FRAMES (32) frames, or with
        prefix_from="end" its last 32.
        negative_prompt (one, or a list of one), guidance_scale, prev_chunk_guidance_scale: as in `__call__`.
        on_state(state) receives a ResumeState each time a chunk finishes; passing one back as `resume_state`
        (with the same inputs) first re-yields the chunks it had finished, then continues exactly where it was.
        live_prompts: a LivePrompts (sampling/live_prompts.py) whose changes caption every chunk not yet started.
        """
        from .diffusers_api import chunk_frames_as, expand_prompts

        if isinstance(prompt, (list, tuple)):
            raise InputError("stream() makes one video; give several prompts to pipe(...) (a batch)")
        _, negatives = expand_prompts(prompt, negative_prompt, 1)  # one, or a list of one
        generators = None if generator is None else list(generator) if isinstance(generator, (list, tuple)) \
            else [generator]
        for chunk in self.stream_batch(
                [prompt], chunk_prompts=chunk_prompts, prompt_embeds=prompt_embeds,
                prompt_attention_mask=prompt_attention_mask, negative_prompt=negatives, image=image, video=video,
                prefix_latents=prefix_latents, num_frames=num_frames, height=height, width=width,
                num_inference_steps=num_inference_steps, seed=seed, generator=generators, latents=latents,
                guidance_scale=guidance_scale, prev_chunk_guidance_scale=prev_chunk_guidance_scale,
                output_type=output_type, keep_aspect=keep_aspect, prefix_from=prefix_from, progress=progress,
                callback=callback, should_stop=should_stop, resume_state=resume_state, on_state=on_state,
                live_prompts=live_prompts):
            frames = None if chunk.frames is None else chunk_frames_as(chunk.frames[0], output_type)
            yield ChunkOutput(index=chunk.index, num_chunks=chunk.num_chunks, latents=chunk.latents, frames=frames)

    def stream_batch(self, prompts: Sequence[str | None], *, chunk_prompts=None, prompt_embeds=None,
                     prompt_attention_mask=None, negative_prompt: Sequence[str] | None = None, image=None, video=None,
                     prefix_latents=None, num_frames=None, height=None, width=None, num_inference_steps=None,
                     seed=None, generator: Sequence[torch.Generator] | torch.Generator | None = None,
                     latents: torch.Tensor | None = None, guidance_scale: float | None = None,
                     prev_chunk_guidance_scale: float | None = None, output_type: str = "np",
                     keep_aspect: bool = False, prefix_from: str = "start", progress: bool = False, callback=None,
                     should_stop=None, resume_state=None, on_state=None, step_callback=None,
                     interrupt: Callable[[], bool] | None = None, live_prompts=None) -> Iterator[BatchChunkOutput]:
        """Yield each generated chunk of B = len(prompts) videos, denoised together, as soon as it is clean.

        Every DiT call carries all B videos (own caption rows, noise and KV cache each); chunk.latents is
        (B, 16, t, h, w) and chunk.frames a list of B uint8 (4t, H, W, 3) arrays whatever output_type other than
        "latent" says (stream() and pipe() turn them into that output type). Video b equals its single
        run with the same noise. Noise: latents (B, ...) as given; generator a list (one per video) or one
        generator drawing all B in turn; else video b is seeded `seed + b` (seed: the config's by default).
        negative_prompt: one per prompt (or None). step_callback(step, t, latents) may return new latents.
        interrupt(): asked before every step; when true the run ends quietly after the chunks finished so far
        (should_stop() instead raises GenerationCancelled at once).
        """
        from .parallel import is_output_rank
        from .sampling.chunk_plan import plan_forward_steps
        from .sampling.sampler import batch_noise, chunk_counts, emitted_frames, sample_chunks
        from .preview import window_clean_estimate
        from .sampling.schedule import time_grid
        from .live_conditioning import pipeline_caption_rows
        from .call_inputs import check_seed_or_generator, image_input, tensor_input, video_input
        from .preflight import warn_of_frame_rounding

        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        check_seed_or_generator(seed, generator)
        latents, prompt_embeds, prompt_attention_mask, prefix_latents = (
            tensor_input(value, name) for value, name in ((latents, "latents"), (prompt_embeds, "prompt_embeds"),
                                                          (prompt_attention_mask, "prompt_attention_mask"),
                                                          (prefix_latents, "prefix_latents")))
        image, video = image_input(image), video_input(video, prefix_from)  # tensors, lists of PIL images, floats
        if output_type != "latent" and self.vae is None:
            check_weights_present(self.config, text_encoder=False)  # raises, naming the missing VAE folder
        batch = len(prompts)
        if batch > 1 and self.parallel is not None:
            raise InputError("batches of several videos run in one process; under torchrun give one prompt")
        if negative_prompt is not None and len(negative_prompt) != batch:
            raise InputError(f"give one negative prompt, or one per prompt ({batch}), got {len(negative_prompt)}")
        config, run = self.settings_for(height=height, width=width, num_frames=num_frames,
                                        num_inference_steps=num_inference_steps, seed=seed,
                                        guidance_scale=guidance_scale,
                                        prev_chunk_guidance_scale=prev_chunk_guidance_scale)
        if negative_prompt is not None and config.runtime_config.cfg_number == 1:
            raise InputError("this model is guidance-distilled (cfg_number 1): it has no unconditional pass for a "
                             "negative prompt")
        r, m = config.runtime_config, config.model_config
        # Everything refusable is refused before a prompt, an image or a video is encoded; inputs come back
        # decoded and resized, so files are read once.
        checked = check_run(self.config, prompt=None if None in prompts else prompts[0], chunk_prompts=chunk_prompts,
                            image=image, video=video, prefix_latents=prefix_latents, prompt_embeds=prompt_embeds,
                            num_frames=num_frames, height=height, width=width,
                            num_inference_steps=num_inference_steps, seed=seed, keep_aspect=keep_aspect,
                            prefix_from=prefix_from)
        warn_of_frame_rounding(checked)
        if prefix_latents is not None:
            # Already-encoded, scaled VAE latents: (1, 16, 1, h, w) for i2v, (1, 16, Tp, h, w) for v2v, used
            # in the caller's dtype (the official DiT takes the prefix as given).
            prefix = prefix_latents.cpu() if prefix_latents.is_floating_point() else prefix_latents.float().cpu()
        else:
            prefix = self.encode_prefix(config, image=checked.image, video=checked.video, keep_aspect=keep_aspect)
        prefix_frames = 0 if prefix is None else prefix.shape[2]
        total_chunks, clean_chunks = chunk_counts(run.num_frames, prefix_frames, r.chunk_width,
                                                  r.temporal_downsample_factor)
        num_generated = total_chunks - clean_chunks

        y, y_masks, clean_rows = self._batch_conditioning(prompts, chunk_prompts, prompt_embeds,
                                                          prompt_attention_mask, negative_prompt, num_generated,
                                                          clean_chunks)
        device = self.dit_device
        y, y_masks, clean_rows = y.to(device), y_masks.to(device), tuple(t.to(device) for t in clean_rows)
        h, w = config.latent_size
        shape = (batch, m.latent_channels, total_chunks * r.chunk_width, h, w)
        noise = batch_noise(shape, latents=latents, generator=generator, seed=run.seed)
        if prefix is not None:
            prefix = prefix.to(device)

        plan = plan_forward_steps(total_chunks, r.window_size, r.num_steps, clean_chunks, r.noise2clean_kvrange,
                                  r.clean_chunk_kvrange)
        fingerprint = run_fingerprint(config, y, y_masks, noise, prefix, extra=self.lora_fingerprint())
        finished = 0
        grid = time_grid(r.num_steps, config.engine_config.shortcut_mode)
        before = noise  # the latent video before the current step (for the previews' clean estimate)

        def on_step(step, latent):
            nonlocal finished, before
            if step.finished_chunk is not None:
                finished += 1
                if on_state is not None:
                    on_state(ResumeState(fingerprint, step.index + 1, finished, latent.detach().cpu().clone()))
            edited = None
            if step_callback is not None:
                edited = step_callback(step, grid[list(step.chunk_steps)], latent)
            if should_stop is not None and should_stop():
                raise GenerationCancelled("generation was cancelled")
            if callback is not None:
                previous = before
                callback({"type": "step", "step": step.index + 1, "total_steps": len(plan),
                          "preview": lambda: self.latents_to_preview(
                              window_clean_estimate(latent, previous, step, grid, r.chunk_width)),
                          "chunk_frames": r.chunk_width})
                before = (edited if edited is not None else latent).detach().cpu().clone()
            return edited

        resume_from, replayed = None, []
        if resume_state is not None:
            if resume_state.fingerprint != fingerprint:
                raise InputError("the saved resume state belongs to a different run (other prompt, inputs, "
                                 "settings or seed); start again without --resume")
            resume_from = (resume_state.next_step, resume_state.latent)
            finished = resume_state.finished_chunks
            replayed = [resume_state.latent[:, :, slice(*emitted_frames(clean_chunks + i, r.chunk_width,
                                                                          prefix_frames))]
                        for i in range(resume_state.finished_chunks)]
        live = None if live_prompts is None else pipeline_caption_rows(
            self, live_prompts, prompts, chunk_prompts, prompt_embeds, num_generated, clean_chunks)
        chunks = sample_chunks(self.dit, config, y, y_masks, noise, prefix_latent=prefix,
                               progress=progress if is_output_rank(self.parallel) else False, callback=on_step,
                               resume_from=resume_from, clean_rows=clean_rows, stop=interrupt, caption_rows=live)
        for index, chunk_latents in enumerate(itertools.chain(replayed, chunks)):
            frames = None
            if output_type != "latent":  # one video at a time: each decodes exactly as its single run does
                frames = [self.decode_chunk_frames(chunk_latents[b : b + 1], fps=r.fps) for b in range(batch)]
            if callback is not None:
                callback({"type": "chunk", "index": index, "num_chunks": num_generated})
            yield BatchChunkOutput(index=index, num_chunks=num_generated, latents=chunk_latents.cpu(), frames=frames)

    def generate_to_file(self, path: str | Path, *, progress: bool | None = None, resume: bool = False,
                         metadata: Mapping[str, str] | None = None, **kwargs) -> GenerationReport:
        """Stream chunks into an mp4, each encoded as soon as it is clean.

        The video is written to `path` as fragmented mp4, one fragment per chunk appended the moment the chunk is
        decoded: the file is playable while it grows, and a killed run leaves every finished chunk in it (a file
        already at `path` is replaced when the first chunk lands). After every finished chunk the run's state is saved
        next to the output, so `resume=True` continues a killed run exactly where it stopped. `metadata`: the
        mp4's container tags (e.g. the captions of an enhanced run). progress: the denoising bar (default: as
        set_progress_bar_config says, shown unless disabled).
        """
        from .chunk_output import ChunkSink, overlap_for
        from .io.chunked_mp4 import ChunkedMp4Writer
        from .parallel import is_output_rank

        if "output_type" in kwargs:  # the chunks go into the mp4; it came back as stream()'s duplicate keyword
            raise InputError("generate_to_file writes the frames into the mp4, so output_type does not apply; "
                             "use pipe(...) or stream() to get frames back")
        path = Path(path)
        if not is_output_rank(self.parallel):
            # Other ranks take part in every collective of the run but write nothing.
            for _ in self.stream(progress=False, **kwargs):
                pass
            return GenerationReport(str(path), 0, 0, 0.0, None)
        # Before any work: a folder that is missing or read-only, a file name that is a folder, or a name not
        # ending in .mp4 is one sentence now, not a traceback after the first chunk (or after the last).
        path = check_output_path(path, resume=resume)
        if progress is None:
            progress = self.progress_bar_options()
        state_file = resume_state_path(path)
        resume_state = ResumeState.load(state_file) if resume else None
        start = time.perf_counter()
        if self.vae is None:
            check_weights_present(self.config, text_encoder=False)  # raises, naming the missing VAE folder
        choice = overlap_for(self)
        replays = resume_state.finished_chunks if resume_state is not None else 0
        # One fragment per chunk, on disk as soon as the chunk is decoded; replayed chunks re-encode to the same
        # bytes. The sink decodes and writes chunk k (on its worker thread when overlapping) while the sampler
        # goes on with chunk k + 1.
        writer = ChunkedMp4Writer(path, fps=self.fps, metadata=dict(metadata or {}), in_place=True)
        sink = ChunkSink(lambda latents: self.decode_chunk_frames(latents, fps=self.fps), writer,
                         lambda state: state.save(state_file), choice=choice, device=self.vae_device, start=start)
        with writer, sink:
            for chunk in self.stream(progress=progress, resume_state=resume_state, on_state=sink.state_ready,
                                     output_type="latent", **kwargs):
                sink.put(chunk.latents, replayed=chunk.index < replays)
        state_file.unlink(missing_ok=True)
        return GenerationReport(str(path), sink.frames_written, sink.chunks_written, time.perf_counter() - start,
                                sink.seconds_to_first_chunk, replays)

    def decode_chunk_frames(self, latents: torch.Tensor, *, fps: int) -> np.ndarray:
        """One video's chunk latents (1, 16, t, h, w) -> uint8 frames (T, H, W, 3) on the CPU (with the VAE's
        tiles spread over the ranks under torchrun)."""
        from .parallel import parallel_decode_chunk

        return parallel_decode_chunk(self.vae, latents, self.parallel, fps=fps, out_device="cpu").numpy()

    @property
    def vae_device(self) -> torch.device | None:
        return None if self.vae is None else self.vae.device

    # ------------------------------------------------------------------ helpers
    def _chunk_captions(self, prompt, chunk_prompts, prompt_embeds, prompt_attention_mask, num_generated):
        """Caption embeddings (1 or chunks, Lc, C) and masks (1 or chunks, Lc) for build_conditioning."""
        if prompt_embeds is not None:
            if prompt is not None or chunk_prompts is not None:
                raise InputError("give prompt / chunk_prompts or prompt_embeds, not both")
            if prompt_attention_mask is None:
                raise InputError("prompt_embeds needs prompt_attention_mask")
            length, channels = self.dit.y_embedder.null_caption_embedding.shape  # what the DiT's captions are
            if prompt_embeds.dim() < 2 or tuple(prompt_embeds.shape[-2:]) != (length, channels):
                raise InputError(f"prompt_embeds must end in (caption length {length}, T5 channels {channels}), as "
                                 f"pipe.encode_prompts gives them, got shape {tuple(prompt_embeds.shape)}")
            emb = prompt_embeds.float().reshape(-1, *prompt_embeds.shape[-2:])  # (1 or chunks, Lc, C)
            if prompt_attention_mask.numel() != emb.shape[0] * length:
                raise InputError(f"prompt_attention_mask must hold one row of {length} per prompt_embeds row "
                                 f"({emb.shape[0]}), got shape {tuple(prompt_attention_mask.shape)}")
            mask = prompt_attention_mask.reshape(emb.shape[0], -1)
            if emb.shape[0] == 1:
                return emb, mask
            if emb.shape[0] != num_generated:
                raise InputError(f"prompt_embeds has {emb.shape[0]} rows; give 1 or one per generated chunk "
                                 f"({num_generated})")
            return emb, mask
        per_chunk = chunk_prompt_schedule(prompt, chunk_prompts, num_generated)
        unique = list(dict.fromkeys(per_chunk))
        embeds, masks = self.encode_prompts(unique)
        if len(unique) == 1:
            return embeds[0][0], masks[0]  # (1, Lc, C), (1, Lc): the official single-caption case
        lookup = {text: (e[0, 0], mk[0]) for text, e, mk in zip(unique, embeds, masks)}
        # (chunks, Lc, C) and (chunks, Lc): one caption row per generated chunk (scene changes).
        return (torch.stack([lookup[t][0] for t in per_chunk]), torch.stack([lookup[t][1] for t in per_chunk]))

    def _batch_conditioning(self, prompts, chunk_prompts, prompt_embeds, prompt_attention_mask, negative_prompt,
                            num_generated: int, clean_chunks: int):
        """y (2, B, n, Lc, Ct), masks (2, B, n, Lc) and the clean re-encode rows for B videos."""
        from .sampling.conditioning import DEFAULT_POSITIVE, build_conditioning
        from .sampling.sampler import as_batched_conditioning, default_clean_rows

        null_caption = self.dit.y_embedder.null_caption_embedding.detach().float().cpu()
        common = dict(generated_chunks=num_generated, prefix_chunks=clean_chunks, special_tokens=self.special_tokens,
                      positive_tags=DEFAULT_POSITIVE if self.special_tokens is not None else ())
        negatives = [None] * len(prompts)
        if negative_prompt is not None:
            embeds, masks = self.encode_prompts(list(dict.fromkeys(negative_prompt)))
            lookup = dict(zip(dict.fromkeys(negative_prompt), zip(embeds, masks)))
            negatives = [lookup[text] for text in negative_prompt]
        rows, plain = [], None
        for prompt, negative in zip(prompts, negatives):
            captions, caption_masks = self._chunk_captions(prompt, chunk_prompts, prompt_embeds,
                                                           prompt_attention_mask, num_generated)
            cond = build_conditioning(captions, caption_masks, null_caption, **common,
                                      negative_captions=None if negative is None else negative[0],
                                      negative_masks=None if negative is None else negative[1])
            rows.append(cond)
            if negative is not None and plain is None:  # the null rows the cache is built with, as official
                plain = build_conditioning(captions, caption_masks, null_caption, **common)
        y, masks = torch.stack([c.y for c in rows], dim=1), torch.stack([c.masks for c in rows], dim=1)
        reference = as_batched_conditioning(plain.y, plain.masks) if plain is not None else (y, masks)
        clean_y, clean_mask = default_clean_rows(*reference)
        return y, masks, (clean_y.expand(len(prompts), -1, -1), clean_mask.expand(len(prompts), -1))


def warn_if_unknown_prompt(prompt: str, text_encoder_folder) -> None:
    """A PromptWarning when the text encoder ships a vocabulary (the demo does) and the prompt uses none of it."""
    import warnings

    from .models.prompt_vocabulary import PromptWarning, check_prompt

    message = check_prompt(prompt, text_encoder_folder)
    if message:
        warnings.warn(message, PromptWarning, stacklevel=3)
