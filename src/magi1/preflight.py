"""Everything about a generation that can be refused before a model loads, checked in one place.

    check_run(config, prompt=..., image=..., num_frames=..., output_path=...)  -> CheckedRun
    check_weights_present(config)        the folders a config names are there (no tensor is read)

The CLI calls both before it imports torch (a wrong flag costs a fraction of a second, not a model load);
`MagiPipeline.stream_batch` calls `check_run` before it encodes a prompt, an image or a video; the server can
call it when a job is submitted. Every refusal is an InputError (or MissingWeightsError) whose message is one
sentence a user can act on. Nothing here imports torch, except the v2v prefix's and the output's frame
counts (the VAE tiling rule). `warn_of_frame_rounding` says when whole chunks change the frame count.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import InputError, MissingWeightsError

logger = logging.getLogger(__name__)

MODES = ("t2v", "i2v", "v2v")
# Decoded pixels an input image or video frame may have: Pillow's own decompression-bomb threshold.
DEFAULT_MAX_INPUT_PIXELS = 89_478_485


@dataclass
class CheckedRun:
    """A run checked against one config: its per-call config, its inputs at the model's size, its chunks."""

    config: Any                     # MagiConfig with this call's size, frames, steps and seed
    mode: str                       # t2v | i2v | v2v
    image: Any = None               # uint8 (H, W, 3) at the config's size (i2v from an image)
    video: Any = None               # uint8 (T, H, W, 3) at the config's size and fps (v2v from a video)
    prefix_latent_frames: int = 0   # 1 for i2v, Tp for v2v, 0 for t2v
    total_chunks: int = 0           # every chunk of the latent video, whole prefix chunks included
    clean_chunks: int = 0           # whole prefix chunks (not generated)
    output_path: Path | None = None

    @property
    def num_generated(self) -> int:
        return self.total_chunks - self.clean_chunks


def check_run(config, *, mode: str | None = None, prompt: Any = None, chunk_prompts: Any = None, image: Any = None,
              video: Any = None, prefix_latents: Any = None, prompt_embeds: Any = None, num_frames: Any = None,
              height: Any = None, width: Any = None, num_inference_steps: Any = None, seed: Any = None,
              keep_aspect: bool = False, output_path: str | os.PathLike | None = None, resume: bool = False,
              max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS, prefix_from: str = "start") -> CheckedRun:
    """Refuse what cannot run (InputError, one sentence); return the per-call config and the loaded inputs.

    image / video may be paths or arrays (a numpy video of any size is resized as a file would be, and
    cut to the same frames); prefix_latents stand in for either. The image or video is decoded here, so a
    broken file fails now. prefix_from: which PREFIX_FRAMES of a video (file or array) v2v continues:
    "start" (the official choice: its first frames) or "end" (its last frames, to continue where it ends).
    """
    mode = _mode(mode, image, video, prefix_latents)
    if prompt_embeds is None and prompt is None and not _has_chunk_zero(chunk_prompts):
        raise InputError("give a prompt (or chunk prompts with an entry for chunk 0)")
    config = call_config(config, num_frames=num_frames, height=height, width=width,
                         num_inference_steps=num_inference_steps, seed=seed)
    r = config.runtime_config
    checked = CheckedRun(config=config, mode=mode)
    if prefix_latents is not None:
        shape = tuple(getattr(prefix_latents, "shape", ()))
        channels, (h, w) = config.model_config.latent_channels, config.latent_size
        if len(shape) != 5 or shape[:2] != (1, channels) or shape[3:] != (h, w) or shape[2] < 1:
            raise InputError(f"prefix_latents must have shape (1, {channels}, frames, {h}, {w}) for these "
                             f"settings, got {shape}")
        checked.prefix_latent_frames = shape[2]
    elif mode == "i2v":
        checked.image = load_checked_image(image, r.video_size_h, r.video_size_w, keep_aspect, max_input_pixels)
        checked.prefix_latent_frames = 1
    elif mode == "v2v":
        checked.video = load_checked_video(video, r.video_size_h, r.video_size_w, r.fps, keep_aspect,
                                           max_input_pixels, prefix_from=prefix_from)
        checked.prefix_latent_frames = _encoded_frames(checked.video, r.fps)

    from .sampling.chunk_plan import chunk_counts

    checked.total_chunks, checked.clean_chunks = chunk_counts(r.num_frames, checked.prefix_latent_frames,
                                                              r.chunk_width, r.temporal_downsample_factor)
    if checked.num_generated < 1:
        per_latent = r.temporal_downsample_factor
        raise InputError(f"{r.num_frames} frame{'s give' if r.num_frames != 1 else ' gives'} no chunk to generate "
                         f"(one latent frame is {per_latent} frames); ask for at least {per_latent} frames")
    _check_memory(checked.total_chunks * r.chunk_width, config)
    _check_chunk_prompts(chunk_prompts, checked.num_generated)
    if output_path is not None:
        checked.output_path = check_output_path(output_path, resume=resume)
    return checked


