"""LoRA methods of MagiPipeline, named as the brief and diffusers name them.

    pipe.load_lora("my_lora/", scale=0.8)          # several may be loaded; each gets a name (default: folder name)
    pipe.set_lora_scale(0.5)                         # one adapter (adapter_name=...) or all of them
    pipe.fuse_lora()                                 # merge into the weights: no per-step adapter cost
    pipe.unfuse_lora()                               # take them out again (the weights come back up to float rounding)
    pipe.unload_lora()                               # remove them; after fuse_lora() the fused weights stay

diffusers spellings work as well: load_lora_weights, set_adapters, get_active_adapters, unload_lora_weights.
A LoRA made for another model is refused with one sentence naming both architectures.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

from ..errors import InputError


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def parse_lora_spec(text: str) -> tuple[str, float]:
    """'DIR' or 'DIR:SCALE' (the CLI's --lora) -> (folder, scale); InputError in one sentence naming what is
    wrong with the spec (the one place for this rule: load_lora takes its scale as scale=, never after a ':').

    A folder whose own name holds a ':' is taken whole when it exists."""
    if not text.strip():
        raise InputError("--lora needs a folder: write DIR or DIR:SCALE, e.g. my_lora:0.8")
    head, sep, tail = text.rpartition(":")
    if not sep or Path(text).exists():
        return text, 1.0
    if not head:
        raise InputError(f"--lora {text!r} names no folder before the ':' (write DIR or DIR:SCALE, e.g. my_lora:0.8)")
    if not _NUMBER.fullmatch(tail.strip()) or not math.isfinite(float(tail)):
        raise InputError(f"--lora {text!r}: the scale after the ':' must be a finite number, got {tail!r} "
                         f"(write DIR or DIR:SCALE, e.g. {head}:0.8)")
    inner_head, inner_sep, inner_tail = head.rpartition(":")
    if inner_sep and _NUMBER.fullmatch(inner_tail.strip()) and not Path(head).exists():
        raise InputError(f"--lora {text!r} gives two scales: write one, e.g. {inner_head}:{tail}")
    return head, float(tail)


class LoraPipelineMixin:
    """Mixin for MagiPipeline (which provides `dit`)."""

    _lora_scales: dict | None = None
    _lora_sources: dict | None = None
    _lora_fused: bool = False
    _lora_baked: str = ""

    def load_lora(self, path: str | Path, *, scale: float = 1.0, adapter_name: str | None = None) -> str:
        """Add the LoRA in folder `path` (peft layout, as `magi1 train lora` writes) at `scale`; returns its name.

        Raises InputError (LoraMismatchError) in one sentence when the LoRA was made for another model.
        """
        from ..call_inputs import finite_number
        from .adapters import adapter_names, attach_lora, read_lora

        if self._lora_fused:
            raise InputError("LoRAs are fused into the weights: unfuse_lora() before loading another")
        scale = finite_number(scale, "the LoRA scale")
        if isinstance(path, (str, Path)) and not Path(path).exists():
            # Said here: the shared folder check words a missing 'DIR:SCALE' for the CLI's --lora.
            raise InputError(f"LoRA folder {path} does not exist" + _scale_hint(str(path)))
        lora = read_lora(path)
        name = adapter_name or _default_name(lora.folder, adapter_names(self.dit))
        attach_lora(self.dit, lora, name, scale=scale)
        self._lora_scales = dict(self._lora_scales or {}, **{name: scale})
        weights = lora.folder / "adapter_model.safetensors"
        stat = weights.stat()
        self._lora_sources = dict(self._lora_sources or {}, **{name: f"{weights.resolve()}:{stat.st_size}:"
                                                                     f"{stat.st_mtime_ns}"})
        return name

    def lora_fingerprint(self) -> str:
        """What the loaded LoRAs contribute to a run's identity (resume states): files, scales, fused or not."""
        baked = f"baked:{self._lora_baked};" if self._lora_baked else ""
        if not self._lora_scales:
            return baked
        sources = self._lora_sources or {}
        parts = [f"{name}={scale}@{sources.get(name, '')}" for name, scale in sorted(self._lora_scales.items())]
        return baked + "lora:" + ";".join(parts) + f";fused={self._lora_fused}"

    def set_lora_scale(self, scale: float, adapter_name: str | None = None) -> None:
        """Scale one loaded LoRA (or every one): 1 = as trained, 0 = the base model exactly."""
        from ..call_inputs import finite_number
        from .adapters import set_scale

        scale = finite_number(scale, "the LoRA scale")  # NaN made an all-black video
        names = self._lora_names(adapter_name)
        for name in names:
            set_scale(self.dit, name, scale)
            self._lora_scales[name] = scale

    def fuse_lora(self, lora_scale: float | None = None, adapter_names: Sequence[str] | None = None) -> None:
        """Merge the active LoRAs (at their scales, times lora_scale if given) into the DiT's weights.

        unfuse_lora() takes them out again; the weights come back up to float rounding (in float32 about 1e-8
        of a weight), not bit for bit: that would take a copy of every adapted weight.
        """
        from ..call_inputs import finite_number
        from .adapters import fuse

        self._refuse_while_offloaded("fuse_lora")
        names = list(adapter_names) if adapter_names else self._lora_names(None)
        if lora_scale is not None:
            factor = finite_number(lora_scale, "lora_scale")
            for name in names:
                self.set_lora_scale(self._lora_scales[name] * factor, name)
        fuse(self.dit, names)
        self._lora_fused = True

    def unfuse_lora(self) -> None:
        from .adapters import unfuse

        self._refuse_while_offloaded("unfuse_lora")
        unfuse(self.dit)
        self._lora_fused = False

    def unload_lora(self, adapter_name: str | None = None) -> None:
        """Remove one LoRA or all; fused ones stay in the weights (diffusers: fuse, then unload, to bake it in)."""
        from .adapters import adapter_names, remove_adapters

        names = self._lora_names(adapter_name) if adapter_name else adapter_names(self.dit)
        if not names:
            return
        if self._lora_fused:  # the fused weights stay: the model is the base one no longer
            self._lora_baked = (self._lora_baked or "") + self.lora_fingerprint()
        remove_adapters(self.dit, names)
        for name in names:
            (self._lora_scales or {}).pop(name, None)
            (self._lora_sources or {}).pop(name, None)
        if not adapter_names(self.dit):
            self._lora_fused = False

    @property
    def lora_scales(self) -> dict[str, float]:
        """{adapter name: scale} of the loaded LoRAs."""
        return dict(self._lora_scales or {})

    # diffusers spellings
    def load_lora_weights(self, path: str | Path, adapter_name: str | None = None, **kwargs) -> str:
        return self.load_lora(path, adapter_name=adapter_name, scale=kwargs.pop("scale", 1.0))

    def set_adapters(self, adapter_names: str | Sequence[str], adapter_weights=None) -> None:
        """Activate exactly these adapters, optionally with a weight (scale) each (diffusers)."""
        from .adapters import set_active

        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for name in names:
            self._lora_names(name)
        set_active(self.dit, names)
        if adapter_weights is not None:
            weights = adapter_weights if isinstance(adapter_weights, (list, tuple)) else [adapter_weights] * len(names)
            for name, weight in zip(names, weights):
                self.set_lora_scale(weight, name)

    def get_active_adapters(self) -> list[str]:
        from .adapters import lora_layers

        for _, layer in lora_layers(self.dit):
            return list(layer.active_adapters)
        return []

    def unload_lora_weights(self) -> None:
        self.unload_lora()

    def save_pretrained(self, save_directory, **kwargs):
        from .adapters import adapter_names

        if adapter_names(self.dit):
            raise InputError("a LoRA is loaded: unload_lora() first to save the base model, or fuse_lora() and "
                             "then unload_lora() to save the model with the LoRA baked in")
        return super().save_pretrained(save_directory, **kwargs)

    def _refuse_while_offloaded(self, what: str) -> None:
        """Fusing rewrites the weights, which wait in host memory while offloaded (it failed on the placeholders
        the layers hold then, with a size mismatch)."""
        mode = getattr(self, "offload_mode", "none")
        if mode not in (None, "none"):
            raise InputError(f"{what} rewrites the DiT's weights, which the {mode} offload keeps in host memory: "
                             f"call it before enable_model_cpu_offload / enable_block_offload, or "
                             f"pipe.enable_offload('none') first")

    def _lora_names(self, adapter_name: str | None) -> list[str]:
        loaded = list(self._lora_scales or {})
        if adapter_name is None:
            if not loaded:
                raise InputError("no LoRA is loaded: load_lora(path) first")
            return loaded
        if adapter_name not in loaded:
            raise InputError(f"no LoRA named {adapter_name!r} is loaded (loaded: {', '.join(loaded) or 'none'})")
        return [adapter_name]


def _scale_hint(path: str) -> str:
    """'my_lora:0.8' given to load_lora, which takes the scale as scale=."""
    head, sep, tail = path.rpartition(":")
    if sep and head and Path(head).is_dir() and _NUMBER.fullmatch(tail.strip()):
        return f" ({head} does: load_lora takes the scale as scale={tail.strip()})"
    return ""


def _default_name(folder: Path, taken: list[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", folder.resolve().name) or "lora"
    name, index = base, 2
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    return name


# ---------------------------------------------------------------------------------------------- `magi1 generate`
def add_generate_lora_options(parser) -> None:
    parser.add_argument("--lora", action="append", default=[], metavar="DIR[:SCALE]",
                        help="apply the LoRA in DIR (from `magi1 train lora`) at SCALE (default 1); repeatable")
    parser.add_argument("--fuse_lora", action="store_true",
                        help="merge the LoRAs into the weights before generating (faster steps, same video)")


def check_lora_options(args, config) -> None:
    """Before any weights load: every --lora folder exists, is a LoRA, and was made for this config's DiT."""
    from .adapters import check_lora_folder

    if args.fuse_lora and not args.lora:
        raise InputError("--fuse_lora needs at least one --lora")
    if args.lora and config.engine_config.fp8_quant:
        raise InputError("LoRA works on the bf16 weights; this is an FP8-quantized checkpoint (use the same "
                         "variant without _quant)")
    for spec in args.lora:
        folder, _ = parse_lora_spec(spec)
        check_lora_folder(folder, config.model_config)


def apply_lora_options(pipe, args) -> None:
    for spec in args.lora:
        folder, scale = parse_lora_spec(spec)
        pipe.load_lora(folder, scale=scale)
    if args.lora and args.fuse_lora:
        pipe.fuse_lora()
