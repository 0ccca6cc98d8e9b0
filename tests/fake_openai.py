"""A small OpenAI-compatible chat-completions server for tests (stdlib http.server on 127.0.0.1).

It checks every request against the shape the chat-completions API takes (model, messages, content parts,
image data URLs, response_format / json_schema with the strict-mode rules) and refuses anything else with the
status and error body the real API uses, recording the reason in `problems`. Answers are scripted per request
kind: "appearance", "motion" and "story" (a queue of texts, the last one repeating).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

TOP_LEVEL_KEYS = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop",
                  "response_format", "seed", "frequency_penalty", "presence_penalty", "user", "stream"}
ROLES = {"system", "developer", "user", "assistant"}


class RequestShapeError(ValueError):
    pass


def check_chat_request(body: object) -> None:
    """Raise RequestShapeError unless `body` is a valid non-streaming chat-completions request."""
    need = _need
    need(isinstance(body, dict), "the body is not a JSON object")
    unknown = set(body) - TOP_LEVEL_KEYS
    need(not unknown, f"unknown top-level keys {sorted(unknown)}")
    need(isinstance(body.get("model"), str) and body["model"], "model must be a non-empty string")
    need(not body.get("stream"), "streaming was not asked for")
    temperature = body.get("temperature", 1.0)
    need(isinstance(temperature, (int, float)) and 0 <= temperature <= 2, "temperature must be in [0, 2]")
    messages = body.get("messages")
    need(isinstance(messages, list) and messages, "messages must be a non-empty list")
    for message in messages:
        need(isinstance(message, dict) and set(message) <= {"role", "content", "name"}, f"bad message {message!r:.80}")
        need(message.get("role") in ROLES, f"bad role {message.get('role')!r}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        need(isinstance(content, list) and content, "content must be a string or a list of parts")
        need(message["role"] == "user" or all(p.get("type") == "text" for p in content),
             "only user messages may hold images")
        for part in content:
            _check_part(part)
    if "response_format" in body:
        _check_response_format(body["response_format"])


def _check_part(part: object) -> None:
    need = _need
    need(isinstance(part, dict), "a content part must be an object")
    if part.get("type") == "text":
        need(set(part) == {"type", "text"} and isinstance(part["text"], str), "bad text part")
        return
    need(part.get("type") == "image_url", f"unknown content part type {part.get('type')!r}")
    need(set(part) == {"type", "image_url"}, "an image part holds only type and image_url")
    image_url = part["image_url"]
    need(isinstance(image_url, dict) and set(image_url) <= {"url", "detail"} and isinstance(image_url.get("url"), str),
         "image_url must be an object with a url")
    url = image_url["url"]
    need(url.startswith("data:image/") and ";base64," in url, "the image must be a base64 data URL")
    payload = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    Image.open(io.BytesIO(payload)).verify()


def _check_response_format(value: object) -> None:
    need = _need
    need(isinstance(value, dict) and value.get("type") in ("text", "json_object", "json_schema"), "bad response_format")
    if value["type"] != "json_schema":
        return
    spec = value.get("json_schema")
    need(isinstance(spec, dict) and set(spec) <= {"name", "description", "schema", "strict"}, "bad json_schema")
    need(isinstance(spec.get("name"), str) and spec["name"].replace("_", "").replace("-", "").isalnum(),
         "json_schema.name must be letters, digits, _ or -")
    need(isinstance(spec.get("schema"), dict), "json_schema.schema must be an object")
    need(spec["schema"].get("type") == "object", "the root schema must be an object")
    if spec.get("strict"):
        _check_strict(spec["schema"])


def _check_strict(schema: dict) -> None:
    """Structured outputs' strict mode: every object lists all its properties as required, and no others."""
    if schema.get("type") == "object":
        props = schema.get("properties", {})
        _need(schema.get("additionalProperties") is False, "strict objects need additionalProperties: false")
        _need(set(schema.get("required", [])) == set(props), "strict objects must require every property")
        for sub in props.values():
            _check_strict(sub)
    if schema.get("type") == "array":
        _check_strict(schema.get("items", {}))


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise RequestShapeError(message)


def request_kind(body: dict) -> str:
    if "response_format" in body:
        return "story"
    system = body["messages"][0]["content"]
    return "appearance" if "what things look like" in system else "motion"


def has_images(body: dict) -> bool:
    return any(isinstance(m["content"], list) and any(p["type"] == "image_url" for p in m["content"])
               for m in body["messages"])


class FakeOpenAI:
    """with FakeOpenAI(model="tiny-llm") as server: ... server.url (ends in /v1), server.requests."""

    def __init__(self, *, model: str = "tiny-llm", api_key: str | None = None, vision: bool = True,
                 delay_s: float = 0.0):
        self.model, self.api_key, self.vision, self.delay_s = model, api_key, vision, delay_s
        self.replies: dict[str, list[str]] = {"appearance": ["A red ball rests on a grey floor."],
                                              "motion": ["The red ball bounces twice."], "story": []}
        self.requests: list[dict] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _reply(self, kind: str) -> str:
        with self._lock:
            queue = self.replies[kind]
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, code: str | None = None) -> None:
                self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

            def _authorised(self) -> bool:
                if server.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._error(401, "Incorrect API key provided.", "invalid_api_key")
                return False

            def do_GET(self):
                if self.path != "/v1/models":
                    return self._error(404, "Not Found")
                if self._authorised():
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model",
                                                                 "created": 0, "owned_by": "test"}]})

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    return self._error(404, "Not Found")
                if not self._authorised():
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    check_chat_request(body)
                except (ValueError, OSError) as err:  # JSON, shape, base64 and image errors
                    server.problems.append(str(err))
                    return self._error(400, f"invalid request: {err}")
                if body["model"] != server.model:
                    return self._error(404, f"The model `{body['model']}` does not exist.", "model_not_found")
                with server._lock:
                    server.requests.append(body)
                if has_images(body) and not server.vision:
                    return self._error(400, "this model does not accept image inputs")
                time.sleep(server.delay_s)
                text = server._reply(request_kind(body))
                self._send(200, {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                                 "model": server.model,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        return Handler
