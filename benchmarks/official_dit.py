"""The official MAGI-1 DiT forward, transcribed into plain PyTorch from the reference notes
(/work/shared/docs/reference-dit-pipeline.md, sections 3.1-3.9), with its flash-attention calls replaced by
torch SDPA. No official code is copied: this is the notes' layer math, op by op, in the official layout
((S, B, D) tokens, separate q / qx / k / v linears, a Python loop of one attention call per chunk, eight
row-block matmuls for the text K/V, the TP8 interleave by permute, gates gathered per token).

It is the "official math" side of `dit_step.py --side-by-side`: same weights (the official state-dict
names, read from a magi1 model), same inputs, so its float32 output also checks magi1 (they agree to float32
rounding). Precision follows the official regime: bf16 linears and attention in the params dtype, the
promoted float32 modules in float32. `linear_proj` has two readings:

- "cpu" (default): what the official code computes on a CPU. Its float32 island is a CUDA-only autocast
  region (`torch.autocast("cuda", float32)`), which does nothing to CPU tensors, so `linear_proj` runs as a
  bf16 GEMM with a bf16 output there.
- "fp32": what it computes on a GPU, where that autocast makes `linear_proj` a float32 GEMM with a float32
  output (magi1 computes this one everywhere).

No KV cache: one forward over the call's chunks with explicit key spans, as in the common workload.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS_DEFAULT = 1e-6


def _norm_1p(x: torch.Tensor, state: dict, prefix: str, eps: float) -> torch.Tensor:
    """FusedLayerNorm with apply_layernorm_1p: gain = weight + 1, computed in the weight's dtype."""
    weight, bias = state[prefix + ".weight"], state[prefix + ".bias"]
    return F.layer_norm(x.to(weight.dtype), (weight.shape[0],), weight + 1, bias, eps)


def _rope_tables(bands: torch.Tensor, frames: int, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, 3*nb) sin and cos over a (frames, rows, cols) grid, official section 3.6 (no cached frames)."""
    bands = bands.float()
    rescale = math.sqrt(rows * cols / 256)
    axes = []
    for size, ref, centred in ((frames, frames, False), (rows, rows / rescale, True), (cols, cols / rescale, True)):
        coord = torch.arange(size, dtype=torch.int64).to(torch.float32)
        if centred:
            coord = coord - (size - 1) / 2
        if size != 1:
            coord = coord / (size - 1) * (ref - 1)
        axes.append(coord)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (T, H, W, 3)
    angles = (grid[..., None] * bands).reshape(frames * rows * cols, -1)  # angle index = axis * nb + k
    return angles.sin(), angles.cos()


def _rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """NeoX halves over the first 2 * 3nb channels: (B, S, n, hd) float32."""
    half = sin.shape[-1]
    s, c = sin[None, :, None, :], cos[None, :, None, :]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c, rest], dim=-1)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """flash_attn_func stand-in: (L, nh, hd), (Lk, ng, hd) -> (L, nh, hd), default scale, contiguous GQA."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out[0].transpose(0, 1)


