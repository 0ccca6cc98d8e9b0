"""What a diffusers user reaches for on a pipeline object: `.to()`, `save_pretrained`, latent previews.

`MagiPipeline` inherits these; they only move, write or read the models the pipeline already holds.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .call_inputs import check_finite
from .errors import InputError
from .sampling.sampler import check_generators

logger = logging.getLogger(__name__)

SAVED_MODEL_NAME = "model"  # ckpt/magi/<name>/ when the pipeline is not an official variant


CALLBACK_TENSOR_INPUTS = ("latents",)


class DiffusersConventions:
    """Mixin for MagiPipeline (which provides config, dit, vae, text_encoder, device, special_tokens, stream_batch)."""

    variant: str | None = None  # the official variant the weights came from, if any
    special_tokens_path: str | None = None
    _preview = None
    _interrupt = False
    _callback_tensor_inputs = list(CALLBACK_TENSOR_INPUTS)
    _progress_bar_config: dict | None = None

    # ------------------------------------------------------------------ generation
    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def set_progress_bar_config(self, **kwargs) -> None:
        """As in diffusers: tqdm options for the denoising bar of `pipe(...)`, e.g. `disable=True` or `desc=`."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar_options(self) -> bool | dict:
        """What `pipe(...)` hands the sampler as `progress`: False, True or the tqdm options set."""
        options = dict(self._progress_bar_config or {})
        if options.pop("disable", False):
            return False
        return options or True

    def __call__(self, prompt: str | list[str] | None = None, *, negative_prompt: str | list[str] | None = None,
                 num_videos_per_prompt: int = 1, guidance_scale: float | None = None,
                 prev_chunk_guidance_scale: float | None = None, num_inference_steps: int | None = None,
                 num_frames: int | None = None, height: int | None = None, width: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "np", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=CALLBACK_TENSOR_INPUTS,
                 progress: bool | None = None, **magi_kwargs):
        """Generate a batch of videos, diffusers style; returns MagiPipelineOutput (frames, latents).

        prompt: one prompt or a list (each makes num_videos_per_prompt videos, denoised together).
        negative_prompt: one for all or one per prompt; replaces the null caption of the unconditional
            passes (a magi1 extension; default: the official null caption).
        guidance_scale / prev_chunk_guidance_scale: override the text / previous-chunk scale of the config's
            guided t buckets (None: the config's schedule). Base models only.
        generator: one torch.Generator (drawing every video's noise in turn) or one per video.
        latents: the whole initial noise, (videos, 16, latent frames, h, w).
        output_type: "np" float (B, T, H, W, 3) in [0, 1] | "pt" float (B, T, 3, H, W) | "pil" | "latent".
        callback_on_step_end(pipe, step, t, callback_kwargs) -> callback_kwargs, after every forward step;
            callback_kwargs holds the tensors named in callback_on_step_end_tensor_inputs ("latents": the
            whole latent video, which the callback may change). `pipe._interrupt = True` stops after the step;
            the chunks finished by then are returned.
        magi_kwargs: image (i2v), video (v2v), prefix_from, chunk_prompts, seed, prompt_embeds,
            prompt_attention_mask, prefix_latents, keep_aspect (see `stream`). docs/python-api.md has the details.
        """
        check_call_keywords(self, magi_kwargs)
        prompts, negatives = expand_prompts(prompt, negative_prompt, num_videos_per_prompt)
        if isinstance(callback_on_step_end_tensor_inputs, str):  # its letters were taken for names
            raise InputError(f"callback_on_step_end_tensor_inputs must be a list of names, e.g. "
                             f"[{callback_on_step_end_tensor_inputs!r}], got the text "
                             f"{callback_on_step_end_tensor_inputs!r}")
        unknown = set(callback_on_step_end_tensor_inputs or ()) - set(self._callback_tensor_inputs)
        if unknown:
            raise InputError(f"callback_on_step_end_tensor_inputs may name {', '.join(self._callback_tensor_inputs)}; "
                             f"got {', '.join(sorted(unknown))}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise InputError("callback_on_step_end must be a function (pipe, step, t, callback_kwargs) -> dict")
        check_generators(generator, len(prompts))  # now, not after the prompts are encoded (and warned about)
        self._interrupt = False
        names = tuple(callback_on_step_end_tensor_inputs or ())

        def step_callback(step, t, latent):
            if callback_on_step_end is None:
                return None
            given = {"latents": latent} if "latents" in names else {}
            returned = callback_on_step_end(self, step.index, t, given)
            if returned is None:
                return None
            if not isinstance(returned, Mapping):  # e.g. the latents themselves: "ambiguous truth value" deep down
                raise InputError(f"callback_on_step_end must return callback_kwargs (a dict, or None), got "
                                 f"{type(returned).__name__}; return {{'latents': ...}} to replace the latents")
            edited = returned.get("latents")
            if edited is not None and not isinstance(edited, torch.Tensor):
                raise InputError(f"callback_on_step_end returned latents as {type(edited).__name__}; they must "
                                 f"be a torch tensor shaped like callback_kwargs['latents']")
            if edited is not None and edited is not latent:  # NaN latents ran on to an all-black video
                check_finite(edited, "the latents callback_on_step_end returned")
            return edited

        if progress is None:
            progress = self.progress_bar_options()
        chunks = list(self.stream_batch(
            prompts, negative_prompt=negatives, guidance_scale=guidance_scale,
            prev_chunk_guidance_scale=prev_chunk_guidance_scale, num_inference_steps=num_inference_steps,
            num_frames=num_frames, height=height, width=width, generator=generator, latents=latents,
            output_type=output_type, progress=progress, step_callback=step_callback,
            interrupt=lambda: self._interrupt, **magi_kwargs))
        size = None
        if not chunks:  # interrupted before the first chunk finished: empty, but of the run's frame size
            config, run = self.settings_for(height=height, width=width)
            size = (run.height, run.width, *config.latent_size)
        output = _assemble(chunks, len(prompts), output_type, size)
        return output if return_dict else (output.frames,)

    # ------------------------------------------------------------------ placement
    def enable_model_cpu_offload(self, device: str | torch.device | None = None):
        """Keep each component (DiT layers, VAE, a device T5) in host memory except while it runs."""
        return self.enable_offload("model", device=device)

    def enable_sequential_cpu_offload(self, device: str | torch.device | None = None):
        """diffusers' lowest-memory mode: here the DiT's layers come to the device one at a time (block offload)."""
        return self.enable_block_offload(1, device=device)

    def enable_block_offload(self, blocks_on_device: int = 2, device: str | torch.device | None = None):
        """Stream the DiT's layers from host memory: at most `blocks_on_device` on the device at a time."""
        return self.enable_offload("blocks", blocks_on_device=blocks_on_device, device=device)

    def enable_offload(self, mode: str, *, blocks_on_device: int = 2, device=None):
        """Switch to offload mode "none", "model" or "blocks" (docs/memory.md); the output does not change."""
        from .memory.placement import enable_offload

        enable_offload(self, mode, blocks_on_device=blocks_on_device, device=device)
        return self

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, *,
           torch_dtype: str | torch.dtype | None = None):
        """Move the DiT and the VAE (and T5, unless the config keeps it on the CPU) to `device` / `dtype`.

        As in diffusers: `pipe.to("cuda")`, `pipe.to(torch.bfloat16)`, `pipe.to("cuda", torch.float16)`.
        The DiT keeps its float32 islands (embedders, norms, final linear) whatever the dtype. T5 stays
        float32, as official. Returns the pipeline.
        """
        from .runtime import parse_dtype, pick_device

        if isinstance(device, torch.dtype) or (isinstance(device, str) and _is_dtype_name(device)):
            device, dtype = None, device
        if isinstance(device, int) and not isinstance(device, bool):  # torch's .to(0): GPU 0
            device = f"cuda:{device}"
        dtype = torch_dtype if torch_dtype is not None else dtype
        if getattr(self, "parallel", None) is not None:
            raise InputError("a pipeline running under torchrun keeps the placement its launch gave it")
        if getattr(self, "offload_mode", "none") not in (None, "none"):  # the host copies kept the old dtype
            raise InputError(f"the pipeline is offloaded ({self.offload_mode}): call .to() before "
                             f"enable_model_cpu_offload / enable_block_offload, or pipe.enable_offload('none') first")
        target = pick_device(device) if device is not None else None
        dtype = parse_dtype(dtype) if dtype is not None else None
        if dtype is not None:
            self.dit.apply_precision(dtype)
        if target is not None:
            self.dit.to(target)
            self.device = target
        moves = {k: v for k, v in (("device", target), ("dtype", dtype)) if v is not None}
        if self.vae is not None and moves:
            self.vae.to(**moves)
        encoder = self.text_encoder
        if target is not None and encoder is not None and self.config.runtime_config.t5_device != "cpu":
            encoder.device = target
            if getattr(encoder, "_model", None) is not None:
                encoder._model.to(target)
        return self

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | Path, *, max_shard_size: int | None = 5 * 2**30) -> Path:
        """Write the pipeline in the official hub repository's layout; `from_pretrained(save_directory)` reads it.

            save_directory/config.json                                 the official three-section config
            save_directory/ckpt/magi/<variant>/inference_weight[...]/  the DiT, sharded above max_shard_size
            save_directory/ckpt/vae/                                   config.json + safetensors
            save_directory/ckpt/t5/t5-v1_1-xxl/                        T5 as loaded (it is never trained)
            save_directory/example/assets/special_tokens.npz           when the pipeline uses them

        <variant> is the official variant the weights came from, else "model".
        """
        from .checkpoint.layout import weight_dir_name
        from .checkpoint.writer import save_official, save_vae_folder
        from .hub import SPECIAL_TOKENS_PATH, T5_FOLDER, T5_PARENT, VAE_FOLDER

        if getattr(self, "parallel", None) is not None:
            raise InputError("save_pretrained needs the whole model in one process (not under torchrun)")
        root = Path(save_directory).expanduser()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # it, or a folder above it, is a file
            raise InputError(f"save_directory {root} is a file or lies under one; save_pretrained writes a folder "
                             f"(made if missing): give a folder path") from None
        except PermissionError:
            raise InputError(f"cannot create the folder {root} (permission denied)") from None
        e = self.config.engine_config
        load = f"ckpt/magi/{self.variant or SAVED_MODEL_NAME}"
        # Offloaded weights wait in host memory; the modules hold empty placeholders (they were saved as such)
        save_official(state_dict_in_full(self, self.dit),
                      root / load / weight_dir_name(distill=e.distill, fp8_quant=e.fp8_quant),
                      max_shard_bytes=max_shard_size)
        paths = {"load": f"./{load}", "vae_pretrained": None, "t5_pretrained": None}
        if self.vae is not None:
            save_vae_folder(_VaeWeights(self.vae, state_dict_in_full(self, self.vae)), root / VAE_FOLDER)
            paths["vae_pretrained"] = f"./{VAE_FOLDER}"
        source = getattr(self.text_encoder, "folder", None)
        if source is not None:
            _copy_folder(Path(source), root / T5_FOLDER)
            paths["t5_pretrained"] = f"./{T5_PARENT}"
        elif self.text_encoder is not None:
            logger.warning("the text encoder has no folder on disk; save_pretrained leaves T5 out")
        if self.special_tokens_path:
            (root / SPECIAL_TOKENS_PATH).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.special_tokens_path, root / SPECIAL_TOKENS_PATH)
        data = self.config.to_dict()
        data["runtime_config"].update(paths)
        import json

        (root / "config.json").write_text(json.dumps(data, indent=4) + "\n")
        return root

    # ------------------------------------------------------------------ previews
    @property
    def latent_preview(self):
        """The LatentPreview of this pipeline's VAE (magi1.preview), loaded or fitted on first use."""
        if self._preview is None:
            from .preview import preview_for

            if self.vae is None:
                raise InputError("latent previews need the VAE (to fit or check the preview map)")
            folder = None
            try:
                folder = self.config.resolve_path(self.config.runtime_config.vae_pretrained)
            except Exception:  # an hf:// folder not in the cache: fit in memory
                pass
            self._preview = preview_for(self.vae, folder, fps=self.config.runtime_config.fps)
        return self._preview

    def latents_to_preview(self, latents: torch.Tensor, scale: int = 1) -> np.ndarray:
        """Scaled latents (B, 16, T, h, w), torch or numpy -> cheap uint8 RGB previews (B, T, h*scale, w*scale, 3).

        One colour per latent cell (4 frames x 8 x 8 pixels) from a linear map; costs nothing next to a step.
        """
        from .call_inputs import tensor_input

        channels = self.config.model_config.in_channels
        if isinstance(latents, (np.ndarray, torch.Tensor)):
            latents = tensor_input(latents, "latents")  # NaN latents would preview as black, with no word why
        if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or latents.shape[1] != channels:
            shape = tuple(latents.shape) if hasattr(latents, "shape") else type(latents).__name__
            raise InputError(f"latents must be a torch tensor or numpy array (videos, {channels}, latent frames, "
                             f"h, w), as the callback's callback_kwargs['latents'] is; got {shape}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise InputError(f"scale must be a whole number >= 1 (pixels per latent cell side), got {scale!r}")
        return self.latent_preview(latents, scale=scale)


def check_call_keywords(pipe, magi_kwargs: Mapping) -> None:
    """A keyword pipe() does not take is a TypeError that names pipe(), not the stream_batch() it is passed on to
    (diffusers' eta, max_sequence_length or negative_prompt_embeds said "stream_batch() got an unexpected ...")."""
    import difflib
    import inspect

    known = set(inspect.signature(pipe.stream_batch).parameters) | set(inspect.signature(pipe.__call__).parameters)
    for name in magi_kwargs:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; docs/python-api.md lists the arguments"
            raise TypeError(f"pipe() got an unexpected keyword argument {name!r}{hint}")


def _offloaded_copies(pipe):
    """The host-memory copies (memory.offload.HostCopies) of every module an offload mode parks; none without."""
    for part in getattr(pipe, "_offload_parts", None) or ():
        yield from getattr(part, "copies", ())  # LayerStreamer: one per DiT layer
        yield from getattr(part, "parts", {}).values()  # ComponentSwapper: the DiT's layers, the VAE


def state_dict_in_full(pipe, module: torch.nn.Module) -> dict:
    """module.state_dict() with the real values of its offloaded parts, each brought in for a moment, one at a
    time (so no more is resident than while it runs); without offload, the state dict itself."""
    state = module.state_dict()
    prefixes = {id(sub): name for name, sub in module.named_modules()}
    for copies in _offloaded_copies(pipe):
        prefix = prefixes.get(id(copies.module))
        if prefix is None:
            continue  # another component's
        was_resident = copies.resident
        copies.bring_in()
        copies.ready()
        for name, tensor in copies.module.state_dict().items():
            state[f"{prefix}.{name}" if prefix else name] = tensor.detach().to("cpu", copy=True)
        if not was_resident:
            copies.park()
    return state


class _VaeWeights:
    """A VAE as save_vae_folder reads it (its config, its state dict), with the state dict given."""

    def __init__(self, vae, state: dict) -> None:
        self.config, self._state = vae.config, state

    def state_dict(self) -> dict:
        return self._state


def _copy_folder(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file():
            shutil.copyfile(item, target / item.name)


def _is_dtype_name(text: str) -> bool:
    from .runtime import parse_dtype

    try:
        parse_dtype(text)
        return True
    except ValueError:
        return False


def expand_prompts(prompt, negative_prompt, per_prompt: int) -> tuple[list, list | None]:
    """One prompt per video (each repeated num_videos_per_prompt times), and the matching negative prompts."""
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or per_prompt < 1:
        raise InputError(f"num_videos_per_prompt must be a whole number >= 1, got {per_prompt!r}")
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise InputError("the prompt list is empty")
        # "" is allowed, as for a single prompt: that video is conditioned on the empty caption
        bad = [p for p in prompt if not isinstance(p, str)]
        if bad:
            raise InputError(f"every prompt of the list must be text, got {type(bad[0]).__name__} {bad[0]!r}")
        prompts = list(prompt)
    elif prompt is None or isinstance(prompt, str):  # None: prompt_embeds or chunk prompts give the text
        prompts = [prompt]
    else:
        raise InputError(f"prompt must be text or a list of texts, got {type(prompt).__name__}")
    negatives = None
    if negative_prompt is not None and not isinstance(negative_prompt, (str, list, tuple)):
        raise InputError(f"negative_prompt must be text or a list of texts, got {type(negative_prompt).__name__}")
    if negative_prompt is not None:
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise InputError(f"give one negative prompt, or one per prompt ({len(prompts)}), got {len(negatives)}")
        if any(not isinstance(n, str) or not n.strip() for n in negatives):
            raise InputError("a negative prompt must be non-empty text")
        negatives = [n for n in negatives for _ in range(per_prompt)]
    return [p for p in prompts for _ in range(per_prompt)], negatives


def chunk_frames_as(frames: np.ndarray, output_type: str):
    """One video's uint8 frames (T, H, W, 3) as `stream()` hands them out for output_type.

    "np": the uint8 array itself | "pt": float32 (T, 3, H, W) in [0, 1] | "pil": a list of T PIL images.
    """
    if output_type == "pil":
        from PIL import Image

        return [Image.fromarray(frame) for frame in frames]
    if output_type == "pt":
        # exact: uint8 / 255 rounds back to the same bytes
        return (torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0).permute(0, 3, 1, 2).contiguous()
    return frames


def _assemble(chunks, batch: int, output_type: str, size: tuple[int, int, int, int] | None = None):
    """The chunks of a run -> MagiPipelineOutput with a batch of videos (`frames[0]` is the first video).

    size: (H, W, h, w) of the frames and latents, for a run that finished no chunk (0 frames of that size).
    """
    from .pipeline import MagiPipelineOutput

    if chunks:
        latents = torch.cat([c.latents for c in chunks], dim=2)  # (B, 16, T_lat, h, w)
    else:
        latents = torch.empty(batch, 16, 0, *size[2:])
    if output_type == "latent":
        return MagiPipelineOutput(frames=latents, latents=latents)
    if chunks:
        videos = np.stack([np.concatenate([c.frames[b] for c in chunks]) for b in range(batch)])  # (B, T, H, W, 3)
    else:
        videos = np.zeros((batch, 0, *size[:2], 3), np.uint8)
    if output_type == "pil":
        return MagiPipelineOutput(frames=[chunk_frames_as(video, "pil") for video in videos], latents=latents)
    if output_type == "pt":
        return MagiPipelineOutput(frames=torch.stack([chunk_frames_as(video, "pt") for video in videos]),
                                  latents=latents)
    # "np": float in [0, 1], as diffusers gives (stream() keeps the uint8 bytes); exact, as for "pt"
    return MagiPipelineOutput(frames=(torch.from_numpy(videos).float() / 255.0).numpy(), latents=latents)
