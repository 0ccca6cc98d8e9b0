"""Per-op roofline of a DiT call, measured in the same process, and the profile share of everything else.

A DiT call is a list of GEMMs (each linear at its own shape) and attention calls (each (query, key) span).
Its roofline is the sum over those ops of FLOPs / the rate this machine reaches on that op alone, measured
now, beside the step it is compared with: a GEMM of the op's shape (rows capped, rates do not depend on the
row count beyond a few thousand), SDPA on the op's (query, key) lengths. For half precision each op takes
the better of torch's native half kernel and the float32 kernel on widened operands (conversions included,
`magi1.ops.half_math`), whichever this CPU runs faster. Elementwise work (norms, GELU, rotary, gates, copies)
is not in the roofline: `rest_share` measures it with the profiler instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from magi1.ops import half_math
from magi1.ops.attention import attend

GEMM_ROWS_CAP = 2048
# Profiler op names that are GEMM or attention kernels; everything else is "the rest".
KERNEL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_convolution", "aten::convolution",
              "aten::mkldnn_convolution", "aten::slow_conv3d_forward", "mkldnn::_linear_pointwise",
              "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
              "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention",
              "aten::_scaled_dot_product_cudnn_attention")


@dataclass(frozen=True)
class Gemm:
    name: str
    rows: int
    inner: int
    cols: int
    count: int

    @property
    def flops(self) -> float:
        return 2.0 * self.rows * self.inner * self.cols * self.count


@dataclass(frozen=True)
class Attention:
    name: str
    q_len: int
    k_len: int
    count: int  # calls of this shape per forward (all layers)

    def flops(self, heads: int, head_dim: int) -> float:
        return 4.0 * heads * self.q_len * self.k_len * head_dim * self.count


def dit_ops(c, x_shape, chunks: int, kv_range: torch.Tensor, xattn_mask: torch.Tensor):
    """(GEMMs, attention calls) of one MagiDiT call, from its arguments (the model's own grouping of spans)."""
    batch, _, frames, height, width = x_shape
    ctn = (frames // chunks // c.t_patch_size) * (height // c.patch_size) * (width // c.patch_size)
    s = batch * chunks * ctn
    d, qd, kvd, L = c.hidden_size, c.num_attention_heads * c.kv_channels, c.num_query_groups * c.kv_channels, c.num_layers
    fc1 = 2 * c.ffn_hidden_size if c.gated_linear_unit else c.ffn_hidden_size
    lengths = xattn_mask.reshape(batch * chunks, -1).bool().sum(dim=1).tolist()
    captions = int(sum(lengths))
    patch = c.in_channels * c.patch_size**2 * c.t_patch_size
    gemms = [
        Gemm("q, qx", s, d, qd, 2 * L), Gemm("k, v", s, d, kvd, 2 * L), Gemm("linear_proj", s, 2 * qd, d, L),
        Gemm("fc1", s, d, fc1, L), Gemm("fc2", s, c.ffn_hidden_size, d, L), Gemm("text kv", captions, c.xattn_hidden_size, 2 * kvd, L),
        Gemm("caption proj", captions, c.caption_channels, c.xattn_hidden_size, 1),
        Gemm("patch embed", s, patch, d, 1), Gemm("final linear", s, d, patch, 1),
    ]
    spans = Counter((ctn, int(e) - int(st)) for st, e in kv_range.reshape(-1, 2).tolist())
    attns = [Attention("self", lq, lk, n * L) for (lq, lk), n in sorted(spans.items())]
    attns += [Attention("cross", ctn, lk, n * L) for lk, n in sorted(Counter(lengths).items()) if lk]
    return gemms, attns


def _time(fn, repeat: int = 1) -> float:
    import time

    fn()  # warm-up (primitive creation, first-touch of the output)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_seconds(op: Gemm, dtype: torch.dtype, device, mode: str) -> float:
    """Seconds for all `op.count` GEMMs of this shape, measured on up to GEMM_ROWS_CAP rows and scaled."""
    rows = min(op.rows, GEMM_ROWS_CAP)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, op.inner, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn(op.cols, op.inner, generator=g) * op.inner**-0.5).to(device=device, dtype=dtype)
    with half_math.half_math(mode):
        seconds = _time(lambda: half_math.linear(x, w))
    return seconds * (op.rows / rows) * op.count


def attention_seconds(op: Attention, c, dtype: torch.dtype, device, mode: str) -> float:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, op.q_len, c.num_attention_heads, c.kv_channels, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(1, op.k_len, c.num_query_groups, c.kv_channels, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(1, op.k_len, c.num_query_groups, c.kv_channels, generator=g).to(device=device, dtype=dtype)
    with half_math.half_math(mode):
        seconds = _time(lambda: attend(q, k, v))
    return seconds * op.count


@dataclass
class Roofline:
    seconds: float
    matmul_flops: float
    attention_flops: float
    rows: list  # [name, GFLOP, TFLOP/s, path, seconds] per op
    gemm_seconds: float = 0.0
    attention_seconds: float = 0.0


def measure_roofline(c, gemms, attns, dtype: torch.dtype, device) -> Roofline:
    """Each op at the better of its native and via-float32 rate (half dtypes), measured now."""
    modes = ["native", "fp32"] if dtype in half_math.HALF_DTYPES else ["native"]
    rows, total, gemm_total = [], 0.0, 0.0
    for op in gemms:
        if op.rows == 0:
            continue
        best = min((gemm_seconds(op, dtype, device, m), m) for m in modes)
        rows.append([f"GEMM {op.name} ({op.rows}x{op.inner}->{op.cols}) x{op.count}", op.flops / 1e9,
                     op.flops / best[0] / 1e12, best[1], best[0]])
        total += best[0]
    gemm_total = total
    for op in attns:
        flops = op.flops(c.num_attention_heads, c.kv_channels)
        best = min((attention_seconds(op, c, dtype, device, m), m) for m in modes)
        rows.append([f"SDPA {op.name} ({op.q_len}x{op.k_len}) x{op.count}", flops / 1e9, flops / best[0] / 1e12,
                     best[1], best[0]])
        total += best[0]
    matmul = sum(op.flops for op in gemms)
    attention = sum(op.flops(c.num_attention_heads, c.kv_channels) for op in attns)
    return Roofline(total, matmul, attention, rows, gemm_total, total - gemm_total)


ATTENTION_OPS = tuple(op for op in KERNEL_OPS if "attention" in op)


def rest_share(step) -> tuple[float, list[tuple[str, float]], dict[str, float]]:
    """Profile one call of `step`: (share of its op time outside GEMM / attention kernels, the largest other
    ops with their shares, seconds in {"GEMM", "attention", "rest"})."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    kinds = {"GEMM": 0.0, "attention": 0.0, "rest": 0.0}
    for e in events:
        kind = "attention" if e.key in ATTENTION_OPS else "GEMM" if e.key in KERNEL_OPS else "rest"
        kinds[kind] += e.self_cpu_time_total / 1e6
    rest = [(e.key, e.self_cpu_time_total / total) for e in events if e.key not in KERNEL_OPS]
    rest.sort(key=lambda kv: -kv[1])
    return sum(share for _, share in rest), rest[:6], kinds
