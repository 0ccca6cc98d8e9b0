#!/usr/bin/env python
"""Dev check (not a test): run the recorded official VAE cases and print max abs errors.

Reads /work/shared/reference-cases/vae (override with --cases): the tiny official-layout folder
`tiny_vae/` and two recorded calls, in float32 on the CPU:
  encoder_native  encoder on video_u8 / 127.5 - 1 -> moments, mean, clamped logvar
  decoder_native  decoder on z -> out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from magi1.models.vae import LatentPosterior, ViTVAE

TOLERANCE = 1e-4
DEFAULT_ROOT = Path("/work/shared/reference-cases/vae")


def max_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    if ours.shape != ref.shape:
        raise AssertionError(f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}")
    return (ours.double() - ref.double()).abs().max().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args()

    vae = ViTVAE.from_pretrained(args.cases / "tiny_vae", dtype=torch.float32, device="cpu")
    print(f"tiny VAE: {vae.num_parameters():,} parameters, {len(vae.state_dict())} tensors")
    failures = []

    def report(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
        err = max_err(ours, ref)
        ok = err < TOLERANCE
        failures.extend([] if ok else [name])
        print(f"  {name:<28} max abs err {err:.3e}  {'ok' if ok else 'FAIL'}")

    with torch.no_grad():
        case = load_file(args.cases / "cases" / "encoder_native.safetensors")
        x = case["video_u8"].float() / 127.5 - 1.0
        moments = vae.encoder(x)
        posterior = LatentPosterior.from_moments(moments)
        print("encoder_native")
        report("moments", moments, case["moments"])
        report("mean", posterior.mean, case["mean"])
        report("logvar", posterior.logvar, case["logvar"])
        report("encode() (posterior mode)", vae.encode(x), case["mean"])

        case = load_file(args.cases / "cases" / "decoder_native.safetensors")
        print("decoder_native")
        report("out", vae.decoder(case["z"]), case["out"])
        report("decode()", vae.decode(case["z"]), case["out"])

    print("PASS" if not failures else f"FAIL: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
