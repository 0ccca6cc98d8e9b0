"""/docs that work offline under the server's own CSP, and an openapi.json that states every request's shape.

- Swagger UI's files come from the `fastapi-offline` package (served under /docs-assets/), not a CDN, and
  the page starts it from a script file (static/docs.js): the CSP allows scripts from this server only,
  no inline ones, so FastAPI's stock /docs page (CDN files, inline start-up script) stays blank here.
- Routes that read their body themselves (multipart or JSON, with an optional file) get their request body
  described here, and the WebSocket its messages, so every route in openapi.json has a request schema.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>magi1 API</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <script src="{assets}/swagger-ui-bundle.js" defer></script>
  <script src="/static/docs.js" defer></script>
</head>
<body><div id="swagger-ui"></div></body>
</html>
"""

_TEXT, _INT, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
_FILE = {"type": "string", "format": "binary"}
_CHUNK_PROMPTS = {"description": "per-chunk captions: {\"2\": \"a new prompt\"} (first generated chunk: prompt), "
                                 "or a list (chunk_prompts[] in a form)",
                  "oneOf": [{"type": "object", "additionalProperties": {"type": "string"}},
                            {"type": "array", "items": {"type": "string"}}, {"type": "string"}]}
_ENHANCE = {"type": "boolean", "description": "rewrite prompt / chunk_prompts into MAGI-1 captions before the run "
                                             "(the server's model, or its fallback templates)"}
_STORY = {"description": "story mode (instead of prompt): a story, or its beats in order; the server's model writes "
                         "one caption per shot and picks the chunk each starts at",
          "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_MAGI1_EXTRAS = {"seed": _INT, "num_inference_steps": _INT, "chunk_prompts": _CHUNK_PROMPTS,
                 "negative_prompt": _TEXT, "fps": _INT, "keep_aspect": _BOOL, "enhance": _ENHANCE, "story": _STORY}
_SECONDS = {"description": "length; rounded up to whole chunks", "oneOf": [{"type": "string"}, {"type": "number"}]}
_SIZE = {"type": "string", "description": "WIDTHxHEIGHT, multiples of 16, at most the model's frame area",
         "example": "64x64"}

JOB_FIELDS = {"mode": {"type": "string", "enum": ["t2v", "i2v", "v2v"]}, "prompt": _TEXT,
              "chunk_prompts": _CHUNK_PROMPTS, "negative_prompt": _TEXT, "num_frames": _INT, "height": _INT,
              "width": _INT, "steps": _INT, "seed": _INT, "keep_aspect": _BOOL, "enhance": _ENHANCE, "story": _STORY}
VIDEO_FIELDS = {"prompt": _TEXT, "model": _TEXT, "seconds": _SECONDS, "size": _SIZE, **_MAGI1_EXTRAS}
IMAGE_REFERENCE = {"type": "object", "properties": {"image_url": {"type": "string", "description": "a data URL"}}}
VIDEO_REFERENCE = {"type": "object", "properties": {"id": {"type": "string", "description": "a completed video"}}}


def _body(name: str, fields: dict, required: list[str], files: dict, json_extra: dict) -> dict:
    form = {"type": "object", "title": f"{name}Form", "properties": {**fields, **files}, "required": required}
    as_json = {"type": "object", "title": name, "properties": {**fields, **json_extra}, "required": required,
               "additionalProperties": False}
    return {"required": True, "content": {"multipart/form-data": {"schema": form},
                                          "application/json": {"schema": as_json}}}


REQUEST_BODIES = {
    ("post", "/v1/jobs"): _body("JobRequest", JOB_FIELDS, [], {"file": _FILE}, {}),
    ("post", "/v1/videos"): _body("VideoCreateRequest", VIDEO_FIELDS, ["prompt"], {"input_reference": _FILE},
                                  {"input_reference": IMAGE_REFERENCE}),
    ("post", "/v1/videos/sync"): _body("VideoCreateRequest", VIDEO_FIELDS, ["prompt"], {"input_reference": _FILE},
                                       {"input_reference": IMAGE_REFERENCE}),
    ("post", "/v1/videos/extensions"): _body("VideoExtendRequest", VIDEO_FIELDS, ["video", "seconds"],
                                             {"video": _FILE}, {"video": VIDEO_REFERENCE}),
}

