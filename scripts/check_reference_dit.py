#!/usr/bin/env python
"""Dev check (not a test): run the recorded official DiT cases and print max abs errors.

Reads /work/shared/reference-cases/dit (override with --cases). Cases:
  base_multichunk_cond  one 4-chunk forward: `out` and every `intermediate.*`
  base_kvcache          call A fills the cache (prefix extraction), call B reads it; `A.out`, `B.out`,
                        `kv_cache.layer{l}`, and the joint no-cache forward `joint.out`; then call A again
                        through the sampler's v2v entry point `sampling.cache_prefix` (prefix = `A.x`, float32)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from magi1.config import MagiConfig
from magi1.models import KVCache, MagiDiT, official_forward
from magi1.sampling.sampler import cache_prefix

TOLERANCE = 1e-4


def caption_rows(tokens: torch.Tensor, config) -> torch.Tensor:
    """(R, n, Ct) valid tokens -> (R, 1, Lc, Ct) float32 rows padded with zeros."""
    m = config.model_config
    y = torch.zeros(tokens.shape[0], 1, m.caption_max_length, m.caption_channels)
    y[:, 0, : tokens.shape[1]] = tokens.float()
    return y


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != reference {tuple(b.shape)}")
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def report(name: str, ours: torch.Tensor, ref: torch.Tensor, failures: list) -> None:
    err = max_err(ours, ref)
    flag = "ok" if err < TOLERANCE else "FAIL"
    if err >= TOLERANCE:
        failures.append(name)
    print(f"  {name:45s} max abs err {err:.3e}  {flag}")


def build_model(root: Path):
    config = MagiConfig.from_json(root / "tiny_base_config.json")
    with torch.device("meta"):
        model = MagiDiT(config.model_config, distill=config.engine_config.distill, fp8_quant=config.engine_config.fp8_quant)
    state = load_file(str(root / "ckpt_tiny" / "inference_weight" / "model.safetensors"))
    model.load_state_dict(state, strict=True, assign=True)
    model.apply_precision(config.model_config.params_dtype)
    return config, model.eval()


def check_multichunk(root: Path, config, model, failures: list) -> None:
    meta = json.loads((root / "forward" / "base_multichunk_cond.json").read_text())
    ref = load_file(str(root / "forward" / "base_multichunk_cond.safetensors"))
    print("base_multichunk_cond")
    out, inter = model(
        ref["x"], ref["t"], caption_rows(ref["y_tokens"], config), ref["xattn_mask"], ref["kv_range"],
        null_adaln=ref["caption_dropout_mask"], return_intermediates=True,
    )
    report("out", out, ref["out"], failures)
    for key in sorted(k for k in ref if k.startswith("intermediate.")):
        name = key[len("intermediate."):]
        if name not in inter:
            failures.append(key)
            print(f"  {key:45s} MISSING")
            continue
        report(key, inter[name].to(ref[key].dtype), ref[key], failures)
    # the official calling convention must give the same output
    via_adapter = official_forward(
        model, ref["x"], ref["t"], caption_rows(ref["y_tokens"], config), ref["caption_dropout_mask"],
        ref["xattn_mask"], ref["kv_range"], None, **meta["kwargs"],
    )
    report("out (official_forward)", via_adapter, ref["out"], failures)


def call_b(config, model, meta, ref, cache) -> torch.Tensor:
    """Call B: chunks 2 and 3 read the cache of chunks 0 and 1."""
    return official_forward(
        model, ref["B.x"], ref["B.t"], caption_rows(ref["B.y_tokens"], config), ref["B.caption_dropout_mask"],
        ref["B.xattn_mask"], ref["B.kv_range"], cache, **meta["kwargs_B"],
    )


def check_kvcache(root: Path, config, model, failures: list) -> None:
    meta = json.loads((root / "forward" / "base_kvcache.json").read_text())
    ref = load_file(str(root / "forward" / "base_kvcache.safetensors"))
    ctn = meta["tokens_per_chunk"]
    print("base_kvcache")
    cache = KVCache(4 * ctn, num_layers=config.model_config.num_layers)
    cache.update_kv_cache = True
    a = official_forward(
        model, ref["A.x"], ref["A.t"], caption_rows(ref["A.y_tokens"], config), ref["A.caption_dropout_mask"],
        ref["A.xattn_mask"], ref["A.kv_range"], cache, **meta["kwargs_A"],
    )
    report("A.out", a, ref["A.out"], failures)
    for layer in range(config.model_config.num_layers):
        report(f"kv_cache.layer{layer}", cache.layer(layer), ref[f"kv_cache.layer{layer}"], failures)
    cache.update_kv_cache = False
    b = call_b(config, model, meta, ref, cache)
    report("B.out", b, ref["B.out"], failures)
    joint = official_forward(
        model, torch.cat([ref["A.x"], ref["B.x"]], 2), ref["joint.t"],
        torch.cat([caption_rows(ref["A.y_tokens"], config), caption_rows(ref["B.y_tokens"], config)], 0),
        ref["A.caption_dropout_mask"], torch.cat([ref["A.xattn_mask"], ref["B.xattn_mask"]], 0),
        ref["joint.kv_range"], None, **meta["kwargs_joint"],
    )
    report("joint.out", joint, ref["joint.out"], failures)
    report("joint.out[:, :, 12:] vs our B.out", joint[:, :, 12:], b, failures)
    check_cache_prefix(config, model, meta, ref, failures)


def check_cache_prefix(config, model, meta, ref, failures: list) -> None:
    """Call A is the official prefix extraction: fill the cache through the sampler's `cache_prefix`.

    The sampler gives the prefix chunks their rows of y[1]; here they carry call A's captions. cfg_number 1
    makes its one pass take the conditional adaLN token, as call A does (caption_dropout_mask False).
    """
    ctn = meta["tokens_per_chunk"]
    print("base_kvcache through sampling.cache_prefix (v2v prefix in float32)")
    sampler_config = dataclasses.replace(
        config, runtime_config=dataclasses.replace(config.runtime_config, cfg_number=1))
    rows = caption_rows(ref["A.y_tokens"], config)[:, 0]                     # (R, Lc, Ct)
    masks = ref["A.xattn_mask"][:, 0]                                        # (R, Lc)
    cache = KVCache(4 * ctn, num_layers=config.model_config.num_layers)
    cache_prefix(model, sampler_config, ref["A.x"], torch.stack([rows, rows]), torch.stack([masks, masks]),
                 cache, ctn, None)
    for layer in range(config.model_config.num_layers):
        report(f"kv_cache.layer{layer}", cache.layer(layer), ref[f"kv_cache.layer{layer}"], failures)
    cache.update_kv_cache = False
    b = call_b(config, model, meta, ref, cache)
    report("B.out after cache_prefix", b, ref["B.out"], failures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="/work/shared/reference-cases/dit", help="folder of the DiT reference cases")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.cases)
    config, model = build_model(root)
    failures: list[str] = []
    check_multichunk(root, config, model, failures)
    check_kvcache(root, config, model, failures)
    print("PASS" if not failures else f"FAIL: {', '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
