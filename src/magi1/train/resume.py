"""Resumable training state: tensors in safetensors, everything else in JSON (no pickle anywhere).

A state folder holds `state.safetensors` (module weights, EMA weights, optimizer moments, each under a
prefix) and `state.json` (step counter, optimizer hyper-parameters, free-form metadata). It is written to a
temporary folder first and renamed, so a run killed mid-save leaves the previous state intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_TENSORS = "state.safetensors"
STATE_META = "state.json"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors and a JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(folder: str | Path, parts: dict[str, dict[str, torch.Tensor]], meta: dict) -> None:
    """Write `parts` ({prefix: {name: tensor}}) and `meta` atomically into `folder`."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(folder.name + ".saving")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    flat, seen = {}, set()
    for prefix, tensors in parts.items():
        for name, tensor in tensors.items():
            tensor = tensor.detach().cpu().contiguous()
            if tensor.data_ptr() in seen:  # tied weights (T5's shared / embed_tokens): store a copy
                tensor = tensor.clone()
            seen.add(tensor.data_ptr())
            flat[f"{prefix}/{name}"] = tensor
    save_file(flat, str(staging / STATE_TENSORS))
    (staging / STATE_META).write_text(json.dumps(meta, indent=1))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(staging, folder)
    if old.exists():
        shutil.rmtree(old)


def load_state(folder: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict] | None:
    """The parts and metadata written by `save_state`, or None when there is no complete state."""
    folder = Path(folder)
    if not (folder / STATE_TENSORS).is_file() or not (folder / STATE_META).is_file():
        old = folder.with_name(folder.name + ".old")  # a crash between the two renames
        if (old / STATE_TENSORS).is_file():
            folder = old
        else:
            return None
    flat = load_file(str(folder / STATE_TENSORS))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        prefix, name = key.split("/", 1)
        parts.setdefault(prefix, {})[name] = tensor
    return parts, json.loads((folder / STATE_META).read_text())


def refuse_other_settings(folder: str | Path, settings: dict, *, has_state: bool, what: str, flag_style: str = "-",
                          settings_file: str = "train_args.json", holds: str = "a run", listed_at_most: int = 4) -> None:
    """A resumable folder holds one run: continuing it under other settings would train something else (another
    schedule, other data, weights of another shape), so that is refused, naming each changed flag and both
    values. Records `settings` in the folder otherwise. `settings` must be JSON-able (paths made absolute)."""
    folder = Path(folder)
    path = folder / settings_file
    wanted = json.loads(json.dumps(settings))
    if has_state and path.is_file():
        stored = json.loads(path.read_text())
        changed = [k for k in wanted if k in stored and stored[k] != wanted[k]]
        if changed:
            def shown(value) -> str:
                return "none" if value is None else str(value)

            listed = "; ".join(f"--{k.replace('_', flag_style)}: {shown(stored[k])} there, {shown(wanted[k])} now"
                               for k in changed[:listed_at_most])
            more = f" and {len(changed) - listed_at_most} more" if len(changed) > listed_at_most else ""
            raise ValueError(f"{what} {folder} holds {holds} with other settings ({listed}{more}); resume it with the "
                             f"settings it was started with, or give a new {what}")
    elif has_state:
        return  # a state from before settings were recorded: what it was trained with is not known
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=1) + "\n")