def output_frame_count(checked: CheckedRun) -> int:
    """Frames the run's video will have: its generated chunks as decoded (a v2v prefix is not output again)."""
    from .models.vae_tiling import TileSettings, decoded_frame_count
    from .sampling.chunk_plan import emitted_frames

    r = checked.config.runtime_config
    settings = TileSettings.for_fps(r.fps)
    spans = [emitted_frames(chunk, r.chunk_width, checked.prefix_latent_frames)
             for chunk in range(checked.clean_chunks, checked.total_chunks)]
    return sum(decoded_frame_count(end - start, settings, r.temporal_downsample_factor) for start, end in spans)


def warn_of_frame_rounding(checked: CheckedRun) -> None:
    """Say once per run when the video will not have the num_frames asked for, and why.

    The arithmetic is the official code's (whole chunks, the prefix on top), so it is announced, not changed.
    Every run goes through here (pipe(...), stream(), generate_to_file and so magi1 generate), after the
    checks and before any model work.
    """
    r = checked.config.runtime_config
    asked, made = r.num_frames, output_frame_count(checked)
    if made == asked:
        return
    per_latent = r.temporal_downsample_factor
    chunk_frames = r.chunk_width * per_latent
    whole = (f"a video is made of whole chunks of {chunk_frames} frames (as the official code does), "
             f"{checked.total_chunks} here")
    why = {
        "t2v": f"{whole}; ask for a multiple of {chunk_frames} to get exactly that many",
        "i2v": f"the image counts as the first latent frame ({per_latent} frames) and {whole}",
        "v2v": f"the prefix video's {checked.prefix_latent_frames} latent "
               f"frame{'s' * (checked.prefix_latent_frames != 1)} come{'s' * (checked.prefix_latent_frames == 1)} "
               f"first, {whole}, and only "
               f"the frames after the prefix are output",
    }[checked.mode]
    logger.warning("magi1: num_frames %d gives %d frames: %s", asked, made, why)