QUERY_PARAMETERS = {
    ("get", "/v1/jobs"): [
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
        {"name": "after", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "the id of the last job of the previous page"},
        {"name": "order", "in": "query", "required": False, "schema": {"type": "string", "enum": ["asc", "desc"]}},
    ],
}

REALTIME_MESSAGES = {
    "RealtimeSessionStart": {"type": "object", "required": ["type", "prompt"], "properties": {
        "type": {"const": "session.start"}, "prompt": _TEXT, "size": _SIZE, "seconds": _SECONDS,
        "frames": _INT, "image": {"type": "string", "description": "data URL of an image: i2v"},
        "video": {"type": "string", "description": "data URL of a video to continue: v2v"},
        **{k: v for k, v in _MAGI1_EXTRAS.items() if k != "fps"}, "model": _TEXT}},
    "RealtimeSessionInteraction": {"type": "object", "required": ["type", "prompt"], "properties": {
        "type": {"const": "session.interaction"}, "prompt": _TEXT,
        "transition_chunks": {"type": "integer", "minimum": 0, "maximum": 64, "default": 0}}},
    "RealtimeSessionStop": {"type": "object", "required": ["type"], "properties": {"type": {"const": "session.stop"}}},
}

REALTIME_PATH = {"get": {
    "tags": ["realtime (WebSocket)"], "summary": "WebSocket: one video streamed as fMP4 fragments, prompt live",
    "operationId": "realtime_video",
    "description": "Open with a WebSocket upgrade (ws://host/v1/realtime/video). Send session.start, then any "
                   "number of session.interaction and at most one session.stop; receive video.start, per chunk "
                   "one video.chunk_metadata JSON message followed by one binary fMP4 fragment (the first with "
                   "the init segment), and session.done. README.md, section Serving, has the whole protocol.",
    "parameters": [{"name": "Upgrade", "in": "header", "required": True, "schema": {"const": "websocket"}}],
    "requestBody": {"description": "the client's messages (JSON text frames)", "content": {"application/json": {
        "schema": {"oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in REALTIME_MESSAGES]}}}},
    "responses": {"101": {"description": "switching to the WebSocket protocol"},
                  "401": {"description": "no valid API key (when the server has keys)"}},
}}


def without_head_operations(schema: dict) -> dict:
    """Every GET route also answers HEAD (app.answer_head_on_get_routes); FastAPI would list each HEAD as a second
    operation under its GET's operationId, which OpenAPI forbids and client generators reject. HEAD is implied
    by GET in HTTP, so the schema lists the GET alone."""
    for operations in schema.get("paths", {}).values():
        operations.pop("head", None)
    return schema


def complete_openapi(schema: dict) -> dict:
    """Add the hand-read request bodies, the manually read query parameters and the WebSocket route."""
    paths = schema.setdefault("paths", {})
    for (method, path), body in REQUEST_BODIES.items():
        operation = paths.get(path, {}).get(method)
        if operation is not None and "requestBody" not in operation:
            operation["requestBody"] = body
    for (method, path), parameters in QUERY_PARAMETERS.items():
        operation = paths.get(path, {}).get(method)
        if operation is not None:
            known = {p["name"] for p in operation.get("parameters", [])}
            operation.setdefault("parameters", []).extend(p for p in parameters if p["name"] not in known)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(REALTIME_MESSAGES)
    paths["/v1/realtime/video"] = REALTIME_PATH
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer", "description": "an API key of the server (when it has keys)"}
    schema.setdefault("security", [{"bearer": []}, {}])  # a key where the server has them; none otherwise
    return schema


def swagger_assets() -> Path | None:
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def install_docs(app) -> None:
    """/docs (Swagger UI from local files) and the completed openapi.json; create the app with docs_url=None."""
    stock_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            with warnings.catch_warnings():  # the HEAD twins of GET routes, dropped below
                warnings.filterwarnings("ignore", message="Duplicate Operation ID")
                stock = stock_openapi()
            app.openapi_schema = complete_openapi(without_head_operations(stock))
        return app.openapi_schema

    app.openapi = openapi
    assets = swagger_assets()
    if assets is not None:
        app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        if assets is None:
            return JSONResponse({"error": {"message": "the API docs page needs the fastapi-offline package: "
                                           "pip install 'magi1[serve]'; /openapi.json has the API itself",
                                           "type": "service_unavailable_error", "param": None, "code": None}},
                                status_code=503)
        return HTMLResponse(DOCS_PAGE.format(assets=ASSETS_URL), headers={"Cache-Control": "no-store"})
