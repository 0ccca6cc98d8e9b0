"""Byte counts of everything a run keeps in memory, from the config alone (no weights are read).

Weights are counted exactly: the DiT is built on the meta device (shapes and dtypes, no storage) and its
parameters summed per layer, so an fp8 model's float8 weights, float32 scales and float32 islands are
all as they will be after loading. The KV cache is counted exactly too, by replaying the chunk plan's
writes and releases (`KVCache` keeps one block of rows per chunk). Activations are an estimate: the live
tensors of one transformer layer at the largest window step of the sampler, term by term as
`models/dit_layers.py` allocates them (see `dit_activation_bytes`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..config import MagiConfig, ModelConfig

# The official T5-XXL v1.1 encoder (reference-vae-t5-infra.md §2.1) and VAE (§1.2).
T5_XXL_DIMS = {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "d_kv": 64, "vocab_size": 32128}
OFFICIAL_VAE_PARAMETERS = 613_755_239
OFFICIAL_VAE_WIDTH = 1024  # embed_dim of the official ViT VAE
VAE_TILE_PIXELS = 256  # the official decode tile, 256 x 256 px, fps // 2 frames
VAE_PATCH = (4, 8)  # (frames, pixels) per VAE token


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ---------------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class DiTWeights:
    """Bytes of the DiT's parameters: the transformer layers one by one, and everything else."""

    layer_bytes: tuple[int, ...]   # layer i of videodit_blocks.layers
    other_bytes: int               # embedders, rotary bands, final norm and linear (always on the device)

    @property
    def total(self) -> int:
        return self.other_bytes + sum(self.layer_bytes)

    def resident_with_blocks(self, blocks_on_device: int) -> int:
        """Peak bytes on the device when at most k consecutive layers are there at a time.

        The offload manager keeps layer i and prefetches the next k - 1, wrapping to layer 0 for the next
        call, so the resident set is a cyclic window of k layers; the largest such window counts.
        """
        n = len(self.layer_bytes)
        k = max(1, min(int(blocks_on_device), n))
        if k == n:
            return self.total
        window = max(sum(self.layer_bytes[(i + j) % n] for j in range(k)) for i in range(n))
        return self.other_bytes + window


def _model_key(model: ModelConfig) -> tuple:
    return tuple(sorted(vars(model).items()))


