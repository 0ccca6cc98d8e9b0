"""Where the enhancer's model lives: an OpenAI-compatible chat-completions endpoint, or none (the fallback).

The key comes only from the environment (MAGI1_ENHANCE_API_KEY), never from a flag, so it stays out of
shell history, `ps` listings and job records; it is never part of a repr, a log line or an error message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import MagiError

URL_ENV = "MAGI1_ENHANCE_URL"
MODEL_ENV = "MAGI1_ENHANCE_MODEL"
KEY_ENV = "MAGI1_ENHANCE_API_KEY"
DEFAULT_TIMEOUT_S = 60.0
VISION_CHOICES = ("auto", "on", "off")


class EnhanceError(MagiError):
    """The enhancer could not do its job (unreachable endpoint, refused key, unknown model, unusable answer)."""


@dataclass(frozen=True)
class EnhanceSettings:
    """url: the API base (`http://localhost:8000/v1`); None means the deterministic fallback, no model.

    vision: "auto" sends images to the model and falls back to the text path if it refuses them,
    "on" always sends them, "off" never does (text-only models).
    """

    url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    vision: str = "auto"
    temperature: float = 0.7   # the official workflow's setting
    max_retries: int = 1       # transport-level retries (connection drops, 429, 5xx) inside the client

    def __post_init__(self) -> None:
        if self.url is not None:
            object.__setattr__(self, "url", normalise_base_url(self.url))
        if self.url is not None and not self.model:
            raise EnhanceError("--enhance_url needs --enhance_model (the model name the endpoint serves)")
        if self.model and self.url is None:
            raise EnhanceError("--enhance_model needs --enhance_url (the endpoint that serves it)")
        if self.vision not in VISION_CHOICES:
            raise EnhanceError(f"vision must be one of {', '.join(VISION_CHOICES)}, got {self.vision!r}")
        if not self.timeout_s > 0:
            raise EnhanceError(f"the enhance timeout must be positive, got {self.timeout_s}")

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None, **kwargs) -> "EnhanceSettings":
        """Explicit values first, then MAGI1_ENHANCE_URL / MAGI1_ENHANCE_MODEL; the key from MAGI1_ENHANCE_API_KEY."""
        url = url or os.environ.get(URL_ENV) or None
        model = model or os.environ.get(MODEL_ENV) or None
        return cls(url=url, model=model, api_key=os.environ.get(KEY_ENV) or None, **kwargs)

    @property
    def uses_model(self) -> bool:
        return self.url is not None

    def describe(self) -> str:
        """For logs and records: the model and endpoint, never the key."""
        if not self.uses_model:
            return "fallback templates (no model)"
        return f"{self.model} at {self.url}"

    def redact(self, text: str) -> str:
        """`text` with the key (should a server echo it back) blanked out."""
        if self.api_key and len(self.api_key) >= 4:
            text = text.replace(self.api_key, "***")
        return text


def normalise_base_url(url: str) -> str:
    """The API base the client appends `/chat/completions` to; a full `.../chat/completions` URL is accepted."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EnhanceError(f"--enhance_url must be an http(s) URL such as http://localhost:8000/v1, got {url!r}")
    for tail in ("/chat/completions", "/completions"):
        if url.endswith(tail):
            url = url[: -len(tail)]
    return url
