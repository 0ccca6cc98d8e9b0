"""LoRA adapters on the MAGI-1 DiT, made by `peft`: add, save, read, check, attach, scale, fuse, remove.

A LoRA folder is peft's own layout, so `peft.PeftModel.from_pretrained(dit, folder)` reads it too:

    LORA_DIR/adapter_config.json          peft's LoraConfig (rank, alpha, target modules, ...)
    LORA_DIR/adapter_model.safetensors    lora_A / lora_B weights, keys `base_model.model.<module>.lora_A.weight`;
                                          its metadata holds the DiT's shapes the LoRA was made for ("magi1.model")

The DiT's call sites compute the base linears themselves and add the adapters' outputs (models.adapters), so
adapters change nothing but their own contribution; peft's wrappers are used for their bookkeeping (adapters
per layer, scales, merge / unmerge). Adapter weights are float32 masters whatever the DiT's dtype.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from ..errors import InputError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
SIGNATURE_KEY = "magi1.model"

# Module-name suffixes (peft `target_modules`) of each group a user may name.
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "attn": ("linear_qkv.q", "linear_qkv.qx", "linear_qkv.k", "linear_qkv.v", "linear_kv_xattn", "linear_proj"),
    "mlp": ("linear_fc1", "linear_fc2"),
    "adaln": ("ada_modulate_layer.proj.0",),
}
DEFAULT_TARGETS = ("attn", "mlp")
# The architecture fields whose values fix every adapted linear's shape.
SIGNATURE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                    "kv_channels", "caption_channels", "xattn_cond_hidden_ratio", "cond_hidden_ratio",
                    "cond_gating_ratio", "gated_linear_unit")


class LoraMismatchError(InputError):
    """A LoRA that does not fit the loaded model (made for another architecture, or a broken file)."""


def _peft():
    try:
        import peft
    except ImportError:
        raise InputError("LoRA needs the peft package: pip install 'magi1[train]' (or pip install peft)") from None
    return peft


# ---------------------------------------------------------------------------------------------- settings
def resolve_targets(spec: str | Sequence[str] | None) -> list[str]:
    """'attn,mlp' / ['attn', 'linear_fc1'] -> module-name suffixes; group names expand, others pass as they are."""
    items = DEFAULT_TARGETS if spec is None else (spec.split(",") if isinstance(spec, str) else spec)
    names: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        for name in TARGET_GROUPS.get(item, (item,)):
            if name not in names:
                names.append(name)
    if not names:
        raise InputError("name at least one target module group (attn, mlp, adaln) or module name")
    return names


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: float | None = None              # None: alpha = rank (scale 1 at load)
    dropout: float = 0.0
    targets: Sequence[str] = DEFAULT_TARGETS  # groups (attn, mlp, adaln) or module-name suffixes

    def validate(self) -> "LoraSettings":
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise InputError(f"the LoRA rank must be a whole number >= 1, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise InputError(f"the LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"the LoRA dropout must be in [0, 1), got {self.dropout!r}")
        resolve_targets(self.targets)
        return self

    def peft_config(self, base_model: str | None = None):
        peft = _peft()
        return peft.LoraConfig(r=self.rank, lora_alpha=self.alpha if self.alpha is not None else self.rank,
                               lora_dropout=self.dropout, target_modules=resolve_targets(self.targets),
                               bias="none", base_model_name_or_path=base_model)


# ---------------------------------------------------------------------------------------------- model shapes
def model_signature(model_config, *, name: str | None = None) -> dict:
    """The architecture a LoRA is made for: the fields that fix the adapted linears' shapes, and a display name."""
    signature = {key: getattr(model_config, key) for key in SIGNATURE_FIELDS}
    signature["name"] = name
    return signature


def describe_signature(signature: dict) -> str:
    name = f" ({signature['name']})" if signature.get("name") else ""
    return f"{signature['num_layers']} layers of width {signature['hidden_size']}, MLP {signature['ffn_hidden_size']}{name}"


def check_signature(saved: dict | None, model_config, *, what: str) -> None:
    """Raise LoraMismatchError, in one sentence, when `saved` describes another architecture than model_config."""
    if not saved:
        return
    here = model_signature(model_config)
    different = [key for key in SIGNATURE_FIELDS if key in saved and saved[key] != here[key]]
    if different:
        raise LoraMismatchError(
            f"{what} was made for a DiT with {describe_signature(saved)}, not for this model's "
            f"{describe_signature(here)} ({', '.join(different)} differ): load it into the model it was trained on")


def _is_adaptable(module: nn.Module) -> bool:
    return type(module) is nn.Linear


