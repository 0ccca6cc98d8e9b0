"""Configuration: the official MAGI-1 config JSON, read unchanged, as three dataclasses.

An official file has three sections, `model_config`, `runtime_config` and `engine_config`; every field
of each must be present (the official loader insists, and so do we, unless `strict=False`). Unknown keys
are an error that names the closest valid key. The six official variants ship as presets:
`magi1.config.load_config("4.5B_base")`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

PRESET_NAMES = (
    "4.5B_base",
    "4.5B_distill",
    "4.5B_distill_quant",
    "24B_base",
    "24B_distill",
    "24B_distill_quant",
    "demo",
    "demo_distill",
)


class ConfigError(ValueError):
    """A config file or override that cannot describe a valid MAGI-1 run."""


@dataclass
class ModelConfig:
    model_name: str = "videodit_ardf"
    num_layers: int = 34
    hidden_size: int = 3072
    ffn_hidden_size: int = 12288
    num_attention_heads: int = 24
    num_query_groups: int = 8
    kv_channels: int = 128
    layernorm_epsilon: float = 1e-6
    apply_layernorm_1p: bool = True
    x_rescale_factor: float = 1.0
    half_channel_vae: bool = False
    params_dtype: str = "torch.bfloat16"
    patch_size: int = 2
    t_patch_size: int = 1
    in_channels: int = 16
    out_channels: int = 16
    cond_hidden_ratio: float = 0.25
    caption_channels: int = 4096
    caption_max_length: int = 800
    xattn_cond_hidden_ratio: float = 1.0
    cond_gating_ratio: float = 1.0
    gated_linear_unit: bool = False

    # Derived widths, named once.
    @property
    def cond_hidden_size(self) -> int:
        return int(self.hidden_size * self.cond_hidden_ratio)

    @property
    def xattn_hidden_size(self) -> int:
        return int(self.hidden_size * self.xattn_cond_hidden_ratio)

    @property
    def rope_dim(self) -> int:
        """Rotary width per head: the official code uses hidden // heads, not kv_channels."""
        return self.hidden_size // self.num_attention_heads

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latent the model reads and writes (before the half-channel duplication)."""
        return self.out_channels // 2 if self.half_channel_vae else self.out_channels


@dataclass
class RuntimeConfig:
    cfg_number: int = 3
    cfg_t_range: list = field(default_factory=lambda: [0.0, 0.0217, 0.1, 0.3, 0.999])
    prev_chunk_scales: list = field(default_factory=lambda: [1.5, 1.5, 1.5, 1.0, 1.0])
    text_scales: list = field(default_factory=lambda: [7.5, 7.5, 7.5, 0.0, 0.0])
    noise2clean_kvrange: list = field(default_factory=lambda: [5, 4, 3, 2])
    clean_chunk_kvrange: int = 1
    clean_t: float = 0.9999
    seed: int = 1234
    num_frames: int = 96
    video_size_h: int = 720
    video_size_w: int = 720
    num_steps: int = 64
    window_size: int = 4
    fps: int = 24
    chunk_width: int = 6
    load: str | None = None
    t5_pretrained: str | None = None
    t5_device: str = "cpu"
    vae_pretrained: str | None = None
    scale_factor: float = 0.18215
    temporal_downsample_factor: int = 4


@dataclass
class EngineConfig:
    distributed_backend: str = "nccl"
    distributed_timeout_minutes: int = 15
    pp_size: int = 1
    cp_size: int = 1
    cp_strategy: str = "none"
    ulysses_overlap_degree: int = 1
    fp8_quant: bool = False
    distill_nearly_clean_chunk_threshold: float = 0.3
    shortcut_mode: str = "8,16,16"
    distill: bool = False
    kv_offload: bool = False
    enable_cuda_graph: bool = False


SECTIONS = {"model_config": ModelConfig, "runtime_config": RuntimeConfig, "engine_config": EngineConfig}

# Keys that magi1 understands beyond the official ones; they may be absent from official files.
OPTIONAL_KEYS: dict[str, set[str]] = {"model_config": set(), "runtime_config": set(), "engine_config": set()}
# Keys that may be absent even in strict mode (the official loader fills them from code).
_PATH_KEYS = {"load", "t5_pretrained", "vae_pretrained"}


@dataclass
class MagiConfig:
    model_config: ModelConfig = field(default_factory=ModelConfig)
    runtime_config: RuntimeConfig = field(default_factory=RuntimeConfig)
    engine_config: EngineConfig = field(default_factory=EngineConfig)
    # Where the JSON came from: relative paths inside it are resolved against this folder.
    source_dir: str | None = field(default=None, compare=False)

    # ---------------------------------------------------------------- reading and writing
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = True, source_dir: str | None = None) -> "MagiConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        unknown = [k for k in data if k not in SECTIONS]
        if unknown:
            raise ConfigError(_unknown_message("top level", unknown[0], SECTIONS))
        missing_sections = [name for name in SECTIONS if name not in data]
        if missing_sections and strict:
            raise ConfigError(f"config is missing the section(s) {', '.join(missing_sections)}")
        parts = {}
        for name, klass in SECTIONS.items():
            parts[name] = _build_section(name, klass, data.get(name, {}), strict=strict)
        config = cls(**parts, source_dir=source_dir)
        config.validate()
        return config

    @classmethod
    def from_json(cls, path: str | Path, *, strict: bool = True) -> "MagiConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from None
        try:
            return cls.from_dict(data, strict=strict, source_dir=str(path.resolve().parent))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=4) + "\n")

    def replace(self, **overrides: Any) -> "MagiConfig":
        """A copy with overrides given as `field=value` or `section.field=value` (validated)."""
        data = self.to_dict()
        for key, value in overrides.items():
            section, name = _locate(key)
            data[section][name] = value
        return MagiConfig.from_dict(data, source_dir=self.source_dir)

    def with_overrides(self, assignments: list[str]) -> "MagiConfig":
        """Apply command-line style overrides: ['runtime_config.num_steps=8', 'seed=3', ...]."""
        parsed: dict[str, Any] = {}
        for item in assignments:
            if item.strip() == "help":  # `--set help`: the list an unknown key's message points to
                raise ConfigError(f"the keys --set takes (SECTION.KEY=VALUE or KEY=VALUE): {_every_key()}")
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value (`--set help` lists the keys)")
            key, raw = item.split("=", 1)
            if not key.strip():
                raise ConfigError(f"override {item!r} names no key: write KEY=VALUE, e.g. runtime_config.num_steps=8 "
                                  f"(`--set help` lists the keys)")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            parsed[key.strip()] = value
        return self.replace(**parsed)

    def resolve_path(self, value: str | None) -> str | None:
        """A path from the JSON, relative to the JSON's own folder (the official files use ./downloads/...).

        `hf://owner/name/path` names a folder of a Hugging Face repository: its place in the local cache
        (the presets point there; `magi1 download` fills it). Missing from the cache: MissingWeightsError.
        """
        if value is None:
            return None
        if value.startswith("hf://"):
            from .hub import resolve_hub_uri

            return resolve_hub_uri(value)
        path = Path(value).expanduser()
        if not path.is_absolute() and self.source_dir is not None:
            candidate = Path(self.source_dir) / path
            if candidate.exists() or not path.exists():
                return str(candidate)
        return str(path)

    # ---------------------------------------------------------------- derived values
    @property
    def latent_size(self) -> tuple[int, int]:
        r = self.runtime_config
        return r.video_size_h // 8, r.video_size_w // 8

    @property
    def tokens_per_chunk(self) -> int:
        m, r = self.model_config, self.runtime_config
        h, w = self.latent_size
        return r.chunk_width * (h // m.patch_size) * (w // m.patch_size)

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        m, r, e = self.model_config, self.runtime_config, self.engine_config
        problems: list[str] = []

        def need(cond: bool, message: str) -> None:
            if not cond:
                problems.append(message)

        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                     "kv_channels", "patch_size", "t_patch_size", "in_channels", "out_channels",
                     "caption_channels", "caption_max_length"):
            need(getattr(m, name) > 0, f"model_config.{name} must be positive, got {getattr(m, name)}")
        if m.num_attention_heads > 0 and m.num_query_groups > 0:
            need(m.num_attention_heads % m.num_query_groups == 0,
                 f"model_config.num_attention_heads ({m.num_attention_heads}) must be a multiple of "
                 f"num_query_groups ({m.num_query_groups})")
            need(m.hidden_size % m.num_attention_heads == 0,
                 f"model_config.hidden_size ({m.hidden_size}) must be divisible by num_attention_heads "
                 f"({m.num_attention_heads})")
            need(m.rope_dim % 8 == 0 and m.rope_dim <= m.kv_channels,
                 f"rotary width hidden_size/heads = {m.rope_dim} must be a multiple of 8 and at most kv_channels "
                 f"({m.kv_channels})")
            need((2 * m.num_attention_heads * m.kv_channels) % 16 == 0 and m.num_attention_heads * m.kv_channels % 8 == 0,
                 "num_attention_heads * kv_channels must be a multiple of 8 (the output projection interleave)")
        if m.half_channel_vae:
            need(m.in_channels == m.out_channels and m.in_channels % 2 == 0,
                 "half_channel_vae needs in_channels == out_channels, an even number (16 latent channels doubled)")
        need(m.x_rescale_factor > 0, f"model_config.x_rescale_factor must be positive, got {m.x_rescale_factor}")
        need(m.cond_hidden_size > 0, "model_config.cond_hidden_ratio gives a zero-width condition")
        need(m.layernorm_epsilon > 0, "model_config.layernorm_epsilon must be positive")
        try:
            from .runtime import canonical_dtype_name

            canonical_dtype_name(m.params_dtype)
        except ValueError as err:
            problems.append(f"model_config.params_dtype: {err}")

        # runtime
        need(r.cfg_number in (1, 3), f"runtime_config.cfg_number must be 1 or 3, got {r.cfg_number}")
        if e.fp8_quant or e.distill:
            need(r.cfg_number == 1, f"cfg_number must be 1 when distill or fp8_quant is on (got {r.cfg_number})")
        else:
            need(r.cfg_number == 3, f"cfg_number must be 3 for a base (non-distill, non-fp8) model (got {r.cfg_number})")
        n_buckets = len(r.cfg_t_range)
        need(n_buckets >= 1 and list(r.cfg_t_range) == sorted(r.cfg_t_range),
             "runtime_config.cfg_t_range must be a non-empty ascending list")
        need(len(r.prev_chunk_scales) == n_buckets and len(r.text_scales) == n_buckets,
             f"prev_chunk_scales ({len(r.prev_chunk_scales)}) and text_scales ({len(r.text_scales)}) must have one "
             f"entry per cfg_t_range edge ({n_buckets})")
        for size_name in ("video_size_h", "video_size_w"):
            size = getattr(r, size_name)
            need(isinstance(size, int) and size > 0 and size % 16 == 0,
                 f"runtime_config.{size_name} must be a positive multiple of 16 (8x VAE, 2x2 patches), got {size}")
        need(r.num_frames > 0, f"runtime_config.num_frames must be positive, got {r.num_frames}")
        need(r.chunk_width > 0, "runtime_config.chunk_width must be positive")
        need(r.window_size > 0, "runtime_config.window_size must be positive")
        need(r.num_steps > 0, "runtime_config.num_steps must be positive")
        if r.window_size > 0 and r.num_steps > 0:
            need(r.num_steps % r.window_size == 0,
                 f"num_steps ({r.num_steps}) must be divisible by window_size ({r.window_size})")
            if r.noise2clean_kvrange:
                need(r.num_steps % len(r.noise2clean_kvrange) == 0,
                     f"num_steps ({r.num_steps}) must be divisible by len(noise2clean_kvrange) "
                     f"({len(r.noise2clean_kvrange)})")
        need(all(int(k) >= 1 for k in r.noise2clean_kvrange), "noise2clean_kvrange entries must be >= 1")
        need(r.clean_chunk_kvrange == -1 or r.clean_chunk_kvrange >= 1,
             "clean_chunk_kvrange must be -1 (use the last noise2clean entry) or >= 1")
        need(0.0 < r.clean_t <= 1.0, f"clean_t must be in (0, 1], got {r.clean_t}")
        need(r.fps > 0, "runtime_config.fps must be positive")
        need(r.scale_factor > 0, "runtime_config.scale_factor must be positive")
        need(r.temporal_downsample_factor > 0, "temporal_downsample_factor must be positive")

        # engine
        need(e.pp_size >= 1 and e.cp_size >= 1, "pp_size and cp_size must be >= 1")
        need(e.cp_strategy in ("none", "cp_ulysses", "cp_shuffle_overlap"),
             f"engine_config.cp_strategy must be none, cp_ulysses or cp_shuffle_overlap, got {e.cp_strategy!r}")
        if e.cp_strategy == "none":
            need(e.cp_size == 1, f"cp_size {e.cp_size} needs a context-parallel strategy: set engine_config.cp_strategy "
                                 "to cp_ulysses or cp_shuffle_overlap (e.g. --set engine_config.cp_strategy=cp_ulysses)")
        need(e.shortcut_mode in ("8,16,16", "16,16,8"),
             f"engine_config.shortcut_mode must be '8,16,16' or '16,16,8', got {e.shortcut_mode!r}")
        need(e.distributed_timeout_minutes > 0, "distributed_timeout_minutes must be positive")
        if e.pp_size > 0 and m.num_layers > 0:
            need(m.num_layers % e.pp_size == 0,
                 f"num_layers ({m.num_layers}) must be divisible by pp_size ({e.pp_size}): set "
                 f"engine_config.pp_size to one of "
                 f"{', '.join(str(d) for d in range(1, m.num_layers + 1) if m.num_layers % d == 0)}")
        if problems:
            raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))

    def check_window(self, num_chunks: int) -> None:
        """A window wider than the video is an error users make; say so plainly."""
        if self.runtime_config.window_size > max(num_chunks, 1) and num_chunks > 0:
            raise ConfigError(
                f"window_size ({self.runtime_config.window_size}) is larger than the number of chunks ({num_chunks}); "
                f"lower window_size or ask for more frames"
            )


def _build_section(name: str, klass: type, data: Any, *, strict: bool):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name} must be a JSON object, got {type(data).__name__}")
    valid = {f.name: f for f in fields(klass)}
    for key in data:
        if key not in valid:
            raise ConfigError(_unknown_message(name, key, valid))
    if strict:
        missing = [k for k in valid if k not in data and k not in OPTIONAL_KEYS[name] and k not in _PATH_KEYS]
        if missing:
            raise ConfigError(f"{name} is missing field(s): {', '.join(missing)} (every official field is required)")
    values = {}
    defaults = klass()
    for key, value in data.items():
        values[key] = _coerce(name, key, value, getattr(defaults, key))
    return klass(**values)


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    where = f"{section}.{key}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of numbers, got {value!r}")
        return list(value)
    if isinstance(default, str) or default is None:
        if value is None and default is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _unknown_message(where: str, key: str, valid: Mapping[str, Any], *, list_hint: str | None = None) -> str:
    """One sentence: the closest keys, and the full list (inline for one section, else where it is)."""
    close = difflib.get_close_matches(key, list(valid), n=1)
    if close and list_hint is None:
        return f"unknown key {key!r} in {where}; did you mean {close[0]!r}?"
    if list_hint is None:
        return f"unknown key {key!r} in {where}; valid keys: {', '.join(valid)}"
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
    nearest = f"closest: {', '.join(repr(c) for c in close)}; " if close else ""
    return f"unknown key {key!r} in {where} ({nearest}{list_hint} lists every key)"


def _every_key() -> str:
    return "; ".join(f"{section}: {', '.join(f.name for f in fields(klass))}" for section, klass in SECTIONS.items())


_SET_HELP = "`magi1 generate --set help`"


def _locate(key: str) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(_unknown_message("config", section, SECTIONS))
        if name not in {f.name for f in fields(SECTIONS[section])}:
            raise ConfigError(_unknown_message(section, name, {f.name: f for f in fields(SECTIONS[section])}))
        return section, name
    owners = [s for s, klass in SECTIONS.items() if key in {f.name for f in fields(klass)}]
    if not owners:
        every = {f.name: f for klass in SECTIONS.values() for f in fields(klass)}
        raise ConfigError(_unknown_message("config", key, every, list_hint=_SET_HELP))
    return owners[0], key


def preset_path(name: str) -> Path:
    """The path of a shipped preset JSON (the official files, unchanged, plus `demo`)."""
    if name not in PRESET_NAMES:
        close = difflib.get_close_matches(name, PRESET_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; presets: {', '.join(PRESET_NAMES)}")
    return Path(str(resources.files("magi1") / "presets" / f"{name}.json"))


def load_config(name_or_path: str | Path | MagiConfig, *, strict: bool = True) -> MagiConfig:
    """A preset name ('4.5B_base', 'demo', ...) or a path to an official config JSON."""
    if isinstance(name_or_path, MagiConfig):
        return name_or_path
    text = str(name_or_path)
    if text in PRESET_NAMES:
        return MagiConfig.from_json(preset_path(text), strict=strict)
    if not text.endswith(".json") and not Path(text).exists():
        preset_path(text)  # raises with a suggestion
    return MagiConfig.from_json(text, strict=strict)
