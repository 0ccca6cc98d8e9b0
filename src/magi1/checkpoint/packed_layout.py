"""MAGI-1.1's packed layer layout: recognised from the file headers and refused in one sentence.

The MAGI-1.1 24B base checkpoint stacks every layer's tensor of one kind into a single tensor, e.g.
`videodit_blocks.layers.self_attention.linear_qkv.weight` of shape (48, 14336, 6144), where the MAGI-1
layout (the one the official code and this loader read) has one tensor per layer and projection:
`videodit_blocks.layers.{i}.self_attention.linear_qkv.{q,qx,k,v}.weight`.

The leading axis is clearly the layer. What is not published is how the 14336 fused rows split into
q (6144), qx (6144), k (1024) and v (1024): the order of the four blocks, and whether heads or query
groups are interleaved. A wrong split would load without complaint and generate noise, and the official
code cannot load this layout either (upstream issue #123, unanswered). So until the split is documented
the layout is refused by name, before any weights are read, instead of being guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from .layout import CheckpointError

# "videodit_blocks.layers.<kind>" with no layer number after "layers."
_PACKED_KEY = re.compile(r"^videodit_blocks\.layers\.(?!\d+\.)(.+)$")
# The tensor to show in the message when it is there: the one whose split is the open question.
_EXAMPLE_KEY = "videodit_blocks.layers.self_attention.linear_qkv.weight"


def packed_layer_keys(names) -> list[str]:
    """The names that hold all layers of one kind stacked together (empty for the MAGI-1 layout)."""
    return sorted(name for name in names if _PACKED_KEY.match(name))


def packed_layout_message(where: str, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The one-sentence refusal for a checkpoint in the packed layout, or None when it is not packed."""
    packed = packed_layer_keys(shapes)
    if not packed:
        return None
    example = _EXAMPLE_KEY if _EXAMPLE_KEY in shapes else packed[0]
    shape = tuple(shapes[example])
    layers = f"{shape[0]} " if len(shape) >= 2 else ""
    return (
        f"{where} holds a MAGI-1.1 packed checkpoint: its {layers}transformer layers are stacked into one "
        f"tensor per weight kind ({len(packed)} such tensors, e.g. {example} of shape {shape}) instead of one "
        f"tensor per layer (videodit_blocks.layers.<i>.…), and magi1 does not load this layout yet because "
        f"how the fused linear_qkv rows divide into q, qx, k and v is not published (the official code cannot "
        f"load it either, upstream issue #123); use a checkpoint in the MAGI-1 per-layer layout"
    )


def refuse_packed_checkpoint(folder: str | Path) -> None:
    """Raise CheckpointError when the weight folder is in the packed layout; reads the shard headers only."""
    from .layout import plan_shards
    from .loader import read_shard_header

    shapes: dict[str, tuple[int, ...]] = {}
    for plan in plan_shards(folder):
        header = read_shard_header(plan)
        names = plan.names if plan.names is not None else tuple(header)
        shapes.update((name, header[name].shape) for name in names if name in header)
    message = packed_layout_message(str(folder), shapes)
    if message:
        raise CheckpointError(message)