def call_config(config, *, num_frames=None, height=None, width=None, num_inference_steps=None, seed=None):
    """The config with one call's size, frames, steps and seed, checked by the config's own rules."""
    from .config import ConfigError

    values = {"num_frames": num_frames, "height": height, "width": width, "steps": num_inference_steps,
              "seed": seed}
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise InputError(f"{name} must be a whole number, got {value!r}")
        if value is not None:
            values[name] = int(value)  # numpy integers too
    num_frames, height, width, num_inference_steps, seed = (values[k] for k in ("num_frames", "height", "width",
                                                                                  "steps", "seed"))
    for name in ("num_frames", "steps"):
        if values[name] is not None and values[name] < 1:
            raise InputError(f"{name} must be at least 1, got {values[name]}")
    for name in ("height", "width"):
        if values[name] is not None and (values[name] < 16 or values[name] % 16):
            raise InputError(f"{name} must be a positive multiple of 16 (8x VAE, 2x2 patches), got {values[name]}")
    if seed is not None and not 0 <= seed < 2**63:
        raise InputError(f"seed must be between 0 and {2**63 - 1}, got {seed}")
    runtime = config.runtime_config
    # The config's two rules on num_steps (its window, its noise-to-clean stages) in the caller's words: it
    # named the steps, not num_steps, window_size or noise2clean_kvrange.
    stages = [n for n in (int(runtime.window_size), len(runtime.noise2clean_kvrange or ())) if n > 0]
    multiple = math.lcm(*stages) if stages else 1
    if num_inference_steps is not None and num_inference_steps % multiple:
        nearest = max(multiple, round(num_inference_steps / multiple) * multiple)
        raise InputError(f"steps must be a multiple of {multiple} on this model (the steps are shared out evenly "
                         f"over its {runtime.window_size}-chunk denoising window), got {num_inference_steps}; "
                         f"try {nearest}")
    overrides = {key: value for key, value in (("video_size_h", height), ("video_size_w", width),
                                               ("num_frames", num_frames), ("num_steps", num_inference_steps),
                                               ("seed", seed)) if value is not None}
    if not overrides:
        return config
    try:
        return config.replace(**overrides)
    except ConfigError as err:
        problems = str(err).split("\n  - ")[1:] or [str(err)]
        raise InputError(problems[0].replace("runtime_config.num_steps", "steps")) from None


def check_output_path(output_path: str | os.PathLike, *, resume: bool = False) -> Path:
    """An .mp4 path whose folder exists and is writable (and, to resume, whose saved state is there)."""
    path = Path(output_path).expanduser()
    if path.is_dir():
        raise InputError(f"the output path {path} is a folder; give a file name such as {path / 'video.mp4'}")
    if path.name.lower() == ".mp4":  # Path(".mp4").suffix is "": a hidden file with no extension
        raise InputError(f"the output path {path} has no file name before .mp4; give one such as "
                         f"{path.with_name('video.mp4')}")
    if path.suffix.lower() != ".mp4":
        raise InputError(f"the output path must end in .mp4, got {path}")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"the output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"the output folder {folder} is not writable")
    _check_can_create_files_in(folder)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"the output file {path} exists and cannot be overwritten")
    if resume:
        from .resume import resume_state_path

        if not resume_state_path(path).is_file():
            if path.is_file():  # the state is removed when a run completes
                raise InputError(f"nothing to resume: {path} is complete (a finished run leaves no saved state "
                                 f"{resume_state_path(path).name}); run without --resume to make it again")
            raise InputError(f"nothing to resume: no saved state {resume_state_path(path)} for {path}")
    return path


def _check_can_create_files_in(folder: Path) -> None:
    """Create and remove a scratch file there: os.access answers yes for root on /proc, a full disk or some
    network mounts, where the run would only fail at its first chunk (the resume state and the mp4 go here)."""
    import tempfile

    try:
        handle, scratch = tempfile.mkstemp(dir=folder, prefix=".magi1-write-check-")
    except OSError as err:
        raise InputError(f"cannot create files in the output folder {folder}: {err.strerror or err}") from None
    os.close(handle)
    os.unlink(scratch)


def load_checked_image(source: Any, height: int, width: int, keep_aspect: bool = False,
                       max_pixels: int = DEFAULT_MAX_INPUT_PIXELS):
    """The i2v image as uint8 (height, width, 3); refuses unreadable files and decompression bombs."""
    import numpy as np
    from PIL import Image

    from .io.image import as_rgb_image, load_image

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        too_big = f"{path} has more than the {max_pixels} pixels an input image may have; scale it down first"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
                with Image.open(path) as probe:
                    if probe.width * probe.height > max_pixels:
                        raise InputError(too_big.replace("has more", f"is {probe.width}x{probe.height}, more"))
                    source = as_rgb_image(probe)  # decodes now, so a truncated file fails here
        except InputError:
            raise
        except Image.DecompressionBombError:
            raise InputError(too_big) from None
        except (OSError, SyntaxError, ValueError) as err:
            if _is_video(path):
                raise InputError(f"{path} is a video, not an image; continue it with v2v (--mode v2v "
                                 f"--prefix_video_path), or give one of its frames as the image") from None
            raise InputError(f"{path} is not a readable image ({type(err).__name__}: {err})") from None
    elif isinstance(source, Image.Image):
        if source.width * source.height > max_pixels:
            raise InputError(f"the image is {source.width}x{source.height} pixels, more than the {max_pixels} "
                             f"an input image may have")
    elif not isinstance(source, np.ndarray):
        raise InputError(f"image must be a file path, a PIL image or a uint8 (H, W, 3) array, "
                         f"got {type(source).__name__}")
    try:
        return load_image(source, height, width, keep_aspect=keep_aspect)
    except (ValueError, OSError) as err:
        raise InputError(f"the image cannot be used: {err}") from None


