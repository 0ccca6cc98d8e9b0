"""`magi1 serve`: the HTTP API and the web page, over one JobStore and one model.

Routes (every error is {"error": {"message": "a sentence", ...}, "detail": "a sentence"}, see errors.py;
every GET route also answers HEAD):
  GET    /                            the page
  GET    /health                      liveness, model state, queue counts
  GET    /v1/info                     the model's defaults and this server's limits
  POST   /v1/jobs                     submit (multipart form with an optional `file`, or a JSON object) -> 202
  GET    /v1/jobs                     your jobs, newest first, a page at a time (?limit=20&after=<id>&order=desc)
  GET    /v1/jobs/{id}                one job: state, progress, cost, URLs of the chunks ready so far
  GET    /v1/jobs/{id}/video          the whole mp4 once finished (?download=1 for an attachment)
  GET    /v1/jobs/{id}/chunks/{k}     the mp4 of generated chunk k (also as {k}.mp4), as soon as it is done
  POST   /v1/jobs/{id}/cancel         stop a queued or running job; the chunks it finished are kept
  DELETE /v1/jobs/{id}                cancel if needed, then remove the job and its files
  WS     /v1/realtime/video           one video streamed chunk by chunk as fMP4, prompt changeable live (realtime_video.py)
  /v1/videos..., /v1/models            the OpenAI-style Videos API on the same queue (videos_api.py), whose
                                       errors are OpenAI's envelope alone (errors.py)
Clients never name files: job ids are server-made random hex looked up in memory, chunk indices are integers.
What protects every route (body caps and deadlines, Host and Origin checks, headers, the error shape) is in
middleware.py and http_server.py; taking in a job is submission.py.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .clients import client_identity, shared_client
from .cost import JobCost, budget_for, cost_view, job_cost
from .errors import ApiError, install_error_handlers
from .file_ranges import MediaFileResponse
from .job_request import BadRequest, whole_number
from .jobs import Job, JobState, JobStore
from .middleware import ErrorGuard, HostCheck, RequestLimits, SameOriginWrites
from .settings import MiB, ServerSettings
from .submission import accept_submission

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
CHUNK_NAME = re.compile(r"^(\d{1,5})(?:\.mp4)?$", re.ASCII)
NO_STORE = {"Cache-Control": "no-store"}


def create_app(pipeline_factory: Callable[[], Any], settings: ServerSettings | None = None, *,
               config=None, model_id: str = "magi1", api_keys: tuple[str, ...] = (),
               enhance_settings=None) -> FastAPI:
    """The ASGI app; `pipeline_factory()` is called once, in the worker thread, to load the model.

    `config` (the model's MagiConfig) lets submissions be checked against the model while it still loads;
    without it they are checked once the pipeline has loaded.
    model_id: the name /v1/models gives the model (OpenAI-style clients send it as `model`).
    api_keys: when given, every API route needs one (Authorization: Bearer) and each key is its own client.
    enhance_settings: the endpoint of jobs that ask for prompt enhancement (EnhanceSettings); None: the
    deterministic fallback templates.
    """
    from magi1.prompting import EnhanceSettings

    from .api_docs import install_docs
    from .api_keys import install_api_keys
    from .live_jobs import LiveJobs
    from .openai_unsupported import unsupported_router
    from .realtime_video import realtime_router
    from .videos_api import videos_router

    settings = settings or ServerSettings()
    store = JobStore(settings, pipeline_factory, config=config)
    store.live_jobs = LiveJobs()  # jobs watched over WS /v1/realtime/video (live_jobs.py)
    store.enhance_settings = enhance_settings or EnhanceSettings()  # read by the worker (job_enhance.py)
    store.model_id = model_id  # named in each video's tags (job_runner.py)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        answer_head_on_get_routes(_app)  # every route registered by now, whoever added it
        store.start()
        try:
            yield
        finally:
            await run_in_threadpool(store.stop)

    app = FastAPI(title="magi1", docs_url=None, redoc_url=None, lifespan=lifespan)  # /docs: api_docs.py
    app.state.jobs = store
    app.state.settings = settings
    app.state.client_identity = shared_client  # replaced by API-key authentication where it is set up
    install_error_handlers(app)
    if api_keys:
        install_api_keys(app, api_keys)  # innermost: a request without a key is refused before a route runs
    # Added last = outermost: ErrorGuard, then the host check, the origin check, the size and time limits.
    app.add_middleware(RequestLimits, head_bytes=settings.max_header_bytes, body_bytes=settings.max_body_bytes,
                       file_body_bytes=settings.max_upload_bytes + MiB,  # + room for the form fields
                       upload_bytes=settings.max_upload_bytes, body_timeout_s=settings.body_timeout_s)
    app.add_middleware(SameOriginWrites)
    if settings.allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(ErrorGuard)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(unsupported_router())  # before videos_router: /v1/videos/characters is no video id
    app.include_router(videos_router(store, settings, model_id))
    app.include_router(realtime_router(store, settings, model_id))
    install_docs(app)

    def find_job(request: Request, job_id: str) -> Job:
        job = store.get(job_id, client_identity(request))
        if job is None:
            raise ApiError(404, f"no job {job_id[:40]!r} (it may have been deleted or expired)")
        return job

    def view(job: Job) -> dict:
        return job_view(store.snapshot(job), budget_of())

    def budget_of() -> int | None:
        runtime = runtime_config_of(store)
        return budget_for(settings, runtime) if runtime is not None else None

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=NO_STORE)

    @app.get("/health")
    def health():
        return JSONResponse({"status": "ok", "model": store.model_state, "model_error": store.model_error,
                             "api_key_required": bool(api_keys), **store.counts()}, headers=NO_STORE)

    @app.get("/v1/info")
    def info():
        runtime = runtime_config_of(store)
        limits = settings.limits()
        limits["max_job_cost"] = budget_of()
        return JSONResponse({"model": store.model_state, "defaults": model_defaults(runtime, store.pipeline),
                             "limits": limits, "modes": ["t2v", "i2v", "v2v"],
                             "enhancer": store.enhance_settings.model or "fallback",
                             "default_cost": None if runtime is None else job_cost(runtime).pixel_steps},
                            headers=NO_STORE)

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request):
        job = await accept_submission(request, store, settings)
        return JSONResponse(view(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}", **NO_STORE})

    @app.get("/v1/jobs")
    def list_jobs(request: Request):
        query = request.query_params
        unknown = [k for k in query.keys() if k not in ("limit", "after", "order")]
        if unknown:
            raise ApiError(400, f"unknown query parameter {unknown[0][:40]!r}; known: limit, after, order")
        try:
            limit = whole_number(query.get("limit"), "limit")
        except BadRequest as err:
            raise ApiError(400, str(err)) from None
        limit = settings.default_page_size if limit is None else limit
        if not 1 <= limit <= settings.max_page_size:
            raise ApiError(400, f"limit must be between 1 and {settings.max_page_size}")
        order = query.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise ApiError(400, "order must be asc or desc")
        after = query.get("after") or None
        try:
            jobs, has_more = store.page(client_identity(request), limit=limit, after=after, order=order)
        except KeyError:
            raise ApiError(400, f"after names no job of yours ({after[:40]!r}); it may have been deleted") from None
        data = [view(job) for job in jobs]
        return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": has_more,
                             **store.counts()}, headers=NO_STORE)

    @app.get("/v1/jobs/{job_id}")
    def get_job(request: Request, job_id: str):
        return JSONResponse(view(find_job(request, job_id)), headers=NO_STORE)

    @app.get("/v1/jobs/{job_id}/video")
    def get_video(request: Request, job_id: str):
        job = find_job(request, job_id)
        download = request.query_params.get("download", "0").strip().lower()
        if download not in ("0", "1", "true", "false", "yes", "no", ""):
            raise ApiError(400, "download must be 1 or 0")
        state = store.snapshot(job)
        if state["has_video"] and job.video_path.is_file():
            name = f"magi1-{job.id[:12]}.mp4" if download in ("1", "true", "yes") else None
            return MediaFileResponse(job.video_path, media_type="video/mp4", filename=name)
        raise ApiError(409, video_not_ready_message(state))

    @app.get("/v1/jobs/{job_id}/preview.png")
    def get_preview(request: Request, job_id: str):
        job = find_job(request, job_id)
        png = store.previews.png(job.id)
        if png is None:
            raise ApiError(404, "no preview yet: previews appear while the job's chunks are denoised")
        return Response(png, media_type="image/png", headers=NO_STORE)

    @app.get("/v1/jobs/{job_id}/chunks/{name}")
    def get_chunk(request: Request, job_id: str, name: str):
        job = find_job(request, job_id)
        match = CHUNK_NAME.match(name)
        if match is None:
            raise ApiError(404, "chunks are addressed by their index: /chunks/0, /chunks/1.mp4, ...")
        index = int(match.group(1))
        state = store.snapshot(job)
        path = job.chunk_path(index)
        if index < state["chunks_ready"] and path.is_file():
            return MediaFileResponse(path, media_type="video/mp4")
        still_coming = not JobState(state["state"]).finished and (state["num_chunks"] is None
                                                                   or index < state["num_chunks"])
        if still_coming:
            raise ApiError(425, f"chunk {index} is not ready yet ({state['chunks_ready']} ready so far)")
        raise ApiError(404, f"this job has no chunk {index} ({state['chunks_ready']} were generated)")

    @app.post("/v1/jobs/{job_id}/cancel")
    def cancel_job(request: Request, job_id: str):
        job = find_job(request, job_id)
        outcome = store.cancel(job)
        if outcome == "gone":
            raise ApiError(404, f"no job {job_id[:40]!r} (it was just deleted)")
        if outcome == "finished":
            raise ApiError(409, f"the job has already finished ({job.state.value})")
        return JSONResponse(view(job), headers=NO_STORE)

    @app.delete("/v1/jobs/{job_id}")
    def delete_job(request: Request, job_id: str):
        job = find_job(request, job_id)
        if not store.delete(job):
            raise ApiError(404, f"no job {job_id[:40]!r} (it was just deleted)")
        return JSONResponse({"id": job.id, "object": "job.deleted", "deleted": True}, headers=NO_STORE)

    return app


def answer_head_on_get_routes(app: FastAPI) -> None:
    """Players and proxies probe with HEAD; FastAPI's GET routes refuse it with 405 unless told."""
    for route in _routes_of(app.router):
        if isinstance(route, APIRoute) and "GET" in route.methods:
            route.methods.add("HEAD")


def _routes_of(router):
    """Every route of `router`, those of included routers too (FastAPI keeps an included router whole)."""
    for route in router.routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes_of(inner)
        else:
            yield route


# ---------------------------------------------------------------------------------------------- helpers
def job_view(record: dict, budget: int | None = None) -> dict:
    """The API's picture of a job: its record plus the URLs a client follows."""
    request = record.pop("request")
    base = f"/v1/jobs/{record['id']}"
    chunk_prompts = request.get("chunk_prompts")
    return {
        "id": record["id"],
        "object": "job",
        "state": record["state"],
        "mode": request["mode"],
        "prompt": request["prompt"],
        "chunk_prompts": chunk_prompts,
        "enhance": bool(request.get("enhance")),
        "story": request.get("story"),
        "enhanced": record.get("enhanced"),  # {"prompt", "chunk_prompts", "original", "enhancer", "mode"}
        "settings": {k: request[k] for k in ("num_frames", "height", "width", "steps", "seed", "keep_aspect")},
        "has_input": request.get("input_name") is not None,
        "progress": round(float(record["progress"]), 4),
        "step": record["step"],
        "total_steps": record["total_steps"],
        "chunks_ready": record["chunks_ready"],
        "num_chunks": record["num_chunks"],
        "resumed_chunks": record["resumed_chunks"],
        "estimated_cost": cost_view(job_cost_of(record), budget),
        "fps": record["fps"],
        "queue_position": record["queue_position"],
        "cancel_requested": record["cancel_requested"],
        "stopped": record["stopped"],  # cancelled by a live viewer's session.stop: the video ends there on purpose
        "live_captions": record.get("live_captions"),  # a live job's prompt per chunk, its changes included
        "error": record["error"],
        "created_at": record["created_at"],
        "started_at": record["started_at"],
        "finished_at": record["finished_at"],
        "urls": {
            "self": base,
            "video": f"{base}/video" if record["has_video"] else None,
            "chunks": [f"{base}/chunks/{k}.mp4" for k in range(record["chunks_ready"])],
            "preview": f"{base}/preview.png" if record.get("has_preview") else None,
        },
    }


def job_cost_of(record: dict) -> JobCost | None:
    return JobCost(*record["cost"]) if record.get("cost") else None


def video_not_ready_message(state: dict) -> str:
    ready, base = state["chunks_ready"], f"/v1/jobs/{state['id']}/chunks/"
    if state["state"] == "queued":
        return f"the job is queued (position {state['queue_position']}); the video is not made yet"
    if state["state"] == "running":
        return (f"the job is running: {ready} chunk(s) ready so far, each at {base}<k>.mp4; "
                "the whole video is ready when the job is done")
    if state["state"] == "failed":
        return f"the job failed, so there is no video: {state['error']}"
    return "the job was cancelled before any chunk finished, so there is no video"


def runtime_config_of(store: JobStore):
    """The model config's runtime section: from the config given up front, or the loaded pipeline's."""
    config = store.config if store.config is not None else getattr(store.pipeline, "config", None)
    return getattr(config, "runtime_config", None)


def model_defaults(runtime, pipeline) -> dict | None:
    """What a job gets for the fields it leaves out (None while neither the config nor the model is known)."""
    if runtime is None:
        return None
    frames_per_chunk = getattr(runtime, "chunk_width", 0) * getattr(runtime, "temporal_downsample_factor", 0)
    return {
        "num_frames": runtime.num_frames, "height": runtime.video_size_h, "width": runtime.video_size_w,
        "steps": runtime.num_steps, "seed": runtime.seed, "fps": getattr(pipeline, "fps", runtime.fps),
        "frames_per_chunk": frames_per_chunk or None, "window_size": getattr(runtime, "window_size", None),
    }
