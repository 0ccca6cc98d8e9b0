"""Print the planner tables of docs/memory.md (4.5B and 24B; base, distill, distill+fp8; two sizes; 1 and 4
chunks in flight; every offload mode). Run: python scripts/memory_tables.py > /tmp/tables.md"""

from magi1.config import load_config
from magi1.memory.planner import RunShape, format_bytes, plan_every_mode

SIZES = ((720, 720), (480, 832))
print("| model | size | chunks in flight | mode | DiT weights on device | KV cache (host) | activations | "
      "peak device (predicted) | peak device (measured) | peak host (predicted) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in ("4.5B_base", "4.5B_distill", "4.5B_distill_quant", "24B_base", "24B_distill", "24B_distill_quant"):
    config = load_config(name)
    for height, width in SIZES:
        for window in (1, 4):
            shape = RunShape.from_config(config, height=height, width=width, window_size=window)
            for plan in plan_every_mode(config, shape):
                print(f"| {name} | {height}x{width} | {window} | {plan.label} | {format_bytes(plan.dit_resident)} | "
                      f"{format_bytes(plan.kv_cache)} | {format_bytes(plan.dit_activations)} | "
                      f"{format_bytes(plan.peak_device)} | not measured | {format_bytes(plan.peak_host)} |")
