"""Official MAGI-1 checkpoint folders: find them, read them (safetensors, sharded, .zst), write them.

Names load on first use (magi1.lazy_exports): the torch-free submodules import without torch.
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# public name -> the submodule that defines it
_WHERE = {
    "CheckpointError": "layout",
    "CheckpointReader": "loader",
    "LoadReport": "loader",
    "ShardPlan": "layout",
    "TensorInfo": "loader",
    "is_high_precision": "loader",
    "load_dit": "loader",
    "load_state_dict_into": "loader",
    "pipeline_stage_layers": "loader",
    "plan_shards": "layout",
    "promote_high_precision": "loader",
    "refuse_packed_checkpoint": "packed_layout",
    "read_state_dict": "loader",
    "rename_kept_layers": "loader",
    "runtime_dtype_for": "loader",
    "save_official": "writer",
    "select_pipeline_stage": "loader",
    "weight_dir": "layout",
    "weight_dir_name": "layout",
}

__getattr__, __all__ = lazy_exports(__name__, _WHERE)