@functools.lru_cache(maxsize=32)
def _dit_weights(model_key: tuple, distill: bool, fp8: bool, dtype: torch.dtype) -> DiTWeights:
    from ..models.dit import MagiDiT

    model = ModelConfig(**dict(model_key))
    layers = model.num_layers
    # Layers 1..L-2 are alike (fp8 or not) and 0, L-1 never quantised, so a 3-layer model on the meta
    # device has every distinct layer; the rest of the model does not depend on the layer count.
    small = ModelConfig(**{**dict(model_key), "num_layers": min(layers, 3)})
    with torch.device("meta"):
        dit = MagiDiT(small, distill=distill, fp8_quant=fp8 and layers > 2).apply_precision(dtype)

    def nbytes(module: torch.nn.Module) -> int:
        tensors = list(module.parameters()) + list(module.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    built = [nbytes(layer) for layer in dit.videodit_blocks.layers]
    if layers > 3:  # the quantised (or plain) middle layer repeated; the last one stays high precision
        built = [built[0]] + [built[1]] * (layers - 2) + [built[2]]
    other = nbytes(dit) - sum(nbytes(layer) for layer in dit.videodit_blocks.layers)
    return DiTWeights(tuple(built), other)


def dit_weights(config: MagiConfig, dtype: torch.dtype, fp8: bool | None = None) -> DiTWeights:
    """The DiT's bytes in `dtype` (float32 islands kept); fp8 None follows engine_config.fp8_quant."""
    e = config.engine_config
    return _dit_weights(_model_key(config.model_config), bool(e.distill),
                        bool(e.fp8_quant if fp8 is None else fp8), dtype)


def t5_parameters(d_model: int, d_ff: int, num_layers: int, num_heads: int, d_kv: int, vocab_size: int) -> int:
    """Parameters of a T5 v1.1 encoder (gated FFN, relative bias in block 0, RMS norms)."""
    inner = num_heads * d_kv
    block = 4 * d_model * inner + 3 * d_model * d_ff + 2 * d_model
    return vocab_size * d_model + num_layers * block + 32 * num_heads + d_model


# ---------------------------------------------------------------------------------------------- KV cache
def kv_row_bytes(config: MagiConfig, dtype: torch.dtype) -> int:
    """One cached token of one layer: [K | V] of every KV head group."""
    m = config.model_config
    return m.num_query_groups * 2 * m.kv_channels * dtype_bytes(dtype)


@dataclass(frozen=True)
class WindowShape:
    """What the sampler's chunk plan asks of memory, in tokens of one video."""

    tokens_per_chunk: int
    max_call_tokens: int      # the largest DiT call (window chunks + the re-encoded clean chunk)
    max_read_tokens: int      # the most cache rows one call reads back
    peak_cached_chunks: int   # chunk blocks the KV cache holds at its fullest, per layer
    num_chunks: int


def window_shape(config: MagiConfig, *, height: int, width: int, num_frames: int, window_size: int) -> WindowShape:
    """Replay the chunk plan (t2v): call sizes, cache reads, and cache blocks written minus released."""
    from ..sampling.chunk_plan import plan_forward_steps
    from ..sampling.guidance import is_nearly_clean
    from ..sampling.sampler import chunk_counts
    from ..sampling.schedule import time_grid

    r, m, e = config.runtime_config, config.model_config, config.engine_config
    h, w = height // 8, width // 8
    ctn = (r.chunk_width // m.t_patch_size) * (h // m.patch_size) * (w // m.patch_size)
    chunks, _ = chunk_counts(num_frames, 0, r.chunk_width, r.temporal_downsample_factor)
    plan = plan_forward_steps(chunks, window_size, r.num_steps, 0, r.noise2clean_kvrange, r.clean_chunk_kvrange)
    grid = time_grid(r.num_steps, e.shortcut_mode)
    stored: set[int] = set()
    max_call = max_read = peak = 0
    for step in plan:
        call = len(step.call_chunks)
        max_call = max(max_call, call)
        if step.extra_clean_chunk or step.slice_point > 0:  # the call touches the cache
            first_key = min([step.slice_point] + [s for s, _ in step.spans])
            max_read = max(max_read, step.slice_point - first_key)
            t_oldest = grid[step.chunk_steps[0]]
            written_end = step.chunk_end - (1 if is_nearly_clean(t_oldest, e.distill_nearly_clean_chunk_threshold) else 0)
            stored.update(range(step.slice_point, max(written_end, step.slice_point)))
        peak = max(peak, len(stored))
        stored = {c for c in stored if c >= step.keep_from}
    return WindowShape(ctn, max_call * ctn, max_read * ctn, peak, chunks)


# ---------------------------------------------------------------------------------------------- activations
def dit_activation_bytes(config: MagiConfig, shape: WindowShape, dtype: torch.dtype, *, batch: int = 1,
                         accelerator: bool = True, materialised_scores: bool = False) -> int:
    """Peak live bytes of one DiT call beyond weights and KV cache, for its largest window step.

    Kept through the call: the embedded tokens and the residual stream (S x D each), the float32 rotary
    tables, the caption tokens. Inside a layer the larger of two moments counts:
      attention: pre-norm, q, k, v, [K|V], the keys with the cached prefix and its read copy, self and
        cross outputs, the interleaved projection input and its float32 output; on the CPU the projection
        input is float32 and SDPA expands the grouped keys and values to every query head (accelerator
        False), while flash kernels read the groups as they are;
      MLP: the gated residual in float32, the new residual, the pre-norm, fc1 (GELU in place) and fc2.
    materialised_scores adds the (heads, Lq, Lk) float32 softmax of an attention kernel that forms it
    (the math kernel); flash kernels never do.
    """
    m, r = config.model_config, config.runtime_config
    es = dtype_bytes(dtype)
    f32 = 4
    s = shape.max_call_tokens * batch
    p = shape.max_read_tokens * batch
    d, f = m.hidden_size, m.ffn_hidden_size * (2 if m.gated_linear_unit else 1)
    q_width, kv_width = m.num_attention_heads * m.kv_channels, m.num_query_groups * m.kv_channels
    captions = m.caption_max_length * batch * (shape.max_call_tokens // shape.tokens_per_chunk)
    persistent = 2 * s * d * es + 2 * s * m.rope_dim * f32 + captions * d * es
    island = es if accelerator else f32
    attention = (s * d * es                       # pre-norm output
                 + s * q_width * es               # q
                 + 2 * s * kv_width * es          # k, v
                 + 2 * s * kv_width * es          # [K | V]
                 + 2 * (p + s) * kv_width * es    # with the cached prefix
                 + 2 * p * kv_width * es          # the prefix as read back
                 + (0 if accelerator else 2 * (p + s) * q_width * es)  # GQA keys/values per query head
                 + 2 * s * q_width * es           # self and cross attention outputs
                 + 2 * s * q_width * island       # interleaved projection input
                 + s * d * f32)                   # projection output
    if materialised_scores:
        ctn = shape.tokens_per_chunk
        keys = min(p + s, ctn * max(len(r.noise2clean_kvrange) + 1, 2))
        attention += m.num_attention_heads * ctn * keys * f32 * batch
    mlp = s * d * f32 + s * d * es + s * d * es + s * f * es + s * d * es
    return persistent + max(attention, mlp)


def latent_state_bytes(config: MagiConfig, shape: WindowShape, *, height: int, width: int, batch: int = 1) -> int:
    """The float32 latent video the sampler keeps on the device, and the noise it started from."""
    r, m = config.runtime_config, config.model_config
    frames = shape.num_chunks * r.chunk_width
    return 2 * batch * m.latent_channels * frames * (height // 8) * (width // 8) * 4


def vae_decode_bytes(config: MagiConfig, *, height: int, width: int, dtype: torch.dtype,
                     vae_width: int = OFFICIAL_VAE_WIDTH) -> int:
    """One chunk's decode: the float32 pixel output with its blend copy, plus one tile's ViT activations."""
    r = config.runtime_config
    frames = r.chunk_width * r.temporal_downsample_factor
    pixels = 2 * frames * height * width * 3 * 4
    tile = min(VAE_TILE_PIXELS, max(height, width))
    tile_frames = max(1, (r.fps // 2))
    tokens = math.ceil(tile_frames / VAE_PATCH[0]) * (tile // VAE_PATCH[1]) ** 2
    return pixels + tokens * vae_width * 8 * dtype_bytes(dtype)
