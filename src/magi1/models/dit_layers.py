"""Building blocks of the MAGI-1 DiT. Attribute names equal the official state-dict names.

Precision (see `MagiDiT.apply_precision`): the embedders, the final linear, the rotary bands, the
self-attention QK norms, the post norms and the final norm hold float32 weights; everything else holds
the params dtype (the "compute dtype", bf16 in the shipped models). Modules that the official code runs
inside a float32 autocast region (embedders, final linear, the output projection) upcast here explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..ops import half_math
from ..ops.attention import RangeAttention
from .adapters import split_adapter, with_adapter
from .rope import apply_rotary, apply_rotary_

FREQUENCY_EMBEDDING_SIZE = 256
TIMESTEP_SCALE = 1000  # the network sees t * 1000 in the sinusoid
GATE_SOFTCAP = 1.0
# linear_proj reads [self | cross] attention outputs interleaved in this many slices (tensor-parallel 8 legacy)
OUTPUT_INTERLEAVE_GROUPS = 8


def fp32_linear(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """A linear computed entirely in float32, as under the official float32 autocast region."""
    bias = linear.bias.float() if linear.bias is not None else None
    return F.linear(x.float(), linear.weight.float(), bias)


# ---------------------------------------------------------------------------------------------- norms
class ZeroCenteredLayerNorm(nn.Module):
    """LayerNorm whose effective gain is `weight + 1` when `one_plus` (official FusedLayerNorm, 1p mode).

    The +1 is added in the weight's own dtype, and the input is normalised in that dtype too.
    """

    def __init__(self, size: int, eps: float, one_plus: bool = True) -> None:
        super().__init__()
        self.size = size
        self.eps = eps
        self.one_plus = one_plus
        self.weight = nn.Parameter(torch.zeros(size) if one_plus else torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = self.weight + 1 if self.one_plus else self.weight
        return F.layer_norm(x.to(self.weight.dtype), (self.size,), gain, self.bias, self.eps)


# ---------------------------------------------------------------------------------------------- embedders
def timestep_frequencies(t: torch.Tensor, size: int = FREQUENCY_EMBEDDING_SIZE) -> torch.Tensor:
    """(N,) times -> (N, size) float32 [cos | sin] of t * 1000 * 10000^(-k / (size/2))."""
    half = size // 2
    # The frequency table is built on the CPU in float32, as the official code does, then moved.
    freqs = torch.exp(-math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None] * TIMESTEP_SCALE
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if size % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, cond_size: int, frequency_size: int = FREQUENCY_EMBEDDING_SIZE) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, cond_size), nn.SiLU(), nn.Linear(cond_size, cond_size))

    def forward(self, t: torch.Tensor, round_to: torch.dtype) -> torch.Tensor:
        """(N,) -> (N, cond) float32. The sinusoid is rounded to `round_to` (params dtype) before the fp32 MLP."""
        emb = timestep_frequencies(t.float(), self.frequency_size).to(round_to)
        hidden = F.silu(fp32_linear(emb, self.mlp[0]))
        return fp32_linear(hidden, self.mlp[2])


class CaptionEmbedder(nn.Module):
    """Caption tokens -> cross-attention tokens; the adaLN vector comes from a learned null row only."""

    def __init__(self, caption_channels: int, xattn_size: int, cond_size: int, caption_max_length: int) -> None:
        super().__init__()
        self.y_proj_xattn = nn.Sequential(nn.Linear(caption_channels, xattn_size), nn.SiLU())
        self.y_proj_adaln = nn.Sequential(nn.Linear(caption_channels, cond_size))
        self.null_caption_embedding = nn.Parameter(torch.randn(caption_max_length, caption_channels) * 0.02)

    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., caption_channels) -> (..., xattn) float32; row-wise, so projecting only unmasked rows is exact."""
        return F.silu(fp32_linear(tokens, self.y_proj_xattn[0]))

    def adaln_vector(self, null_adaln: torch.Tensor) -> torch.Tensor:
        """(N,) bool -> (N, cond) float32: row -1 of the null table where True, row -2 where False."""
        table = self.null_caption_embedding
        rows = torch.where(null_adaln[:, None], table[-1][None, :], table[-2][None, :])
        return fp32_linear(rows, self.y_proj_adaln[0])


