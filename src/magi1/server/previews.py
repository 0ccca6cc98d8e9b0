"""Per-step previews of running jobs for the page: the chunks in flight, as one small PNG.

The pipeline's step events carry a `preview` function (latents -> RGB through the VAE's linear preview map,
no decode: see magi1/preview.py). The newest picture of each job is kept in memory as PNG bytes, refreshed
at most every `interval_s`, and served at /v1/jobs/{id}/preview.png. A pipeline whose preview map is not
ready yet (a VAE seen for the first time has its map fitted once) gets it fitted in a background thread,
so the run itself never waits for it.
"""

from __future__ import annotations

import io
import logging
import threading
import time

import numpy as np

logger = logging.getLogger(__name__)

MIN_HEIGHT = 128  # small latents are scaled up (nearest neighbour) to at least this height


class JobPreviews:
    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._png: dict[str, bytes] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._warming: set[int] = set()

    def offer(self, job_id: str, pipeline, event: dict) -> None:
        """Keep a new preview from a step event if the last one is old enough (never raises)."""
        make = event.get("preview")
        if not callable(make) or time.monotonic() - self._last.get(job_id, -1e9) < self.interval_s:
            return
        if not self._map_ready(pipeline):
            return
        try:
            png = window_png(make(), int(event.get("chunk_frames") or 6))
        except Exception as err:  # a preview must never fail a job
            logger.debug("no preview for job %s: %s", job_id, err)
            return
        with self._lock:
            self._png[job_id], self._last[job_id] = png, time.monotonic()

    def png(self, job_id: str) -> bytes | None:
        with self._lock:
            return self._png.get(job_id)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._png.pop(job_id, None)
            self._last.pop(job_id, None)

    def _map_ready(self, pipeline) -> bool:
        if getattr(pipeline, "_preview", None) is not None or not hasattr(pipeline, "latent_preview"):
            return getattr(pipeline, "_preview", None) is not None
        key = id(pipeline)
        with self._lock:
            if key in self._warming:
                return False
            self._warming.add(key)

        def warm() -> None:
            from ..ops import cpu_paths

            try:  # a fit decodes with the VAE beside a running job: shielded, so the fit is the same every time
                with cpu_paths.shielded_from_bf16_input_gemms(getattr(pipeline, "vae_device", None)):
                    pipeline.latent_preview  # loads the shipped / cached map, or fits it once
            except Exception as err:
                logger.info("latent previews are off: %s", err)

        threading.Thread(target=warm, name="magi1-preview-map", daemon=True).start()
        return False


def window_png(previews: np.ndarray, chunk_frames: int) -> bytes:
    """(videos, T', h, w, 3) uint8 previews of the window -> PNG of the first video's chunks side by side.

    Each chunk of the window shows its middle latent frame; the strip is scaled up to MIN_HEIGHT.
    """
    from PIL import Image

    frames = np.asarray(previews)[0]
    picks = frames[min(chunk_frames // 2, len(frames) - 1)::max(chunk_frames, 1)]
    strip = np.concatenate(list(picks), axis=1)
    scale = max(1, -(-MIN_HEIGHT // strip.shape[0]))
    strip = strip.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="PNG")
    return buffer.getvalue()
