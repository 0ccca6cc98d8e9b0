"""A fake model for a real `magi1 serve` subprocess: `magi1 serve --pipeline serve_fake:load_pipeline`.

It has MagiPipeline's `stream()` contract (chunk objects, 1-based step events, should_stop) and takes its
defaults and checks from the config the server was started with, but makes flat-coloured chunks with
numpy in milliseconds, so a whole server test module runs in seconds. Prompt words steer it:

  "hold"   after the first chunk, wait (checking should_stop) until the job is cancelled or the server stops
  "fail"   raise a user-facing error whose text names a server path (which must not reach clients)
  "crash"  raise an internal error (a library bug, as far as the server can tell)
  "slow"   sleep MAGI1_FAKE_STEP_S (default 0.05) per step, so a job is still running when the test acts

MAGI1_FAKE_LOAD_GATE=<file>: loading waits until that file exists, so a test can talk to a server whose
model is still loading for as long as it needs.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from magi1.errors import InputError

MAX_WAIT_S = 60.0


def load_pipeline(config):
    gate = os.environ.get("MAGI1_FAKE_LOAD_GATE")
    if gate:
        deadline = time.monotonic() + MAX_WAIT_S
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return FakeServePipeline(config)


def chunk_frames(index: int, frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """The frames of chunk `index`: a flat colour that depends on the chunk and the seed."""
    pixels = np.zeros((frames, height, width, 3), np.uint8)
    pixels[..., index % 3] = 60 + (37 * index + seed) % 160
    return pixels


class FakeServePipeline:
    def __init__(self, config):
        self.config = config
        self.slow_step_s = float(os.environ.get("MAGI1_FAKE_STEP_S", "0.05"))

    @property
    def fps(self) -> int:
        return self.config.runtime_config.fps

    def stream(self, prompt=None, *, chunk_prompts=None, image=None, video=None, num_frames=None, height=None,
               width=None, num_inference_steps=None, seed=None, keep_aspect=False, callback=None,
               should_stop=None):
        overrides = {k: v for k, v in (("num_frames", num_frames), ("video_size_h", height),
                                       ("video_size_w", width), ("num_steps", num_inference_steps),
                                       ("seed", seed)) if v is not None}
        r = self.config.replace(**overrides).runtime_config
        text = " ".join([prompt or "", *(chunk_prompts or {}).values()])
        if "fail" in text:
            raise InputError(f"cannot read {image or video or '/srv/magi1/weights/dit/model.safetensors'}: "
                             f"the fake was asked to fail")
        if "crash" in text:
            raise RuntimeError("segfault-like crash in /usr/lib/libfake.so while reading /srv/secret/model")
        frames_per_chunk = r.chunk_width * r.temporal_downsample_factor
        num_chunks = max(1, math.ceil(r.num_frames / frames_per_chunk))
        total = num_chunks * r.num_steps
        for index in range(num_chunks):
            for step in range(r.num_steps):
                if should_stop is not None and should_stop():
                    return
                if "slow" in text:
                    time.sleep(self.slow_step_s)
                if callback is not None:
                    callback({"type": "step", "step": index * r.num_steps + step + 1, "total_steps": total})
            if callback is not None:
                callback({"type": "chunk", "index": index, "num_chunks": num_chunks})
            yield SimpleNamespace(index=index, num_chunks=num_chunks,
                                  frames=chunk_frames(index, frames_per_chunk, r.video_size_h, r.video_size_w,
                                                      r.seed))
            if "hold" in text:
                deadline = time.monotonic() + MAX_WAIT_S
                while not (should_stop is not None and should_stop()) and time.monotonic() < deadline:
                    time.sleep(0.01)