class FinalLinear(nn.Module):
    def __init__(self, hidden_size: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp32_linear(x, self.linear)


# ---------------------------------------------------------------------------------------------- per-call context
@dataclass
class LayerContext:
    """Everything a transformer layer needs besides its input, computed once per forward.

    condition: (B, R, cond) compute dtype; rope_sin/rope_cos: (S, 3*bands) float32;
    caption_tokens: (L_total, xattn) compute dtype, the unmasked caption tokens of every chunk row;
    self_attention / cross_attention: range plans over the packed (batch-major) tokens;
    exchange_kv: merges a layer's (B, S, ng, 2hd) K/V with the cache -> (B, Sk, ng, 2hd), or None.
    token_chunks: (S,) chunk of each token when the tokens are a shard not aligned to chunks (context
    parallel), else None; attention_core: replaces cache exchange + self attention, (q (B, S, nh, hd),
    kv (B, S, ng, 2hd), ctx, layer index) -> (B, S, nh, hd), e.g. a Ulysses all-to-all wrapper, or None.
    """

    batch: int
    chunks: int
    chunk_tokens: int
    condition: torch.Tensor
    rope_sin: torch.Tensor
    rope_cos: torch.Tensor
    caption_tokens: torch.Tensor
    self_attention: RangeAttention
    cross_attention: RangeAttention
    exchange_kv: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    token_chunks: torch.Tensor | None = None
    attention_core: Callable[..., torch.Tensor] | None = None


def per_chunk_gate(x: torch.Tensor, gate: torch.Tensor, token_chunks: torch.Tensor | None = None) -> torch.Tensor:
    """x: (B, S, D) float32 times gate (B, R, D) float32 of each token's chunk -> (B, S, D).

    token_chunks (S,): the chunk of each token, needed when x holds a shard of the tokens (context parallel).
    """
    if token_chunks is not None:
        return x * gate[:, token_chunks]
    b, s, d = x.shape
    r = gate.shape[1]
    # (B, S, D) -> (B, R, ctn, D): tokens of chunk r are contiguous
    return (x.reshape(b, r, s // r, d) * gate[:, :, None, :]).reshape(b, s, d)


def project_in_dtype(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a linear and keep x's dtype (FP8 linears return bf16 whatever the compute dtype).

    A LoRA-wrapped linear computes its base exactly as the plain one, plus the adapter (models.adapters).
    """
    base, adapter = split_adapter(linear)
    if type(base) is nn.Linear:  # half GEMMs run as float32 GEMMs on CPUs without half units (half_math)
        out = half_math.linear(x, base.weight, base.bias)
    else:
        out = base(x).to(x.dtype)
    return with_adapter(out, adapter, x)


def gated_post_norm_residual(h: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, norm: nn.Module,
                             token_chunks: torch.Tensor | None = None) -> torch.Tensor:
    """(h.float() + norm(x.float() * gate of each token's chunk)) rounded once to h's dtype.

    Gate, then post-norm, then the residual add in float32. Without autograd the product and the sum are
    formed in place (x is a fresh projection output that nobody reads again): the same values bit for bit.
    """
    if torch.is_grad_enabled():
        return (h.float() + norm(per_chunk_gate(x.float(), gate.float(), token_chunks))).to(h.dtype)
    x, gate = x.float().contiguous(), gate.float()
    if token_chunks is not None:
        x.mul_(gate[:, token_chunks])
    else:
        b, s, d = x.shape
        x.view(b, gate.shape[1], s // gate.shape[1], d).mul_(gate[:, :, None, :])
    return norm(x).add_(h).to(h.dtype)  # fp32 += h upcast: the same sum as h.float() + norm(...)


def _fp8_linears():
    from ..ops.fp8 import Fp8PerChannelLinear, Fp8PerTensorLinear  # lazy: only FP8 models need it

    return Fp8PerTensorLinear, Fp8PerChannelLinear


# ---------------------------------------------------------------------------------------------- attention
class QKVProjections(nn.Module):
    """Shared pre-norm (plain LayerNorm, stored gain) and the four bias-free projections q, qx, k, v."""

    def __init__(self, config: ModelConfig, quantized: bool) -> None:
        super().__init__()
        d = config.hidden_size
        q_size = config.num_attention_heads * config.kv_channels
        kv_size = config.num_query_groups * config.kv_channels
        self.layer_norm = nn.LayerNorm(d, eps=config.layernorm_epsilon)
        if quantized:
            per_tensor, _ = _fp8_linears()
            make = lambda n_out: per_tensor(d, n_out)  # noqa: E731
        else:
            make = lambda n_out: nn.Linear(d, n_out, bias=False)  # noqa: E731
        self.q = make(q_size)
        self.qx = make(q_size)
        self.k = make(kv_size)
        self.v = make(kv_size)


class ParallelAttention(nn.Module):
    """Self attention (block-causal over chunk ranges, rotary, cached K/V) and text cross attention,
    sharing one pre-norm; their outputs are interleaved and projected together by `linear_proj`."""

    def __init__(self, config: ModelConfig, quantized: bool) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_query_groups
        self.head_dim = config.kv_channels
        self.quantized = quantized
        q_size = self.heads * self.head_dim
        kv_size = self.kv_heads * self.head_dim
        eps, one_plus = config.layernorm_epsilon, config.apply_layernorm_1p
        self.linear_qkv = QKVProjections(config, quantized)
        self.linear_kv_xattn = nn.Linear(config.xattn_hidden_size, 2 * kv_size, bias=False)
        if quantized:
            _, per_channel = _fp8_linears()
            self.linear_proj = per_channel(2 * q_size, config.hidden_size)
        else:
            self.linear_proj = nn.Linear(2 * q_size, config.hidden_size, bias=False)
        self.q_layernorm = ZeroCenteredLayerNorm(self.head_dim, eps, one_plus)
        self.q_layernorm_xattn = ZeroCenteredLayerNorm(self.head_dim, eps, one_plus)
        self.k_layernorm = ZeroCenteredLayerNorm(self.head_dim, eps, one_plus)
        self.k_layernorm_xattn = ZeroCenteredLayerNorm(self.head_dim, eps, one_plus)

    def _rotated(self, projected: torch.Tensor, norm: nn.Module, ctx: LayerContext) -> torch.Tensor:
        """(B, S, n*hd) -> (B, S, n, hd): per-head fp32 norm, rotary in fp32, back to the compute dtype."""
        b, s, _ = projected.shape
        heads = projected.reshape(b, s, -1, self.head_dim)
        rotate = apply_rotary if torch.is_grad_enabled() else apply_rotary_  # in place on the fresh norm output
        out = rotate(norm(heads.float()), ctx.rope_sin, ctx.rope_cos)
        return out.to(projected.dtype)

    def self_attention(self, ln: torch.Tensor, ctx: LayerContext, layer_index: int) -> torch.Tensor:
        b, s, _ = ln.shape
        q = self._rotated(project_in_dtype(self.linear_qkv.q, ln), self.q_layernorm, ctx)  # (B, S, nh, hd)
        k = self._rotated(project_in_dtype(self.linear_qkv.k, ln), self.k_layernorm, ctx)  # (B, S, ng, hd)
        v = project_in_dtype(self.linear_qkv.v, ln).reshape(b, s, self.kv_heads, self.head_dim)
        kv = torch.cat([k, v], dim=-1)  # (B, S, ng, 2hd): the unit the KV cache stores
        if ctx.attention_core is not None:  # e.g. context parallel: heads <-> tokens exchange around the core
            return ctx.attention_core(q, kv, ctx, layer_index).reshape(b, s, self.heads * self.head_dim)
        if ctx.exchange_kv is not None:
            kv = ctx.exchange_kv(layer_index, kv)  # (B, P + S, ng, 2hd)
        kv = kv.reshape(-1, self.kv_heads, 2 * self.head_dim)  # batch-major packed keys
        keys, values = kv[..., : self.head_dim], kv[..., self.head_dim :]
        out = ctx.self_attention(q.reshape(b * s, self.heads, self.head_dim), keys, values)
        return out.reshape(b, s, self.heads * self.head_dim)

    def cross_attention(self, ln: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        b, s, _ = ln.shape
        qx = project_in_dtype(self.linear_qkv.qx, ln).reshape(b * s, self.heads, self.head_dim)
        qx = self.q_layernorm_xattn(qx)
        tokens = ctx.caption_tokens
        base, adapter = split_adapter(self.linear_kv_xattn)
        # Eight row-block GEMMs as in the official code (same math as one GEMM, kept for bit parity).
        blocks = torch.chunk(base.weight, 8, dim=0)
        kv = with_adapter(torch.cat([half_math.linear(tokens, w) for w in blocks], dim=1), adapter, tokens)
        # (L, 2*ng*hd) -> (L, ng, 2hd): per group, K then V
        kv = kv.view(tokens.shape[0], self.kv_heads, 2 * self.head_dim)
        kx = self.k_layernorm_xattn(kv[..., : self.head_dim])
        vx = kv[..., self.head_dim :]
        out = ctx.cross_attention(qx, kx, vx)
        return out.reshape(b, s, self.heads * self.head_dim)

    def project(self, core: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        """Interleave [self | cross] in 8 head slices and project: fp32 output (compute dtype for FP8).

        A plain nn.Linear runs as the official float32 island (`half_math.float32_linear_of`), and so does the
        base of a LoRA-wrapped one (its adapter's output added); any other module there (FP8) is called as a
        module on compute-dtype input.
        """
        b, s, width = core.shape
        groups = OUTPUT_INTERLEAVE_GROUPS
        base, adapter = split_adapter(self.linear_proj)
        island = type(base) is nn.Linear
        # [self | cross] as (.., [8][2][d']): self slice g, cross slice g, self slice g+1, ... written straight
        # into one buffer, already in the dtype the float32 GEMM below takes its operands in
        dtype = half_math.island_operand_dtype(core.dtype, core.device) if island else core.dtype
        both = torch.empty(b, s, groups, 2, width // groups, device=core.device, dtype=dtype)
        both[:, :, :, 0] = core.reshape(b, s, groups, width // groups)
        both[:, :, :, 1] = cross.reshape(b, s, groups, width // groups)
        both = both.reshape(b, s, 2 * width)
        if not island:
            return project_in_dtype(self.linear_proj, both)
        out = half_math.float32_linear_of(both, base.weight)  # bf16 values when the weight is bf16
        return with_adapter(out, adapter, both)


class AdaModulateLayer(nn.Module):
    """Two per-chunk gates (attention, MLP) from the condition; no shift or scale."""

    def __init__(self, cond_size: int, gate_size: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(cond_size, 2 * gate_size))

    def forward(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = self.proj(F.silu(condition))
        gates = (torch.tanh(gates.float() / GATE_SOFTCAP) * GATE_SOFTCAP).to(gates.dtype)
        return gates.chunk(2, dim=-1)


class FeedForward(nn.Module):
    """Pre-norm (plain LayerNorm) -> fc1 -> GELU (erf) or SwiGLU (silu(first half) * second, fp32) -> fc2."""

    def __init__(self, config: ModelConfig, quantized: bool) -> None:
        super().__init__()
        d, f = config.hidden_size, config.ffn_hidden_size
        self.gated = config.gated_linear_unit
        self.layer_norm = nn.LayerNorm(d, eps=config.layernorm_epsilon)
        fc1_out = 2 * f if self.gated else f
        if quantized:
            per_tensor, per_channel = _fp8_linears()
            self.linear_fc1 = per_tensor(d, fc1_out)
            self.linear_fc2 = per_channel(f, d)
        else:
            self.linear_fc1 = nn.Linear(d, fc1_out, bias=False)
            self.linear_fc2 = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = project_in_dtype(self.linear_fc1, self.layer_norm(x))
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = (F.silu(gate.float()) * up.float()).to(h.dtype)
        elif torch.is_grad_enabled():
            h = F.gelu(h)
        else:  # in place on the fresh fc1 output: the same values, one large allocation fewer per layer
            h = torch.ops.aten.gelu_(h)
        return project_in_dtype(self.linear_fc2, h)


class TransformerLayer(nn.Module):
    """Parallel self+cross attention and an MLP, each as gate -> post-norm -> fp32 residual add."""

    def __init__(self, config: ModelConfig, layer_number: int, fp8_quant: bool = False) -> None:
        super().__init__()
        self.layer_number = layer_number
        # The first and last layers always stay in high precision.
        quantized = fp8_quant and 0 < layer_number < config.num_layers - 1
        eps, one_plus = config.layernorm_epsilon, config.apply_layernorm_1p
        d = config.hidden_size
        self.ada_modulate_layer = AdaModulateLayer(config.cond_hidden_size, int(d * config.cond_gating_ratio))
        self.self_attention = ParallelAttention(config, quantized)
        self.self_attn_post_norm = ZeroCenteredLayerNorm(d, eps, one_plus)
        self.mlp = FeedForward(config, quantized)
        self.mlp_post_norm = ZeroCenteredLayerNorm(d, eps, one_plus)

    def forward(self, h: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """h: (B, S, D) compute dtype -> (B, S, D) compute dtype."""
        attn = self.self_attention
        ln = attn.linear_qkv.layer_norm(h)
        core = attn.self_attention(ln, ctx, self.layer_number)
        cross = attn.cross_attention(ln, ctx)
        o = attn.project(core, cross)
        gate_attn, gate_mlp = self.ada_modulate_layer(ctx.condition)
        # gate, then post-norm, then the residual; the sum in fp32 rounded once
        chunks = ctx.token_chunks
        h = gated_post_norm_residual(h, o, gate_attn, self.self_attn_post_norm, chunks)
        m = self.mlp(h)
        return gated_post_norm_residual(h, m, gate_mlp, self.mlp_post_norm, chunks)


class TransformerBlocks(nn.Module):
    def __init__(self, config: ModelConfig, fp8_quant: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(config, i, fp8_quant) for i in range(config.num_layers))
        self.final_layernorm = ZeroCenteredLayerNorm(
            config.hidden_size, config.layernorm_epsilon, config.apply_layernorm_1p
        )


def compile_layers(blocks: TransformerBlocks, **compile_kwargs) -> TransformerBlocks:
    """Opt-in `torch.compile` of each layer's MLP (pre-norm, fc1, GELU / SwiGLU, fc2 and their casts).

    The MLP is the largest pure tensor-in, tensor-out piece of a layer; attention, the KV cache and the
    range plans stay eager. Fused kernels reorder the float32 sums of the norm, so outputs move by float32
    rounding (in bf16 an occasional ulp): not the default. Measured on CPU it does not pay (see
    docs/benchmarks.md), the GEMMs dominate there; on GPUs it removes memory passes.
    """
    for layer in blocks.layers:
        layer.mlp.compile(**compile_kwargs)
    return blocks
