"""Shared fixtures: tiny official-layout model folders built once per session (no network, no ../shared)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# magi1's own cache (CPU path decisions, fitted preview maps) lives in this session's temp folder, shared by the
# subprocesses tests start, so the suite neither reads nor writes the user's ~/.cache/magi1.
os.environ["MAGI1_CACHE"] = tempfile.mkdtemp(prefix="magi1-test-cache-")


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    # Two cores and several test processes: one thread each keeps timings steady and avoids oversubscription.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Path of the config.json of a tiny random base model (DiT + VAE + T5) in the official layout."""
    from magi1.testing import make_tiny_model_folder

    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model):
    from magi1.pipeline import MagiPipeline

    return MagiPipeline.from_pretrained(str(tiny_model), device="cpu")


@pytest.fixture(scope="session")
def magi1_server(tmp_path_factory):
    """One real `magi1 serve` subprocess (demo model) for every client-library test (tests/served_magi1.py)."""
    from served_magi1 import start, stop

    served = start(tmp_path_factory.mktemp("magi1_serve"))
    yield served
    stop(served)
