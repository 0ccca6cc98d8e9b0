"""The MAGI-1 diffusion transformer: patch/time/caption embedding, L transformer layers, final projection.

One call denoises R consecutive chunks of cw latent frames each (T = R * cw). Tokens are 2x2 (x1 frame)
patches ordered (frame, row, col); chunk r owns tokens [r * ctn, (r + 1) * ctn). Self attention is block
causal: the caller gives, per chunk row, the [start, end) span of key tokens it sees, in the coordinates of
[cached chunks | this call's chunks] (batch-major when B > 1). Cross attention reads only that chunk row's
own unmasked caption tokens. The caption text never reaches adaLN: the per-chunk condition is
t_embed(t) [+ t_embed(step size), distilled models] + y_proj_adaln(a learned null row).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from ..config import ModelConfig
from ..ops.attention import RangeAttention
from ..runtime import parse_dtype
from .dit_layers import CaptionEmbedder, FinalLinear, LayerContext, TimestepEmbedder, TransformerBlocks
from .kv_cache import CacheAccess, KVCache, KVCacheBatch
from .rope import LearnableRotary3D

# Parameters the official `_high_precision_promoter` keeps in float32 whatever the params dtype.
_PROMOTED_PREFIXES = ("x_embedder.", "y_embedder.", "t_embedder.", "final_linear.", "rope.")
_PROMOTED_NORMS = ("q_layernorm", "k_layernorm", "self_attn_post_norm", "mlp_post_norm", "final_layernorm")


def high_precision_param(name: str) -> bool:
    """True for a state-dict key that runs in float32 regardless of params_dtype.

    Embedders (null caption table included), final linear, rotary bands, the self-attention QK norms,
    the post norms and the final norm. The cross-attention QK norms (`*_xattn`) stay in params dtype.
    """
    if name.startswith(_PROMOTED_PREFIXES):
        return True
    module = name.rpartition(".")[0]
    if "_xattn" in module:
        return False
    return any(tag in module for tag in _PROMOTED_NORMS)


def distill_step_size(num_steps: int, distill_interval: int = 1) -> float:
    """The step-size value a distilled model embeds next to t (official: x2 the steps per quarter)."""
    if num_steps == 12:  # the shortcut grid: interval 1 is a 1/16 step, interval 2 a 1/8 step
        return 4 / distill_interval * 2
    return num_steps / 4 * 2


class MagiDiT(nn.Module):
    """The DiT. Parameter names equal the official checkpoint keys, so official weights load unchanged."""

    def __init__(self, config: ModelConfig, *, distill: bool = False, fp8_quant: bool = False) -> None:
        super().__init__()
        self.config = config
        self.distill = distill
        self.fp8_quant = fp8_quant
        c = config
        patch = (c.t_patch_size, c.patch_size, c.patch_size)
        self.x_embedder = nn.Conv3d(c.in_channels, c.hidden_size, kernel_size=patch, stride=patch, bias=False)
        self.t_embedder = TimestepEmbedder(c.cond_hidden_size)
        self.y_embedder = CaptionEmbedder(c.caption_channels, c.xattn_hidden_size, c.cond_hidden_size, c.caption_max_length)
        self.rope = LearnableRotary3D(c.rope_dim)
        self.videodit_blocks = TransformerBlocks(c, fp8_quant)
        self.final_linear = FinalLinear(c.hidden_size, c.patch_size * c.patch_size * c.t_patch_size * c.out_channels)
        self.apply_precision(parse_dtype(c.params_dtype))
        # Set by magi1.parallel.parallelize_dit: shards the tokens, wraps the attention core and runs this
        # rank's stage of layers (the plan does all communication; this file has none). None on one process.
        self.parallel = None
        # Training only: recompute each layer's activations in the backward pass instead of keeping them.
        self.gradient_checkpointing = False
        self.eval()

    def enable_gradient_checkpointing(self) -> "MagiDiT":
        """Keep only each layer's input for the backward pass and recompute the rest (diffusers' name)."""
        self.gradient_checkpointing = True
        return self

    def disable_gradient_checkpointing(self) -> "MagiDiT":
        self.gradient_checkpointing = False
        return self

    # ------------------------------------------------------------------ precision
    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the residual stream: that of the (never quantized, never promoted) first pre-norm."""
        return self.videodit_blocks.layers[0].self_attention.linear_qkv.layer_norm.weight.dtype

    def apply_precision(self, dtype: torch.dtype | str) -> "MagiDiT":
        """Cast to `dtype`, then re-promote the float32 islands (official `_high_precision_promoter`).

        FP8 linears keep their own parameter dtypes (float8 weights, float32 scales).
        """
        dtype = parse_dtype(dtype)
        for module_name, module in self.named_modules():
            if hasattr(module, "weight_scale"):  # an FP8 linear: its dtypes are part of its format
                continue
            for name, param in list(module.named_parameters(recurse=False)):
                full = f"{module_name}.{name}" if module_name else name
                target = torch.float32 if high_precision_param(full) else dtype
                if param.dtype != target:
                    module._parameters[name] = nn.Parameter(param.detach().to(target), requires_grad=param.requires_grad)
        return self

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        xattn_mask: torch.Tensor,
        kv_range: torch.Tensor,
        *,
        null_adaln: bool | torch.Tensor,
        kv_cache: KVCache | KVCacheBatch | None = None,
        slice_point: int = 0,
        read_cache: bool = False,
        write_cache: bool = False,
        skip_last_chunk_write: bool = False,
        step_size: float | None = None,
        return_intermediates: bool = False,
    ):
        """Velocity for R chunks.

        x: (B, C_latent, R*cw, h, w); t: (B, R) in [0, 1] (1 = clean); y: (B*R, 1, Lc, Ct) caption rows
        (row b*R + r); xattn_mask: (B*R, 1, Lc) truthy on valid caption tokens; kv_range: (B*R, 2) int key
        spans; null_adaln: True -> adaLN null row -1 (unconditional), False -> row -2 (per sample if a (B,)
        tensor). Cache: touched iff kv_cache is given and (read_cache or slice_point > 0); the keys are then
        [cached chunks 0..slice_point-1 | this call] and, with write_cache, this call's K/V are stored at
        chunk slice_point onward (minus the last chunk with skip_last_chunk_write).
        Returns (B, C_latent, R*cw, h, w) float32, or (out, intermediates) with return_intermediates.
        """
        c = self.config
        dtype = self.compute_dtype
        batch, _, frames, height, width = x.shape
        chunks = t.shape[1]
        p, pt = c.patch_size, c.t_patch_size
        if t.shape[0] != batch:
            raise ValueError(f"t has {t.shape[0]} rows for a batch of {batch}")
        if frames % (chunks * pt) or height % p or width % p:
            raise ValueError(f"x {tuple(x.shape)} does not split into {chunks} chunks of {pt}x{p}x{p} patches")
        if y.shape[0] != batch * chunks or xattn_mask.shape[0] != batch * chunks or kv_range.shape[0] != batch * chunks:
            raise ValueError(
                f"y, xattn_mask and kv_range need B*R = {batch * chunks} rows, got "
                f"{y.shape[0]}, {xattn_mask.shape[0]}, {kv_range.shape[0]}"
            )
        if self.distill and step_size is None:
            raise ValueError("a distilled model needs step_size (see distill_step_size)")
        if not self.distill and step_size is not None:
            raise ValueError("step_size is only for distilled models")
        record: dict[str, torch.Tensor] | None = {} if return_intermediates else None
        if record is not None and self.parallel is not None:
            raise ValueError("return_intermediates is not available with a parallel plan")

        # ---- patch embedding (float32 region)
        x = x * c.x_rescale_factor  # in x's own dtype: bf16 for official prefix extraction
        if c.half_channel_vae:
            x = torch.cat([x, x], dim=1)
        x = x.float()
        tokens = nn.functional.conv3d(x, self.x_embedder.weight.float(), stride=self.x_embedder.stride)
        _, hidden, token_frames, rows, cols = tokens.shape
        # (B, D, Tt, Hp, Wp) -> (B, S, D), S ordered (frame, row, col)
        tokens = tokens.to(dtype).flatten(2).transpose(1, 2).contiguous()
        seq = tokens.shape[1]
        chunk_frames = token_frames // chunks
        ctn = chunk_frames * rows * cols

        # ---- rotary tables: this call's frames continue the numbering of the slice_point cached chunks
        rope_sin, rope_cos = self.rope.sin_cos(
            frames=token_frames, rows=rows, cols=cols, first_frame=chunk_frames * slice_point
        )

        # ---- this process's tokens [lo, hi) of every batch element (all of them without a parallel plan);
        # rope rows, gates and cross-attention queries follow the shard, self attention sees all tokens
        lo, hi = (0, seq) if self.parallel is None else self.parallel.token_slice(seq)
        sharded = (lo, hi) != (0, seq)
        if sharded:
            tokens = tokens[:, lo:hi].contiguous()  # (B, hi - lo, D)
            rope_sin, rope_cos = rope_sin[lo:hi], rope_cos[lo:hi]

        # ---- condition (B, R, cond): time embedding (+ step size) + adaLN null row
        t_flat = t.float().flatten()
        t_emb = self.t_embedder(t_flat, round_to=dtype)
        if step_size is not None:
            t_emb = t_emb + self.t_embedder(torch.full_like(t_flat, float(step_size)), round_to=dtype)
        null_mask = torch.as_tensor(null_adaln, dtype=torch.bool, device=x.device).reshape(-1)
        y_adaln = self.y_embedder.adaln_vector(null_mask)  # (1 or B, cond)
        condition = (t_emb.reshape(batch, chunks, -1) + y_adaln[:, None, :]).to(dtype)

        # ---- caption tokens of every chunk row, packed in row order
        mask = xattn_mask.reshape(batch * chunks, -1).bool()
        caption_rows = y.reshape(batch * chunks, mask.shape[1], -1)
        caption_tokens = self.y_embedder.project_tokens(caption_rows[mask].float()).to(dtype)
        caption_lengths = mask.sum(dim=1).tolist()

        # ---- attention plans (built once, used by every layer)
        query_ranges = [(i * ctn, (i + 1) * ctn) for i in range(batch * chunks)]
        caption_starts = [0]
        for n in caption_lengths:
            caption_starts.append(caption_starts[-1] + n)
        cross = RangeAttention(shard_chunk_ranges(batch, chunks, ctn, lo, hi),
                               list(zip(caption_starts[:-1], caption_starts[1:])))
        key_ranges, exchange = self._plan_self_attention(
            kv_range, batch, chunks, ctn, seq, kv_cache, slice_point, read_cache, write_cache, skip_last_chunk_write
        )
        ctx = LayerContext(
            batch=batch,
            chunks=chunks,
            chunk_tokens=ctn,
            condition=condition,
            rope_sin=rope_sin,
            rope_cos=rope_cos,
            caption_tokens=caption_tokens,
            self_attention=RangeAttention(query_ranges, key_ranges),
            cross_attention=cross,
            exchange_kv=exchange,
            token_chunks=torch.arange(lo, hi, device=x.device) // ctn if sharded else None,
            attention_core=None if self.parallel is None else self.parallel.attention_core,
        )
        if record is not None:
            record["pre.x_tokens"] = tokens.transpose(0, 1)
            record["pre.condition"] = condition
            chunk_of_token = torch.arange(seq, device=x.device) // ctn
            record["pre.condition_map"] = (torch.arange(batch, device=x.device)[None, :] * chunks + chunk_of_token[:, None])
            record["pre.rope"] = torch.cat([rope_sin, rope_cos], dim=-1)
            record["pre.y_xattn_flat"] = caption_tokens
            record["pre.xattn_cu_seqlens_q"] = torch.tensor([0] + [r[1] for r in query_ranges], dtype=torch.int32)
            record["pre.xattn_cu_seqlens_k"] = torch.tensor(caption_starts, dtype=torch.int32)
            record["pre.core_q_range"] = torch.tensor(query_ranges, dtype=torch.int32).reshape(-1, 2)
            record["pre.core_k_range"] = kv_range.to(torch.int32)

        # ---- transformer
        if self.parallel is not None:  # this rank's stage on its tokens; returns every token's output
            out = self.parallel.run_stage(self._run_layers, self._output_head, tokens, ctx,
                                          self.final_linear.linear.out_features)  # (B, S, pt*p*p*C_out)
        else:
            h = tokens
            for i, layer in enumerate(self.videodit_blocks.layers):
                h = self._layer_call(layer, h, ctx)
                if record is not None:
                    record[f"layer{i}.out"] = h.transpose(0, 1)
            h = self.videodit_blocks.final_layernorm(h.float())
            out = self.final_linear(h)  # (B, S, pt*p*p*C_out) float32
            if record is not None:
                record["blocks.out_after_final_layernorm"] = h.transpose(0, 1)
                record["final_linear.out"] = out.transpose(0, 1)

        # ---- unpatchify: feature (pt, ph, pw, C) with C fastest -> (B, C, Tt*pt, Hp*p, Wp*p)
        out = out.reshape(batch, token_frames, rows, cols, pt, p, p, c.out_channels)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(batch, c.out_channels, token_frames * pt, rows * p, cols * p)
        if c.half_channel_vae:
            out = out[:, : c.out_channels // 2]
        out = out / c.x_rescale_factor
        return (out, record) if record is not None else out

    def _run_layers(self, h: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """(B, S, D) through every layer this model holds -> (B, S, D)."""
        for layer in self.videodit_blocks.layers:
            h = self._layer_call(layer, h, ctx)
        return h

    def _layer_call(self, layer: nn.Module, h: torch.Tensor, ctx) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, h, ctx, use_reentrant=False)
        return layer(h, ctx)

    def _output_head(self, h: torch.Tensor) -> torch.Tensor:
        """(B, S, D) -> (B, S, pt*p*p*C_out) float32: final norm and linear."""
        return self.final_linear(self.videodit_blocks.final_layernorm(h.float()))

    def _plan_self_attention(
        self,
        kv_range: torch.Tensor,
        batch: int,
        chunks: int,
        ctn: int,
        seq: int,
        kv_cache: KVCache | None,
        slice_point: int,
        read_cache: bool,
        write_cache: bool,
        skip_last_chunk_write: bool,
    ):
        """Key ranges in the packed keys each layer will see, and the cache exchange (or None)."""
        spans = [(int(s), int(e)) for s, e in kv_range.reshape(-1, 2).tolist()]
        touches_cache = kv_cache is not None and (read_cache or slice_point > 0)
        if not touches_cache:
            for s, e in spans:
                if not 0 <= s <= e <= batch * seq:
                    raise ValueError(f"kv_range [{s}, {e}) outside the {batch * seq} keys of this call")
            return spans, None

        cached = slice_point * ctn  # keys per batch element: [cache rows 0..cached | this call's seq tokens]
        keys_per_sample = cached + seq
        local = []
        for i, (s, e) in enumerate(spans):
            offset = (i // chunks) * keys_per_sample
            s, e = s - offset, e - offset
            if not 0 <= s <= e <= keys_per_sample:
                raise ValueError(f"kv_range row {i} [{s}, {e}) outside the {keys_per_sample} keys of its sample")
            local.append((i // chunks, s, e))
        # Rows below the lowest span start are never attended: do not read them (they may be released).
        first_row = min([cached] + [s for _, s, _ in local])
        width = keys_per_sample - first_row
        spans = [(b * width + s - first_row, b * width + e - first_row) for b, s, e in local]
        write_rows = 0
        if write_cache:
            caches = len(kv_cache) if isinstance(kv_cache, KVCacheBatch) else 1
            if batch != caches:
                raise ValueError(f"writing the KV cache needs one cache per batch element ({caches} for {batch})")
            write_rows = seq - (ctn if skip_last_chunk_write else 0)
        kv_cache.set_block_tokens(ctn)
        access = CacheAccess(kv_cache, read_start=first_row, read_end=cached, write_rows=max(write_rows, 0))
        return spans, access.exchange


def shard_chunk_ranges(batch: int, chunks: int, ctn: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """Per chunk row (b * chunks + r), its tokens within the shard [lo, hi) of each batch element, as
    ranges of the packed shard (batch-major, hi - lo tokens per element); empty where a chunk lies outside."""
    local = hi - lo
    ranges = []
    for b in range(batch):
        for r in range(chunks):
            start, end = min(max(r * ctn, lo), hi) - lo, min(max((r + 1) * ctn, lo), hi) - lo
            ranges.append((b * local + start, b * local + end))
    return ranges


def official_forward(
    model: MagiDiT,
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    caption_dropout_mask: torch.Tensor,
    xattn_mask: torch.Tensor,
    kv_range: torch.Tensor,
    inference_params: KVCache | None = None,
    **official_kwargs: Any,
) -> torch.Tensor:
    """Run `model` with the official `VideoDiTModel.forward` calling convention.

    Mapping onto `MagiDiT.forward`:
      caption_dropout_mask            -> null_adaln
      inference_params                -> kv_cache (a KVCache; its `update_kv_cache` flag -> write_cache)
      slice_point                     -> slice_point
      extract_prefix_video_feature,
      fwd_extra_1st_chunk             -> read_cache (either one)
      distill_nearly_clean_chunk      -> skip_last_chunk_write
      num_steps, distill_interval     -> step_size = distill_step_size(...) when model.distill (else unused)
      denoising_range_num             -> checked against t.shape[1]
      range_num, chunk_width, denoise_step_of_each_chunk -> unused (implied by the shapes)
    """
    known = {
        "slice_point", "range_num", "denoising_range_num", "fwd_extra_1st_chunk", "extract_prefix_video_feature",
        "distill_nearly_clean_chunk", "num_steps", "distill_interval", "chunk_width", "denoise_step_of_each_chunk",
    }
    unknown = set(official_kwargs) - known
    if unknown:
        raise TypeError(f"official_forward got unexpected keyword(s): {', '.join(sorted(unknown))}")
    kw = official_kwargs
    denoising_range_num = kw.get("denoising_range_num", t.shape[1])
    if denoising_range_num != t.shape[1]:
        raise ValueError(f"denoising_range_num {denoising_range_num} but t has {t.shape[1]} chunks")
    step_size = None
    if model.distill:
        step_size = distill_step_size(int(kw["num_steps"]), int(kw.get("distill_interval", 1)))
    return model(
        x,
        t,
        y,
        xattn_mask,
        kv_range,
        null_adaln=caption_dropout_mask,
        kv_cache=inference_params,
        slice_point=int(kw.get("slice_point", 0)),
        read_cache=bool(kw.get("extract_prefix_video_feature", False) or kw.get("fwd_extra_1st_chunk", False)),
        write_cache=bool(getattr(inference_params, "update_kv_cache", False)),
        skip_last_chunk_write=bool(kw.get("distill_nearly_clean_chunk", False)),
        step_size=step_size,
    )
