"""Where an interrupted run stood, saved beside its output after every finished chunk, so it can continue.

    out.mp4  ->  .out.mp4.resume.safetensors   (the whole latent video after the last finished chunk)

`MagiPipeline.stream(on_state=...)` hands out a ResumeState each time a chunk finishes; `generate_to_file`
saves it here and `resume=True` loads it. The fingerprint ties a state to one run (config, captions, noise,
prefix), so a state is never continued with other inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ResumeState:
    """Where an interrupted run stood after its last finished chunk (see `MagiPipeline.stream`)."""

    fingerprint: str                # hash of everything that determines the run
    next_step: int                  # the first forward step still to run
    finished_chunks: int            # generated chunks already emitted
    latent: object                  # (1, 16, T, h, w) float32: the whole latent video after that step

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"latent": self.latent.contiguous()}, str(tmp),
                  metadata={"fingerprint": self.fingerprint, "next_step": str(self.next_step),
                            "finished_chunks": str(self.finished_chunks)})
        tmp.replace(path)  # atomic: a kill never leaves a half-written state

    @classmethod
    def load(cls, path: str | Path) -> "ResumeState":
        from safetensors import SafetensorError, safe_open

        from .errors import InputError

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                return cls(meta["fingerprint"], int(meta["next_step"]), int(meta["finished_chunks"]),
                           f.get_tensor("latent"))
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            # cut short by a full disk, or not ours: one sentence, not a safetensors traceback
            raise InputError(f"the saved resume state {path} cannot be read ({type(err).__name__}: "
                             f"{str(err)[:120]}); delete it and run without --resume to start over") from None


def check_resume_state_readable(path: str | Path) -> None:
    """Read a saved state's header only (no tensor, no torch): a state cut short by a full disk fails here, in
    ResumeState.load's words, before a model is loaded to continue it."""
    from safetensors import SafetensorError, safe_open

    from .errors import InputError

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            int(meta["next_step"]), int(meta["finished_chunks"]), meta["fingerprint"]  # noqa: B018 - present?
            if "latent" not in f.keys():
                raise KeyError("latent")
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise InputError(f"the saved resume state {path} cannot be read ({type(err).__name__}: "
                         f"{str(err)[:120]}); delete it and run without --resume to start over") from None


def run_fingerprint(config, *tensors, extra: str = "") -> str:
    """A hash of the config, the run's input tensors (conditioning, noise, prefix) and `extra` (e.g. LoRAs)."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode() + extra.encode())
    for tensor in tensors:
        if tensor is not None:
            digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def resume_state_path(output: str | Path) -> Path:
    """The hidden file next to the output where a run keeps its resume state."""
    output = Path(output)
    return output.with_name(f".{output.name}.resume.safetensors")
