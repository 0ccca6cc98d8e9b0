"""The CPU path decisions of `cpu_paths`, remembered per machine so that every run on it makes the same ones.

A decision that rests on a timed probe can come out either way when the two kernels are close and the machine
is busy (measured: oneDNN's bf16-input float32 GEMM 1.27x the plain one against a 1.2x margin). The two paths
round differently, so a flip gives another video for the same seed, and a run resumed under the other path
matches neither uninterrupted run. So the first decision on a machine is kept in magi1's cache
(`$MAGI1_CACHE/cpu_paths.json`, default ~/.cache/magi1) and reused, under a key of everything that changes
the kernels: the CPU model and flags, torch's version and vector capability, and the oneDNN ISA cap
(ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA). Delete the file to measure again; the env overrides of `cpu_paths`
still win. Without a writable cache each process decides for itself, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

FILE_NAME = "cpu_paths.json"
ISA_CAP_ENVS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cache_file() -> Path:
    from ..preview import cache_folder  # magi1's one cache folder ($MAGI1_CACHE), shared with the preview maps

    return cache_folder() / FILE_NAME


def machine_key(model: str, flags: frozenset[str], capability: str, what: str) -> str:
    """A short key for one decision (`what`) on this machine and torch build."""
    caps = ",".join(f"{name}={os.environ.get(name, '')}" for name in ISA_CAP_ENVS)
    text = "|".join([what, model, " ".join(sorted(flags)), capability, torch.__version__, caps])
    return f"{what}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock beside `path` (POSIX), so processes that start together decide once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, the atomic write still keeps the file whole
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def recall_or_decide(key: str, decide):
    """The remembered (choice, reason) for `key`, or decide() -> (choice, reason), remembered for next time.

    Returns (choice, reason, remembered: bool). Any trouble with the cache only means deciding afresh.
    """
    path = cache_file()
    decided = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            entry = _read(path).get(key)
            if isinstance(entry, dict) and isinstance(entry.get("choice"), str):
                return entry["choice"], str(entry.get("reason", "")), True
            decided = decide()
            data = _read(path)
            data[key] = {"choice": decided[0], "reason": decided[1]}
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".cpu_paths.", delete=False) as out:
                json.dump(data, out, indent=1, sort_keys=True)
            os.replace(out.name, path)
    except OSError as err:
        logger.debug("magi1: CPU path decisions not remembered (%s)", err)
    if decided is None:
        decided = decide()
    return decided[0], decided[1], False
