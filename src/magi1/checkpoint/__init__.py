"""Official MAGI-1 checkpoint folders: find them, read them (safetensors, sharded, .zst), write them."""

from .layout import CheckpointError, ShardPlan, plan_shards, weight_dir, weight_dir_name
from .loader import (
    CheckpointReader,
    LoadReport,
    TensorInfo,
    is_high_precision,
    load_dit,
    load_state_dict_into,
    pipeline_stage_layers,
    promote_high_precision,
    read_state_dict,
    rename_kept_layers,
    runtime_dtype_for,
    select_pipeline_stage,
)
from .writer import save_official

__all__ = [
    "CheckpointError",
    "CheckpointReader",
    "LoadReport",
    "ShardPlan",
    "TensorInfo",
    "is_high_precision",
    "load_dit",
    "load_state_dict_into",
    "pipeline_stage_layers",
    "plan_shards",
    "promote_high_precision",
    "read_state_dict",
    "rename_kept_layers",
    "runtime_dtype_for",
    "save_official",
    "select_pipeline_stage",
    "weight_dir",
    "weight_dir_name",
]
