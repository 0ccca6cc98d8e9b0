"""The names of the placements (torch-free, so the command line can list them before anything loads)."""

OFFLOAD_MODES = ("none", "model", "blocks")
DEFAULT_BLOCKS_ON_DEVICE = 2  # the running layer and one prefetched: the copy overlaps the compute
WEIGHT_FORMATS = ("auto", "bf16", "fp8")
TRAIN_MODES = ("lora", "full")  # `magi1 plan --train`, memory/training.py
