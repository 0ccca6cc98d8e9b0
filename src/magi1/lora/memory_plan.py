"""The device memory a training run needs, estimated from the config before anything loads.

This is an estimate written for training (issue 18) until the project's memory planner (`magi1.memory`,
issue 14) lands; `training_memory_plan` is the one function to switch over to it then. Counted on the device:

- DiT weights: every parameter in its dtype (the float32 islands in float32, the rest in the base dtype);
- trainable state: adapter (or, for full fine-tuning, every) weight as a float32 master + its gradient + two
  AdamW moments = 16 bytes per trained parameter;
- activations: with gradient checkpointing each layer keeps its input (tokens x hidden) and one layer at a time
  is recomputed with everything its backward needs; without it every layer keeps that. Attention runs through
  SDPA kernels that keep no tokens x tokens matrix;
- the runtime's own overhead (allocator slack, kernels' workspaces): a flat 10 % on top.

T5 and the VAE are not counted: they run before training (caching) and are freed before the DiT loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

GIB = 2**30
OVERHEAD = 0.10


@dataclass
class MemoryPlan:
    rows: list[tuple[str, int]] = field(default_factory=list)   # (what, bytes)
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.rows)

    def format(self) -> str:
        width = max(len(name) for name, _ in self.rows)
        lines = ["memory plan (estimate, device):"]
        lines += [f"  {name:<{width}}  {b / GIB:8.2f} GiB" for name, b in self.rows]
        lines.append(f"  {'total':<{width}}  {self.total_bytes / GIB:8.2f} GiB")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def _element_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def dit_parameter_bytes(model_config, base_dtype: torch.dtype) -> tuple[int, int]:
    """(parameter count, bytes) of the DiT with its float32 islands, counted on the meta device (no memory)."""
    from ..models.dit import MagiDiT, high_precision_param

    with torch.device("meta"):
        model = MagiDiT(model_config)
    count = total = 0
    for name, p in model.named_parameters():
        count += p.numel()
        total += p.numel() * (4 if high_precision_param(name) else _element_bytes(base_dtype))
    return count, total


def adapter_parameter_count(model_config, rank: int, targets: list[str]) -> int:
    """Parameters of rank-r adapters on every DiT linear whose name ends with one of `targets`."""
    from torch import nn

    from ..models.dit import MagiDiT

    with torch.device("meta"):
        model = MagiDiT(model_config)
    count = 0
    for name, module in model.named_modules():
        if type(module) is nn.Linear and any(name == t or name.endswith("." + t) for t in targets):
            count += rank * (module.in_features + module.out_features)
    return count


def layer_activation_bytes(tokens: int, model_config, compute_bytes: int) -> int:
    """What one layer keeps for its backward pass, per call of `tokens` tokens (all samples of the batch).

    Counted per token: the pre-norm output, q, qx, k, v, the self and cross attention outputs and their
    interleaved copy (compute dtype); the rotated q / k, the projected output and the two gated residual sums
    (float32); the MLP's pre-norm output, fc1 output and activation (compute dtype). Ranks of adapters are
    small next to these and left out.
    """
    c = model_config
    q = c.num_attention_heads * c.kv_channels
    kv = c.num_query_groups * c.kv_channels
    compute = c.hidden_size * 3 + q * 2 + kv * 2 + q * 4 + (2 * c.ffn_hidden_size if not c.gated_linear_unit
                                                               else 3 * c.ffn_hidden_size)
    float32 = q + kv + c.hidden_size * 3
    return tokens * (compute * compute_bytes + float32 * 4)


def training_memory_plan(config, *, height: int, width: int, chunks: int, batch: int, base_dtype: torch.dtype,
                         compute_dtype: torch.dtype, full: bool, rank: int, targets: list[str],
                         checkpointing: bool) -> MemoryPlan:
    """Device memory of one training step of `batch` clips of `chunks` chunks at height x width (see the module)."""
    m, r = config.model_config, config.runtime_config
    params, weight_bytes = dit_parameter_bytes(m, torch.float32 if full else base_dtype)
    latent_h, latent_w = height // 8, width // 8
    tokens_per_frame = (latent_h // m.patch_size) * (latent_w // m.patch_size)
    tokens = batch * chunks * r.chunk_width * tokens_per_frame
    compute_bytes = _element_bytes(compute_dtype)
    plan = MemoryPlan()
    plan.rows.append((f"DiT weights ({params / 1e9:.2f} B params, {'float32' if full else str(base_dtype)[6:]})",
                      weight_bytes))
    trained = params if full else adapter_parameter_count(m, rank, targets)
    plan.rows.append((f"{'all weights' if full else f'LoRA rank {rank}'}: {trained / 1e6:.1f} M trained params "
                      "x (fp32 master + grad + 2 AdamW moments)", trained * 16))
    one_layer = layer_activation_bytes(tokens, m, compute_bytes)
    if checkpointing:
        kept = m.num_layers * tokens * m.hidden_size * compute_bytes
        plan.rows.append((f"layer inputs kept ({m.num_layers} layers x {tokens} tokens), checkpointing", kept))
        plan.rows.append(("one layer recomputed for its backward", one_layer))
    else:
        plan.rows.append((f"activations of {m.num_layers} layers ({tokens} tokens), no checkpointing",
                          m.num_layers * one_layer))
    embed = tokens * (m.in_channels * 4 + m.hidden_size * 4) + batch * chunks * m.caption_max_length * (
        m.caption_channels + m.xattn_hidden_size) * 4
    plan.rows.append(("inputs, targets, embeddings, output head", embed + tokens * m.out_channels * 4 * 3))
    plan.rows.append(("allocator and kernel overhead (10 %)", int(plan.total_bytes * OVERHEAD)))
    plan.notes.append(f"{batch} clip(s) x {chunks} chunk(s) of {r.chunk_width} latent frames at {width}x{height}: "
                      f"{tokens} tokens per step; T5 and the VAE are freed before training (not counted)")
    return plan