def _is_readable_image(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not an image"
        return False


# Containers that mean "a video file" (ffmpeg also opens plain text, as ANSI art in its "tty" format).
VIDEO_CONTAINERS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "flv", "mpegts",
                              "mpeg", "ogg", "asf", "mxf", "nut", "h264", "hevc"})


def _is_video(path: Path) -> bool:
    """Whether `path` is a video file with a video stream (for the message when it was given as an image)."""
    import av

    try:
        with av.open(str(path)) as container:
            return bool(VIDEO_CONTAINERS & set(container.format.name.split(","))) and bool(container.streams.video)
    except Exception:  # noqa: BLE001 - any failure only means "not a video either"
        return False


# The official v2v prefix: the first 32 frames of the clip, resampled to the model's fps (prefix_frame=32).
PREFIX_FRAMES = 32


def load_checked_video(source: Any, height: int, width: int, fps: int, keep_aspect: bool = False,
                       max_pixels: int = DEFAULT_MAX_INPUT_PIXELS, *, prefix_from: str = "start"):
    """The v2v prefix as uint8 (T, height, width, 3), cut and resized the same way whether a file or an array.

    Its first PREFIX_FRAMES frames (official), or with prefix_from="end" its last ones: a file's at `fps`, an
    array's as they are (an array is taken to be at the model's fps already).
    """
    if prefix_from not in ("start", "end"):
        raise InputError(f"prefix_from must be start or end, got {prefix_from!r}")
    import numpy as np

    from .io.video import is_still_image, load_video, probe_video, resize_frames

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"video file not found: {path}")
        try:
            still = is_still_image(path)
            info = probe_video(path)
        except (ValueError, OSError) as err:
            raise InputError(f"{path} is not a readable video ({err})") from None
        if still and not _is_readable_image(path):  # FFmpeg goes by the name: notes.png is "a picture" to it
            raise InputError(f"{path} is not a readable video (nor an image)")
        if still:
            raise InputError(f"{path} is a still image, not a video; give it as the i2v image (--image_path) "
                             f"or give a video to continue")
        if info.num_frames == 0:
            raise InputError(f"{path} has no video frames")
        if info.height * info.width > max_pixels:
            raise InputError(f"{path} has {info.width}x{info.height} frames, more than the {max_pixels} pixels "
                             f"an input frame may have")
        try:
            return load_video(path, height, width, fps, max_frames=PREFIX_FRAMES, keep_aspect=keep_aspect,
                              from_end=prefix_from == "end")
        except (ValueError, OSError) as err:
            raise InputError(f"{path} cannot be read as a video: {err}") from None
    if not isinstance(source, np.ndarray):
        raise InputError(f"video must be a file path or a uint8 (T, H, W, 3) array, got {type(source).__name__}")
    if source.ndim != 4 or source.shape[-1] != 3 or source.shape[0] < 1:
        raise InputError(f"a video array must be uint8 (T, H, W, 3), got shape {source.shape}")
    if source.dtype != np.uint8:
        raise InputError(f"a video array must hold uint8 pixels (0..255), got {source.dtype}")
    if source.shape[1] * source.shape[2] > max_pixels:
        raise InputError(f"the video frames are {source.shape[2]}x{source.shape[1]} pixels, more than the "
                         f"{max_pixels} an input frame may have")
    kept = source[-PREFIX_FRAMES:] if prefix_from == "end" else source[:PREFIX_FRAMES]
    return resize_frames(kept, height, width, keep_aspect=keep_aspect)


