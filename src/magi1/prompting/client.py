"""One chat-completions call to an OpenAI-compatible endpoint, with failures turned into one plain sentence.

The `openai` package builds the requests, so they are exactly what the chat-completions API takes; vLLM, SGLang,
llama.cpp's server, Ollama and hosted APIs answer the same calls. Every message that leaves this module has
the API key blanked out, in case a server echoes it back.
"""

from __future__ import annotations

import logging
from typing import Any

from .settings import KEY_ENV, EnhanceError, EnhanceSettings

logger = logging.getLogger(__name__)

# Local servers take any key; the openai client insists on one, so a placeholder is sent when none is set.
NO_KEY_PLACEHOLDER = "EMPTY"
MAX_DETAIL_CHARS = 200
# Their INFO lines ("HTTP Request: POST ...", "Retrying request ...") would interleave with the run's output.
CHATTY_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai")


class RequestRefused(EnhanceError):
    """HTTP 400: the endpoint refused this request's content (e.g. image parts for a text-only model)."""


class ChatClient:
    def __init__(self, settings: EnhanceSettings):
        if not settings.uses_model:
            raise ValueError("ChatClient needs settings with a url and a model")
        try:
            import openai
        except ImportError:
            raise EnhanceError("a model endpoint needs the openai package: pip install 'magi1[enhance]'") from None
        self.settings = settings
        self._openai = openai
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            for name in CHATTY_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
        self._client = openai.OpenAI(base_url=settings.url, api_key=settings.api_key or NO_KEY_PLACEHOLDER,
                                     timeout=settings.timeout_s, max_retries=settings.max_retries)

    def complete(self, messages: list[dict], *, response_format: dict | None = None) -> str:
        """The assistant's text for `messages`; raises EnhanceError (RequestRefused for HTTP 400)."""
        kwargs: dict[str, Any] = {"model": self.settings.model, "messages": messages,
                                  "temperature": self.settings.temperature}
        if response_format is not None:
            kwargs["response_format"] = response_format
        logger.debug("enhance: asking %s", self.settings.describe())
        try:
            answer = self._client.chat.completions.create(**kwargs)
        except self._openai.OpenAIError as err:
            raise self._explain(err) from None
        choices = getattr(answer, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise EnhanceError(f"the answer from {self.settings.url} is not a chat completion; check that "
                               f"--enhance_url is the OpenAI-compatible API base (it usually ends in /v1)")
        content = choices[0].message.content
        if not content or not content.strip():
            raise EnhanceError(f"the model {self.settings.model!r} returned an empty answer")
        return content.strip()

    # ------------------------------------------------------------------ errors
    def _explain(self, err: Exception) -> EnhanceError:
        o, s = self._openai, self.settings
        if isinstance(err, o.APITimeoutError):
            return EnhanceError(f"the model at {s.url} did not answer within {s.timeout_s:g} s; "
                                f"raise --enhance_timeout or check the server")
        if isinstance(err, o.APIConnectionError):
            cause = err.__cause__ or err.__context__
            why = f" ({self._detail(cause)})" if cause is not None else ""
            return EnhanceError(f"cannot reach an OpenAI-compatible server at {s.url}{why}; check --enhance_url")
        if isinstance(err, o.AuthenticationError):
            if not s.api_key:
                return EnhanceError(f"{s.url} wants an API key (HTTP 401): set {KEY_ENV}")
            return EnhanceError(f"{s.url} refused the API key in {KEY_ENV} (HTTP 401: {self._message(err)})")
        if isinstance(err, o.PermissionDeniedError):
            return EnhanceError(f"{s.url} denied access to model {s.model!r} with this key (HTTP 403: "
                                f"{self._message(err)})")
        if isinstance(err, o.NotFoundError):
            return EnhanceError(self._not_found())
        if isinstance(err, o.BadRequestError):
            return RequestRefused(f"{s.url} refused the request for model {s.model!r} (HTTP 400: "
                                  f"{self._message(err)})")
        if isinstance(err, o.APIStatusError):
            return EnhanceError(f"{s.url} answered HTTP {err.status_code} for model {s.model!r}: {self._message(err)}")
        return EnhanceError(f"the request to {s.url} failed: {self._detail(err)}")

    def _not_found(self) -> str:
        """A 404 is a wrong model name or a wrong URL; the model list tells which."""
        s = self.settings
        try:
            served = [m.id for m in self._client.models.list()]
        except self._openai.OpenAIError:
            served = None
        if served is None:
            return (f"no OpenAI-compatible API at {s.url} (HTTP 404 for /chat/completions); check --enhance_url, "
                    f"which usually ends in /v1")
        if s.model not in served:
            listed = ", ".join(repr(name) for name in served[:10]) or "none"
            return f"{s.url} serves no model named {s.model!r} (it serves {listed}); check --enhance_model"
        return f"{s.url} answered HTTP 404 for model {s.model!r}"

    def _message(self, err: Exception) -> str:
        body = getattr(err, "body", None)
        if isinstance(body, dict):
            inner = body.get("error", body)
            text = inner.get("message") if isinstance(inner, dict) else inner
        else:
            text = getattr(err, "message", None) or str(err)
        return self._detail(text)

    def _detail(self, text: object) -> str:
        text = " ".join(str(text).split())
        return self.settings.redact(text)[:MAX_DETAIL_CHARS] or "no details"