def refuse_unadaptable(model: nn.Module) -> None:
    """LoRA needs plain linears; FP8-quantized checkpoints store theirs in a format peft cannot wrap."""
    if getattr(model, "fp8_quant", False):
        raise InputError("LoRA works on the bf16 weights; this is an FP8-quantized checkpoint (use the same "
                         "variant without _quant, e.g. 4.5B_distill instead of 4.5B_distill_quant)")
    if getattr(model, "parallel", None) is not None and getattr(model.parallel, "pp_size", 1) > 1:
        raise InputError("LoRA is not available with pipeline parallelism (pp_size > 1); use context parallel")


# ---------------------------------------------------------------------------------------------- adding
def lora_layers(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """(module name, peft LoraLayer) of every wrapped linear."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            yield name, module


def adapter_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    for _, layer in lora_layers(model):
        for name in layer.lora_A.keys():
            if name not in names:
                names.append(name)
    return names


def _as_float32_masters(model: nn.Module, adapter_name: str) -> None:
    """peft creates adapter weights in the base weight's dtype; keep them float32 (precise updates, exact merge)."""
    for _, layer in lora_layers(model):
        for table in (layer.lora_A, layer.lora_B):
            if adapter_name in table:
                table[adapter_name].float()


def add_lora(model: nn.Module, settings: LoraSettings, adapter_name: str = "default", *,
             base_model: str | None = None, seed: int = 0) -> list[nn.Parameter]:
    """Inject a fresh adapter (B = 0: the model's function is unchanged) and return its trainable parameters.

    A is drawn from a generator seeded with `seed` (peft draws from torch's global one), so a run is
    reproducible. Every other parameter of the model is frozen.
    """
    peft = _peft()
    settings.validate()
    refuse_unadaptable(model)
    targets = resolve_targets(settings.targets)
    _check_targets_exist(model, targets)
    if adapter_name in adapter_names(model):
        raise InputError(f"an adapter named {adapter_name!r} is already loaded")
    with torch.random.fork_rng(devices=[]):  # adapters are built on the CPU, then moved beside their linears
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(settings.peft_config(base_model), model, adapter_name=adapter_name)
    _as_float32_masters(model, adapter_name)
    set_active(model, adapter_names(model))
    model.requires_grad_(False)
    params = []
    for _, layer in lora_layers(model):
        for table in (layer.lora_A, layer.lora_B):
            if adapter_name in table:
                for p in table[adapter_name].parameters():
                    p.requires_grad_(True)
                    params.append(p)
    return params


def _check_targets_exist(model: nn.Module, targets: list[str]) -> None:
    refuse_missing_targets([n for n, m in model.named_modules() if _is_adaptable(m)], targets)


def refuse_missing_targets(linear_names: Sequence[str], targets: list[str]) -> None:
    """One sentence when a target names none of `linear_names` (the DiT's adaptable linears, full names)."""
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear_names)]
    if missing:
        known = sorted({n.split(".", 3)[-1] for n in linear_names if n.startswith("videodit_blocks.layers.")})
        raise InputError(f"no linear of the DiT is named {', '.join(missing)}; adaptable names: "
                         f"{', '.join(known[:12])} (or the groups {', '.join(TARGET_GROUPS)})")


def set_active(model: nn.Module, names: Sequence[str]) -> None:
    """Make exactly `names` the adapters that act (each wrapper keeps the ones it holds)."""
    for _, layer in lora_layers(model):
        layer.set_adapter([n for n in names if n in layer.lora_A], inference_mode=True)  # frozen; trainers unfreeze


def set_scale(model: nn.Module, adapter_name: str, scale: float) -> None:
    """Scale one adapter (1 = as trained, 0 = off) in every layer."""
    for _, layer in lora_layers(model):
        if adapter_name in layer.lora_A:
            if adapter_name in layer.merged_adapters:
                raise InputError("the LoRA is fused into the weights: unfuse_lora() before changing its scale")
            layer.set_scale(adapter_name, float(scale))


# ---------------------------------------------------------------------------------------------- saving
def lora_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights with peft's on-disk keys (`base_model.model.<module>.lora_A.weight`)."""
    state = {}
    for module_name, layer in lora_layers(model):
        if adapter_name in layer.lora_A:
            for part in ("lora_A", "lora_B"):
                weight = getattr(layer, part)[adapter_name].weight
                state[f"{PEFT_PREFIX}{module_name}.{part}.weight"] = weight.detach().float().cpu().contiguous()
    if not state:
        raise InputError(f"no adapter named {adapter_name!r} is loaded")
    return state


