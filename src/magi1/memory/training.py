"""Training memory: what one optimizer step of `magi1 train lora` (LoRA or full fine-tuning) keeps on the device.

A pure function of the config, the training size and the method, like the inference planner: the DiT is
counted on the meta device and nothing loads. Counted:

- DiT weights: LoRA keeps the base weights in their dtype (float32 islands as such); full fine-tuning keeps
  every weight as a float32 master (the weights it trains);
- trained state: LoRA adapters are float32 masters + grad + two AdamW moments (16 bytes a parameter); full
  fine-tuning adds grad + two moments to the masters already counted (12 bytes a parameter);
- activations: the tensors autograd saves in one transformer layer, term by term as `models/dit_layers.py`
  makes them (`layer_saved_bytes`). Without gradient checkpointing every layer keeps them until its
  backward; with it each layer keeps only its input and one layer at a time is recomputed. The backward of
  that layer needs a few gradients of its widest tensors on top (`backward_working_bytes`);
- inputs, targets and the output head (embedded tokens, rotary tables, caption tokens, the float32 head);
- on an accelerator, 10 % for the caching allocator's slack and kernels' workspaces.

T5 and the VAE are not counted: `magi1 train lora` runs them first to fill its cache and frees them before
the DiT loads. Attention runs through SDPA kernels that keep no tokens x tokens matrix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from ..config import MagiConfig, ModelConfig
from ..errors import InputError
from .modes import TRAIN_MODES
from .sizes import dit_weights, dtype_bytes

ACCELERATOR_OVERHEAD = 0.10
ADAM_STATE_BYTES = 8  # two float32 moments
FLOAT32 = 4


@dataclass(frozen=True)
class TrainShape:
    """One micro-batch: `batch` clips of `chunks` chunks at height x width pixels."""

    height: int
    width: int
    chunks: int
    batch: int = 1

    @classmethod
    def from_config(cls, config: MagiConfig, **overrides) -> "TrainShape":
        """Defaults as `magi1 train lora` trains: the config's video size, window + 1 chunks, one clip."""
        r = config.runtime_config
        values = dict(height=r.video_size_h, width=r.video_size_w, chunks=r.window_size + 1, batch=1)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def tokens(self, config: MagiConfig) -> int:
        m, r = config.model_config, config.runtime_config
        per_frame = (self.height // 8 // m.patch_size) * (self.width // 8 // m.patch_size)
        return self.batch * self.chunks * (r.chunk_width // m.t_patch_size) * per_frame


@dataclass(frozen=True)
class TrainingPlan:
    """Predicted bytes of one training step; `rows` are (what, bytes) and sum to `peak_bytes`."""

    mode: str
    checkpointing: bool
    trained_parameters: int
    tokens: int
    weights: int
    trained_state: int
    activations: int          # what the layers keep, plus the one recomputed / backward at a time
    inputs_and_head: int
    overhead: int
    rows: tuple = field(default=(), compare=False)
    notes: tuple = field(default=(), compare=False)

    @property
    def peak_bytes(self) -> int:
        return self.weights + self.trained_state + self.activations + self.inputs_and_head + self.overhead

    def format(self, title: str = "training memory plan (estimate, device)") -> str:
        from .planner import format_bytes

        width = max(len(name) for name, _ in self.rows)
        lines = [f"{title}:"]
        lines += [f"  {name:<{width}}  {format_bytes(b):>11}" for name, b in self.rows]
        lines.append(f"  {'total':<{width}}  {format_bytes(self.peak_bytes):>11}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- parameters
@functools.lru_cache(maxsize=16)
def _dit_inventory(model_key: tuple, distill: bool) -> tuple[int, tuple[tuple[str, int, int], ...]]:
    """(parameter count, (name, in, out) of every plain linear) of the DiT, built on the meta device."""
    from torch import nn

    from ..models.dit import MagiDiT

    with torch.device("meta"):
        model = MagiDiT(ModelConfig(**dict(model_key)), distill=distill)
    linears = tuple((name, module.in_features, module.out_features) for name, module in model.named_modules()
                    if type(module) is nn.Linear)
    return sum(p.numel() for p in model.parameters()), linears


def _inventory(config: MagiConfig):
    return _dit_inventory(tuple(sorted(vars(config.model_config).items())), bool(config.engine_config.distill))


def dit_parameter_count(config: MagiConfig) -> int:
    return _inventory(config)[0]


def adapter_parameter_count(config: MagiConfig, rank: int, targets: str | list[str] | None = None) -> int:
    """Parameters of rank-r adapters (A: r x in, B: out x r) on every DiT linear `add_lora` would wrap."""
    from ..lora.adapters import resolve_targets

    names = resolve_targets(targets)
    check_targets_exist(config, names)
    return sum(rank * (n_in + n_out) for name, n_in, n_out in _inventory(config)[1]
               if any(name == t or name.endswith("." + t) for t in names))


def check_targets_exist(config: MagiConfig, targets: str | list[str] | None) -> None:
    """Refuse adapter targets that name no linear of this config's DiT (built on the meta device, no weights)."""
    from ..lora.adapters import refuse_missing_targets, resolve_targets

    refuse_missing_targets([name for name, _, _ in _inventory(config)[1]], resolve_targets(targets))


# ---------------------------------------------------------------------------------------------- activations
def layer_saved_bytes(config: MagiConfig, tokens: int, compute: torch.dtype, *, mode: str = "lora",
                      accelerator: bool = True) -> int:
    """Bytes autograd keeps for one transformer layer's backward, over `tokens` tokens (all clips).

    Per token, in the compute dtype (es) unless float32 is named:
      attention: the shared pre-norm output (the adapters' and q/k/v/qx inputs); q's and k's float32
        per-head norm inputs; the rotated q and the [K | V] block SDPA reads, and its output; the cross
        attention's float32 normed queries and its output; the [self | cross] projection input (the
        float32 island GEMM reads it in the compute dtype on an accelerator, widened to float32 on the CPU);
        the float32 post-norm input of the gated projection;
      MLP: the residual after attention (the MLP pre-norm input), the pre-norm output, fc1's output and its
        GELU (or the SwiGLU halves and their float32 copies), the float32 post-norm input;
      full fine-tuning only: the gates train, so each gated product keeps its float32 operand too.
    On the CPU SDPA repeats the grouped keys and values for every query head and keeps that copy.
    """
    if mode not in TRAIN_MODES:
        raise InputError(f"train mode must be one of {', '.join(TRAIN_MODES)}, got {mode!r}")
    m = config.model_config
    es = dtype_bytes(compute)
    d = m.hidden_size
    q = m.num_attention_heads * m.kv_channels
    kv = m.num_query_groups * m.kv_channels
    attention = (d * es                                  # pre-norm output
                 + (q + kv) * FLOAT32                     # q, k norm inputs
                 + q * es + 2 * kv * es + q * es          # rotated q, [K | V], self attention output
                 + q * FLOAT32 + q * es                   # cross: normed queries, output
                 + 2 * q * (es if accelerator else FLOAT32)  # [self | cross] projection input
                 + d * FLOAT32)                           # gated post-norm input
    if not accelerator:
        attention += 2 * q * es                          # GQA keys / values per query head
    if m.gated_linear_unit:
        mlp_hidden = 2 * m.ffn_hidden_size * es + 2 * m.ffn_hidden_size * FLOAT32 + m.ffn_hidden_size * es
    else:
        mlp_hidden = 2 * m.ffn_hidden_size * es
    mlp = d * es + d * es + mlp_hidden + d * FLOAT32
    gates = 2 * d * FLOAT32 if mode == "full" else 0
    return tokens * (attention + mlp + gates)


def backward_working_bytes(config: MagiConfig, tokens: int, compute: torch.dtype) -> int:
    """Gradients alive beside a layer's saved tensors during its backward. The widest moment is the MLP's
    activation backward: fc2's saved input is freed by then, but the gradients of both hidden tensors are
    alive, one hidden tensor more than was saved; plus the float32 residual gradient and its copy."""
    m = config.model_config
    hidden = m.ffn_hidden_size * (2 if m.gated_linear_unit else 1)
    return tokens * (hidden * dtype_bytes(compute) + 2 * m.hidden_size * FLOAT32)


def inputs_and_head_bytes(config: MagiConfig, shape: TrainShape, compute: torch.dtype) -> int:
    """Noisy latents, target and prediction (float32), the embedded tokens, rotary tables, caption tokens
    and their projections, the float32 final norm and head, and the loss's float32 copies."""
    m = config.model_config
    tokens = shape.tokens(config)
    es = dtype_bytes(compute)
    patch = m.in_channels * m.t_patch_size * m.patch_size**2
    latents = tokens * patch * FLOAT32 * 3
    embedded = tokens * (patch * FLOAT32 + m.hidden_size * (FLOAT32 + es))
    rope = 2 * tokens * m.rope_dim * FLOAT32          # sin and cos tables
    rows = shape.batch * shape.chunks * m.caption_max_length
    captions = rows * (m.caption_channels + m.xattn_hidden_size) * FLOAT32 + rows * m.xattn_hidden_size * es
    head = tokens * (m.hidden_size * FLOAT32 * 2 + m.out_channels * m.t_patch_size * m.patch_size**2 * FLOAT32 * 2)
    return latents + embedded + rope + captions + head


# ---------------------------------------------------------------------------------------------- the plan
def plan_training(config: MagiConfig, shape: TrainShape | None = None, *, mode: str = "lora", rank: int = 16,
                  targets: str | list[str] | None = None, weight_dtype: torch.dtype = torch.bfloat16,
                  compute_dtype: torch.dtype = torch.bfloat16, checkpointing: bool = True,
                  accelerator: bool = True) -> TrainingPlan:
    """Predict the peak device memory of one training step (see the module).

    weight_dtype: the frozen base weights' dtype for LoRA (full fine-tuning keeps float32 masters whatever it
    is). compute_dtype: the autocast dtype (or the weights' when there is none). accelerator: False counts
    as the CPU path runs (SDPA's repeated keys, no allocator slack), which is what the tiny-model test measures.
    """
    if mode not in TRAIN_MODES:
        raise InputError(f"train mode must be one of {', '.join(TRAIN_MODES)}, got {mode!r}")
    if mode == "lora" and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise InputError(f"the LoRA rank must be a whole number >= 1, got {rank!r}")
    shape = shape or TrainShape.from_config(config)
    check_train_shape(shape)
    m = config.model_config
    tokens = shape.tokens(config)
    full = mode == "full"
    weights_dtype = torch.float32 if full else weight_dtype
    weights = dit_weights(config, weights_dtype, fp8=False).total
    if full:
        trained = dit_parameter_count(config)
        state = trained * (FLOAT32 + ADAM_STATE_BYTES)   # grads and moments; the masters are the weights
        state_label = f"all weights: {_param_count(trained)} params x (grad + 2 AdamW moments)"
    else:
        trained = adapter_parameter_count(config, rank, targets)
        state = trained * (2 * FLOAT32 + ADAM_STATE_BYTES)
        state_label = f"LoRA rank {rank}: {_param_count(trained)} params x (fp32 master + grad + 2 AdamW moments)"

    one_layer = layer_saved_bytes(config, tokens, compute_dtype, mode=mode, accelerator=accelerator)
    working = backward_working_bytes(config, tokens, compute_dtype)
    rows = [(f"DiT weights ({str(weights_dtype)[6:]}{'' if full else ', frozen'})", weights), (state_label, state)]
    if checkpointing:
        kept = m.num_layers * tokens * m.hidden_size * dtype_bytes(compute_dtype)
        rows.append((f"layer inputs kept ({m.num_layers} layers x {tokens} tokens), gradient checkpointing", kept))
        rows.append(("one layer recomputed for its backward, and its gradients", one_layer + working))
        activations = kept + one_layer + working
    else:
        rows.append((f"saved activations of {m.num_layers} layers ({tokens} tokens), no checkpointing",
                     m.num_layers * one_layer))
        rows.append(("gradients inside one layer's backward", working))
        activations = m.num_layers * one_layer + working
    io = inputs_and_head_bytes(config, shape, compute_dtype)
    rows.append(("inputs, targets, embeddings, output head", io))
    subtotal = sum(b for _, b in rows)
    overhead = int(subtotal * ACCELERATOR_OVERHEAD) if accelerator else 0
    if accelerator:
        rows.append((f"allocator slack and kernel workspaces ({int(ACCELERATOR_OVERHEAD * 100)} %)", overhead))
    notes = (f"{shape.batch} clip(s) x {shape.chunks} chunk(s) of {config.runtime_config.chunk_width} latent frames "
             f"at {shape.width}x{shape.height}: {tokens} tokens a step; compute {str(compute_dtype)[6:]}",
             "T5 and the VAE fill the cache first and are freed before the DiT loads (not counted)")
    return TrainingPlan(mode, checkpointing, trained, tokens, weights, state, activations, io, overhead,
                        tuple(rows), notes)


def check_train_shape(shape: TrainShape) -> None:
    for name, value in (("height", shape.height), ("width", shape.width)):
        if value <= 0 or value % 16:
            raise InputError(f"{name} must be a positive multiple of 16, got {value}")
    if shape.chunks < 1:
        raise InputError(f"chunks must be a whole number >= 1, got {shape.chunks}")
    if shape.batch < 1:
        raise InputError(f"batch must be a whole number >= 1, got {shape.batch}")


def _param_count(count: int) -> str:
    """'4.47 B', '1.9 M' or '35 K': the demo's DiT read '0.00 B' in billions."""
    if count >= 1e9:
        return f"{count / 1e9:.2f} B"
    if count >= 1e6:
        return f"{count / 1e6:.1f} M"
    return f"{count / 1e3:.0f} K"