def official_forward(state: dict[str, torch.Tensor], c, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                     xattn_mask: torch.Tensor, kv_range: torch.Tensor, caption_dropout_mask: bool,
                     linear_proj: str = "cpu") -> torch.Tensor:
    """x (B, C, T, h, w) float32, t (B, R), y (B*R, 1, Lc, Ct), xattn_mask (B*R, 1, Lc), kv_range (B*R, 2)
    -> velocity (B, C, T, h, w) float32. Only B = 1 (a conditional pass) is transcribed."""
    eps = c.layernorm_epsilon or EPS_DEFAULT
    dtype = state["videodit_blocks.layers.0.self_attention.linear_qkv.layer_norm.weight"].dtype
    batch, _, frames, height, width = x.shape
    if batch != 1:
        raise ValueError("the transcription covers the conditional pass, B = 1")
    chunks = t.shape[1]
    nh, ng, hd, d = c.num_attention_heads, c.num_query_groups, c.kv_channels, c.hidden_size

    # --- 3.1-3.2 pre-process and patch embedding, float32
    x = (x * c.x_rescale_factor).float()
    tokens = F.conv3d(x, state["x_embedder.weight"].float(), stride=(c.t_patch_size, c.patch_size, c.patch_size))
    _, _, tt, hp, wp = tokens.shape
    seq = tt * hp * wp
    ctn = seq // chunks
    h = tokens.to(dtype).flatten(2).permute(2, 0, 1).contiguous()  # (B, D, T, Hp, Wp) -> (S, B, D)

    # --- 3.3 timestep embedding: cos first, rounded to the params dtype, float32 MLP
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = (t.flatten().float()[:, None] * freqs[None]) * 1000
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype).float()
    emb = F.silu(F.linear(emb, state["t_embedder.mlp.0.weight"], state["t_embedder.mlp.0.bias"]))
    t_emb = F.linear(emb, state["t_embedder.mlp.2.weight"], state["t_embedder.mlp.2.bias"])

    # --- 3.4-3.5 caption tokens over all Lc positions, adaLN from a null row, condition and its map
    y_x = F.silu(F.linear(y.float(), state["y_embedder.y_proj_xattn.0.weight"], state["y_embedder.y_proj_xattn.0.bias"]))
    null_row = state["y_embedder.null_caption_embedding"][-1 if caption_dropout_mask else -2]
    y_adaln = F.linear(null_row[None].float(), state["y_embedder.y_proj_adaln.0.weight"],
                       state["y_embedder.y_proj_adaln.0.bias"])
    condition = (t_emb.reshape(batch, chunks, -1) + y_adaln[:, None]).to(dtype)  # (B, R, Dc)
    condition_map = torch.arange(seq) // ctn  # (S,) row b * R + chunk, b = 0
    mask = xattn_mask.reshape(batch * chunks, -1).bool()
    y_flat = y_x.squeeze(1)[mask].to(dtype)  # (Ltot, D) unmasked tokens in chunk order
    cu_kv = [0] + torch.cumsum(mask.sum(1), 0).tolist()
    sin, cos = _rope_tables(state["rope.bands"], tt, hp, wp)
    spans = kv_range.tolist()

    for i in range(c.num_layers):
        p = f"videodit_blocks.layers.{i}."
        sa = p + "self_attention."
        # (a) shared pre-norm, stored gain
        ln = F.layer_norm(h, (d,), state[sa + "linear_qkv.layer_norm.weight"], state[sa + "linear_qkv.layer_norm.bias"], eps)
        # (b) q, k, v: per-head fp32 QK norm, then RoPE in fp32, then back to bf16
        q = F.linear(ln, state[sa + "linear_qkv.q.weight"]).view(seq, batch, nh, hd).float()
        q = _rotate(_norm_1p(q, state, sa + "q_layernorm", eps).transpose(0, 1), sin, cos).to(dtype)
        k = F.linear(ln, state[sa + "linear_qkv.k.weight"]).view(seq, batch, ng, hd).float()
        k = _rotate(_norm_1p(k, state, sa + "k_layernorm", eps).transpose(0, 1), sin, cos).to(dtype)
        v = F.linear(ln, state[sa + "linear_qkv.v.weight"]).view(seq, batch, ng, hd).transpose(0, 1)
        q, k, v = q.reshape(-1, nh, hd), k.reshape(-1, ng, hd), v.reshape(-1, ng, hd)
        # (d) block-causal self attention: one call per query chunk over its key span
        core = torch.cat([_sdpa(q[j * ctn : (j + 1) * ctn], k[s:e], v[s:e]) for j, (s, e) in enumerate(spans)])
        # (e) cross attention on the same pre-norm; text K/V as eight row-block matmuls
        qx = F.linear(ln, state[sa + "linear_qkv.qx.weight"]).transpose(0, 1).reshape(-1, nh, hd)
        qx = _norm_1p(qx, state, sa + "q_layernorm_xattn", eps)
        blocks = torch.chunk(state[sa + "linear_kv_xattn.weight"], 8, dim=0)
        kvx = torch.cat([F.linear(y_flat, w) for w in blocks], dim=-1).view(-1, ng, 2 * hd)
        kx = _norm_1p(kvx[..., :hd], state, sa + "k_layernorm_xattn", eps)
        vx = kvx[..., hd:]
        cross = torch.cat([_sdpa(qx[j * ctn : (j + 1) * ctn], kx[cu_kv[j] : cu_kv[j + 1]], vx[cu_kv[j] : cu_kv[j + 1]])
                           for j in range(chunks)])
        # (f) [core | cross], TP8 interleave, linear_proj
        a = torch.cat([core.reshape(seq, batch, -1), cross.reshape(seq, batch, -1)], dim=-1)
        a = a.view(seq, batch, 2, 8, -1).permute(0, 1, 3, 2, 4).reshape(seq, batch, -1)
        w_proj = state[sa + "linear_proj.weight"]
        o = F.linear(a.float(), w_proj.float()) if linear_proj == "fp32" else F.linear(a, w_proj)
        # (g) gates: SiLU -> linear -> tanh softcap, per token by its chunk
        g = F.linear(F.silu(condition), state[p + "ada_modulate_layer.proj.0.weight"], state[p + "ada_modulate_layer.proj.0.bias"])
        g = torch.tanh(g.float()).to(dtype)
        gate_msa, gate_mlp = g[0, :, :d][condition_map][:, None], g[0, :, d:][condition_map][:, None]  # (S, 1, D)
        # (h) gate, post-norm, fp32 residual rounded once
        h = (h.float() + _norm_1p(o.float() * gate_msa.float(), state, p + "self_attn_post_norm", eps)).to(dtype)
        # (i)-(j) MLP with exact GELU, same sandwich residual
        m = F.layer_norm(h, (d,), state[p + "mlp.layer_norm.weight"], state[p + "mlp.layer_norm.bias"], eps)
        m = F.linear(F.gelu(F.linear(m, state[p + "mlp.linear_fc1.weight"])), state[p + "mlp.linear_fc2.weight"])
        h = (h.float() + _norm_1p(m.float() * gate_mlp.float(), state, p + "mlp_post_norm", eps)).to(dtype)

    # --- 3.8 final norm and linear (float32), unpatchify (pt, ph, pw, C) with C fastest
    out = F.linear(_norm_1p(h.float(), state, "videodit_blocks.final_layernorm", eps), state["final_linear.linear.weight"])
    p, pt, co = c.patch_size, c.t_patch_size, c.out_channels
    out = out.reshape(tt, hp, wp, pt, p, p, co).permute(6, 0, 3, 1, 4, 2, 5)
    return (out.reshape(1, co, tt * pt, hp * p, wp * p) / c.x_rescale_factor).contiguous()