def save_lora(model: nn.Module, folder: str | Path, adapter_name: str = "default", *, model_name: str | None = None,
              metadata: dict | None = None) -> Path:
    """Write the adapter in peft's layout (adapter_config.json + adapter_model.safetensors); returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layer = next((layer for _, layer in lora_layers(model) if adapter_name in layer.lora_A), None)
    if layer is None:
        raise InputError(f"no adapter named {adapter_name!r} is loaded")
    config = model.peft_config[adapter_name]
    config.base_model_name_or_path = model_name
    config.inference_mode = True
    header = {"format": "pt", SIGNATURE_KEY: json.dumps(model_signature(model.config, name=model_name))}
    header.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()})
    tmp = folder / (ADAPTER_WEIGHTS + ".tmp")
    save_file(lora_state_dict(model, adapter_name), str(tmp), metadata=header)
    tmp.replace(folder / ADAPTER_WEIGHTS)
    config.save_pretrained(str(folder))
    return folder


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class LoraFile:
    """A LoRA folder read from disk, not yet attached to a model."""

    folder: Path
    config: object                           # peft.LoraConfig
    tensors: dict[str, torch.Tensor]         # module name -> {"lora_A.weight" ...} flattened: "<module>.lora_A.weight"
    signature: dict | None
    metadata: dict = field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        return sorted({key.rsplit(".", 2)[0] for key in self.tensors})


def lora_folder(given: str | Path) -> Path:
    """The LoRA folder a path names: itself, or the folder of its .safetensors file; InputError otherwise."""
    path = Path(given)
    if path.is_file() and path.suffix == ".safetensors":
        return path.parent
    if path.is_file():  # e.g. a script: "folder does not exist" would contradict what the user sees
        raise InputError(f"{path} is a file, not a LoRA: give the LoRA's folder (with {ADAPTER_CONFIG} and "
                         f"{ADAPTER_WEIGHTS}, as `magi1 train lora` writes) or its {ADAPTER_WEIGHTS} file")
    if not path.is_dir():
        raise InputError(_missing_folder_message(str(given)))
    return path


def _missing_folder_message(given: str) -> str:
    """'DIR:SCALE' with a scale that is not a number (or no DIR) reaches here as one missing folder name:
    say what is wrong with the spec rather than that a folder called 'my_lora:abc' is missing."""
    head, sep, tail = given.rpartition(":")
    if sep and not head:
        return f"LoRA {given!r} names no folder before the ':' (write DIR or DIR:SCALE, e.g. my_lora:0.8)"
    if sep and Path(head).is_dir():
        try:
            number = math.isfinite(float(tail))
        except ValueError:
            number = False
        if number:  # 'my_lora:0.5:0.5': the last scale was taken, this is what is left
            return f"LoRA folder {given} does not exist ({head} does: give it one scale, e.g. {head}:{tail})"
        return (f"LoRA {given!r}: the scale after the ':' must be a finite number, got {tail!r} "
                f"(e.g. {head}:0.8)")
    return f"LoRA folder {given} does not exist"


def read_lora(folder: str | Path) -> LoraFile:
    """Read a LoRA folder (or the .safetensors file inside it); one-sentence InputError when it is not one."""
    from safetensors import safe_open

    path = lora_folder(folder)
    weights, config_path = path / ADAPTER_WEIGHTS, path / ADAPTER_CONFIG
    if not weights.is_file() or not config_path.is_file():
        raise InputError(f"{path} is not a LoRA folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} "
                         f"(what `magi1 train lora` writes)")
    peft = _peft()
    try:
        config = peft.LoraConfig.from_pretrained(str(path))
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        raise LoraMismatchError(f"{config_path} is not a readable LoRA config ({err})") from None
    if getattr(config, "use_dora", False) or getattr(config, "peft_type", None) not in (None, peft.PeftType.LORA):
        raise LoraMismatchError(f"{path} holds a {config.peft_type} / DoRA adapter; magi1 loads plain LoRA only")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key: handle.get_tensor(key)
                       for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise LoraMismatchError(f"{weights} is not a readable safetensors file ({err})") from None
    signature = json.loads(metadata[SIGNATURE_KEY]) if SIGNATURE_KEY in metadata else None
    return LoraFile(path, config, tensors, signature, metadata)


_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


def check_lora_fits(lora: LoraFile, model: nn.Module) -> None:
    """One-sentence LoraMismatchError unless every adapter weight has a linear of the right shape in `model`."""
    what = f"the LoRA {lora.folder}"
    check_signature(lora.signature, model.config, what=what)
    modules = dict(model.named_modules())
    shapes: dict[str, dict[str, tuple]] = {}
    for key, tensor in lora.tensors.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise LoraMismatchError(f"{what} holds a weight {key!r} that is not a LoRA A/B matrix")
        shapes.setdefault(match["module"], {})[match["part"]] = tuple(tensor.shape)
    if not shapes:
        raise LoraMismatchError(f"{what} holds no weights")
    for name, parts in shapes.items():
        target = modules.get(name)
        base = getattr(target, "base_layer", target)
        while getattr(base, "base_layer", None) is not None:
            base = base.base_layer
        if base is None or not isinstance(base, nn.Linear):
            raise LoraMismatchError(f"{what} adapts {name}, which this model does not have as a linear: it was made "
                                    f"for another model")
        if set(parts) != {"lora_A", "lora_B"}:
            raise LoraMismatchError(f"{what} has only {', '.join(parts)} for {name}: the file is incomplete")
        a, b = parts["lora_A"], parts["lora_B"]
        if a[1] != base.in_features or b[0] != base.out_features or a[0] != b[1]:
            raise LoraMismatchError(
                f"{what} expects {name} to map {a[1]} to {b[0]} features, this model's maps {base.in_features} to "
                f"{base.out_features}: it was made for another model")


def attach_lora(model: nn.Module, lora: LoraFile, adapter_name: str, *, scale: float = 1.0) -> None:
    """Check `lora` against the model, inject it under `adapter_name` and load its weights (float32)."""
    peft = _peft()
    refuse_unadaptable(model)
    check_lora_fits(lora, model)
    if adapter_name in adapter_names(model):
        raise InputError(f"an adapter named {adapter_name!r} is already loaded")
    config = lora.config
    config.inference_mode = True
    targets = sorted({_LORA_KEY.match(k)["module"] for k in lora.tensors})
    config.target_modules = targets  # exactly the modules the file adapts (full names match as suffixes)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):  # peft draws A at random (overwritten below): leave the caller's RNG
        peft.inject_adapter_in_model(config, model, adapter_name=adapter_name)
    _as_float32_masters(model, adapter_name)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, tensor in lora.tensors.items():
            match = _LORA_KEY.match(key)
            layer = modules[match["module"]]
            getattr(layer, match["part"])[adapter_name].weight.copy_(tensor.to(device=device, dtype=torch.float32))
    for _, layer in lora_layers(model):
        for table in (layer.lora_A, layer.lora_B):
            if adapter_name in table:
                table[adapter_name].requires_grad_(False)
    set_active(model, adapter_names(model))
    set_scale(model, adapter_name, scale)


# ---------------------------------------------------------------------------------------------- fuse / remove
def fuse(model: nn.Module, names: Sequence[str]) -> None:
    """Merge the named adapters (at their current scales) into the base weights: no adapter cost per step."""
    for _, layer in lora_layers(model):
        held = [n for n in names if n in layer.lora_A and n not in layer.merged_adapters]
        if held:
            layer.merge(adapter_names=held)


def unfuse(model: nn.Module) -> None:
    """Take merged adapters back out of the base weights (up to float rounding: W + d - d is not always W)."""
    for _, layer in lora_layers(model):
        if layer.merged_adapters:
            layer.unmerge()


def remove_adapters(model: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    """Delete adapters (all by default). Merged ones stay in the weights (diffusers: fuse, then unload, bakes it).

    Wrappers left without adapters are replaced by their base linears, so the model's state dict has its
    official keys again. Returns the names removed.
    """
    present = adapter_names(model)
    names = present if names is None else list(names)
    unknown = [n for n in names if n not in present]
    if unknown:
        raise InputError(f"no adapter named {', '.join(map(repr, unknown))} is loaded (loaded: "
                         f"{', '.join(present) or 'none'})")
    modules = dict(model.named_modules())
    for module_name, layer in list(lora_layers(model)):
        layer.set_adapter([n for n in layer.active_adapters if n not in names], inference_mode=True)
        for name in names:
            if name in layer.lora_A:
                if name in layer.merged_adapters:
                    layer.merged_adapters.remove(name)  # baked into the base weight: forget it, keep the weight
                layer.delete_adapter(name)
        if not layer.lora_A:
            parent_name, _, child = module_name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, child, layer.get_base_layer())
    left = adapter_names(model)
    set_active(model, left)
    configs = getattr(model, "peft_config", None)
    if isinstance(configs, dict):
        for name in names:
            configs.pop(name, None)
        if not configs:
            del model.peft_config
    return names


def check_lora_folder(folder: str | Path, model_config) -> None:
    """The checks that need neither peft nor the model: the files are there and the shapes are this config's."""
    from safetensors import safe_open

    path = lora_folder(folder)
    weights, config_path = path / ADAPTER_WEIGHTS, path / ADAPTER_CONFIG
    if not weights.is_file() or not config_path.is_file():
        raise InputError(f"{path} is not a LoRA folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} "
                         f"(what `magi1 train lora` writes)")
    try:
        json.loads(config_path.read_text())
        with safe_open(str(weights), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as err:  # JSON or safetensors errors of a damaged file
        raise LoraMismatchError(f"{path} is not a readable LoRA ({err})") from None
    signature = json.loads(metadata[SIGNATURE_KEY]) if SIGNATURE_KEY in metadata else None
    check_signature(signature, model_config, what=f"the LoRA {path}")