# ---------------------------------------------------------------------------------------------- files
def check_config_name(name: str | os.PathLike) -> None:
    """A --config_file that is a folder: say which JSON to give (the config loader would say "not found")."""
    path = Path(name).expanduser()
    if path.is_dir():
        inside = path / "config.json"
        hint = f"give its config JSON, {inside}" if inside.is_file() else "give a config JSON file or a preset name"
        raise InputError(f"--config_file {path} is a folder; {hint}")


# The arrays of the official special_tokens.npz that magi1 reads (sampling.special_tokens).
SPECIAL_TOKEN_ARRAYS = ("caption_token", "logo_token", "other_tokens")


def check_special_tokens_file(path: str | os.PathLike, name: str = "--special_tokens") -> None:
    """`name` (the CLI flag, or the Python argument) names an .npz with the official arrays (read from its zip
    index: no array is loaded)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name} {path}: no such file; give the official special_tokens.npz")
    try:
        with zipfile.ZipFile(path) as archive:
            names = {name.removesuffix(".npy") for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{name} {path} is not an .npz file ({err}); give the official "
                         f"special_tokens.npz") from None
    missing = [name for name in SPECIAL_TOKEN_ARRAYS if name not in names]
    if missing:
        raise InputError(f"{name} {path} lacks the array{'s' * (len(missing) > 1)} {', '.join(missing)} "
                         f"of the official special_tokens.npz")


# ---------------------------------------------------------------------------------------------- weights
def check_weights_present(config, *, text_encoder: bool = True, vae: bool = True) -> None:
    """Fail fast, before loading anything, when a folder the config names is missing."""
    from .checkpoint.layout import weight_dir
    from .checkpoint.packed_layout import refuse_packed_checkpoint

    r, e = config.runtime_config, config.engine_config
    if not r.load:
        raise MissingWeightsError("runtime_config.load is not set: point it at the checkpoint root folder "
                                  "(in the config, or with --set runtime_config.load=FOLDER)")
    folder = weight_dir(config.resolve_path(r.load), distill=e.distill, fp8_quant=e.fp8_quant)
    refuse_packed_checkpoint(folder)  # MAGI-1.1's stacked layout: named now, not as missing keys after loading
    if vae and not vae_present(config):
        raise MissingWeightsError(f"VAE folder {config.resolve_path(r.vae_pretrained)!r} "
                                  f"(runtime_config.vae_pretrained) has no config.json")
    if text_encoder and not t5_present(config):
        raise MissingWeightsError(f"text encoder folder {config.resolve_path(r.t5_pretrained)!r} "
                                  f"(runtime_config.t5_pretrained) does not exist")


def _resolved_or_none(config, value: str | None) -> str | None:
    try:
        return config.resolve_path(value)
    except MissingWeightsError:  # an hf:// folder not in the cache: absent, reported when first needed
        return None


def vae_present(config) -> bool:
    folder = _resolved_or_none(config, config.runtime_config.vae_pretrained)
    return bool(folder) and (Path(folder) / "config.json").is_file()


def t5_present(config) -> bool:
    folder = _resolved_or_none(config, config.runtime_config.t5_pretrained)
    return bool(folder) and Path(folder).is_dir()


# ---------------------------------------------------------------------------------------------- helpers
def _mode(mode: str | None, image: Any, video: Any, prefix_latents: Any) -> str:
    given = [name for name, value in (("image", image), ("video", video), ("prefix_latents", prefix_latents))
             if value is not None]
    if len(given) > 1:
        raise InputError(f"give one of an image (i2v), a video (v2v) or prefix_latents, not {' and '.join(given)}")
    if mode is None:
        if prefix_latents is not None:
            frames = tuple(getattr(prefix_latents, "shape", (0, 0, 0)))[2:3]
            return "i2v" if frames == (1,) else "v2v"
        return {"image": "i2v", "video": "v2v"}.get(given[0] if given else "", "t2v")
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {str(mode)[:40]!r}")
    needed = {"t2v": None, "i2v": "image", "v2v": "video"}[mode]
    if needed is None and given:
        raise InputError(f"t2v takes no {given[0]}; choose i2v for an image or v2v for a video")
    if needed is not None and not given:
        raise InputError(f"{mode} needs {'an image' if needed == 'image' else 'a video'}")
    if needed is not None and given[0] not in (needed, "prefix_latents"):
        raise InputError(f"{mode} needs {'an image' if needed == 'image' else 'a video'}, not {given[0]}")
    return mode


def _has_chunk_zero(chunk_prompts: Any) -> bool:
    if isinstance(chunk_prompts, Mapping):
        return 0 in chunk_prompts
    return isinstance(chunk_prompts, Sequence) and not isinstance(chunk_prompts, str) and len(chunk_prompts) > 0


def _check_chunk_prompts(chunk_prompts: Any, generated: int) -> None:
    """A chunk prompt for a chunk the run never makes would be dropped without a word: refuse it."""
    if chunk_prompts is None:
        return
    if isinstance(chunk_prompts, (str, bytes)):  # a list() of it would be one prompt per character
        raise InputError("chunk_prompts must be a list (one prompt per chunk) or a dict {first chunk: prompt}, "
                         "not a string; for one prompt for the whole video, pass prompt=")
    if not isinstance(chunk_prompts, Mapping):
        listed = chunk_prompts if hasattr(chunk_prompts, "__len__") else ()  # an iterator is not consumed here
        if len(listed) > generated:
            raise InputError(f"chunk_prompts lists {len(listed)} prompts, but this run generates {generated} "
                             f"chunk{'s' if generated != 1 else ''}; ask for more frames or give fewer prompts")
        return
    bad = [key for key in chunk_prompts if isinstance(key, bool) or not isinstance(key, int) or key < 0]
    if bad:
        raise InputError(f"chunk prompt keys must be chunk indices 0, 1, 2, ..., got {bad[0]!r}")
    beyond = sorted(key for key in chunk_prompts if key >= generated)
    if beyond:
        span = "chunk 0" if generated == 1 else f"chunks 0 to {generated - 1}"
        raise InputError(f"a chunk prompt is given for chunk {beyond[0]}, but this run generates {generated} "
                         f"chunk{'s' if generated != 1 else ''} ({span}); ask for more frames or drop it")


def latent_video_bytes(config, latent_frames: int) -> int:
    """Bytes of one float32 latent video of `latent_frames` frames at this config's size (a resume state's)."""
    h, w = config.latent_size
    return 4 * config.model_config.latent_channels * latent_frames * h * w


def _check_memory(latent_frames: int, config) -> None:
    """Refuse a video whose latent state alone cannot fit in this machine's memory (a typo like 10**9 frames)."""
    need = 3 * latent_video_bytes(config, latent_frames)  # noise + latent + saved state
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        r = config.runtime_config
        raise InputError(f"{r.num_frames} frames at {r.video_size_w}x{r.video_size_h} need {need / 2**30:.0f} GiB "
                         f"for the latent video alone, more than this machine's {have / 2**30:.0f} GiB; "
                         f"ask for fewer frames")


def _encoded_frames(video, fps: int) -> int:
    """Latent frames the VAE makes of these pixel frames (the official tiled encoder's rule)."""
    from .models.vae_tiling import TileSettings, TilingError, plan_encode_tiles

    frames, height, width = video.shape[:3]
    try:
        grid = plan_encode_tiles((1, 3, frames, height, width), TileSettings.for_fps(fps))
    except TilingError as err:
        raise InputError(f"the prefix video cannot be encoded: {err}") from None
    return grid.output_grid[0]
