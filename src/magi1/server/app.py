"""`magi1 serve`: the HTTP API and the web page, over one JobStore and one model.

Routes (all JSON errors look like {"detail": "a sentence"}):
  GET    /                            the page
  GET    /health                      liveness, model state, queue counts
  GET    /v1/info                     the model's defaults and this server's limits
  POST   /v1/jobs                     submit (multipart form with an optional `file`, or a JSON object) -> 202
  GET    /v1/jobs                     all jobs, newest first
  GET    /v1/jobs/{id}                one job: state, progress, URLs of the chunks ready so far
  GET    /v1/jobs/{id}/video          the whole mp4 once finished (?download=1 for an attachment)
  GET    /v1/jobs/{id}/chunks/{k}     the mp4 of generated chunk k (also as {k}.mp4), as soon as it is done
  POST   /v1/jobs/{id}/cancel         stop a queued or running job; the chunks it finished are kept
  DELETE /v1/jobs/{id}                cancel if needed, then remove the job and its files
  /v1/videos..., /v1/models            the OpenAI-style Videos API on the same queue (videos_api.py)
Clients never name files: job ids are server-made random hex looked up in memory, chunk indices are integers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .job_request import UPLOAD_FIELD, BadRequest, parse_job_fields
from .jobs import Job, JobState, JobStore, ModelUnavailable, QueueFull
from .middleware import BodySizeLimit, SameOriginWrites, SecurityHeaders
from .openai_errors import ApiError, handle_api_error
from .settings import LOOPBACK_HOSTS, MiB, ServerSettings
from .uploads import UploadRejected, check_upload

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
CHUNK_NAME = re.compile(r"^(\d{1,5})(?:\.mp4)?$")
MAX_FORM_FIELDS = 32
COPY_BLOCK = 1 * MiB
NO_STORE = {"Cache-Control": "no-store"}


def create_app(pipeline_factory: Callable[[], Any], settings: ServerSettings | None = None,
               model_id: str = "magi1") -> FastAPI:
    """The ASGI app; `pipeline_factory()` is called once, in the worker thread, to load the model.

    model_id: the name /v1/models gives the model (OpenAI-style clients send it as `model`).
    """
    from .videos_api import videos_router

    settings = settings or ServerSettings()
    store = JobStore(settings, pipeline_factory)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        store.start()
        try:
            yield
        finally:
            await run_in_threadpool(store.stop)

    app = FastAPI(title="magi1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.jobs = store
    app.state.settings = settings
    # Added last = outermost: the host check runs first, then the origin check, then the body cap.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + MiB)  # + room for the form fields
    app.add_middleware(SameOriginWrites)
    if settings.allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(ApiError, handle_api_error)  # the OpenAI error envelope (openai_errors.py)
    app.include_router(videos_router(store, settings, model_id))

    def find_job(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id[:40]!r} (it may have been deleted or expired)")
        return job

    def view(job: Job) -> dict:
        return job_view(store.snapshot(job))

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=NO_STORE)

    @app.get("/health")
    def health():
        return JSONResponse({"status": "ok", "model": store.model_state, "model_error": store.model_error,
                             **store.counts()}, headers=NO_STORE)

    @app.get("/v1/info")
    def info():
        return JSONResponse({"model": store.model_state, "defaults": model_defaults(store.pipeline),
                             "limits": settings.limits(), "modes": ["t2v", "i2v", "v2v"]}, headers=NO_STORE)

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request):
        fields, upload = await read_submission(request)
        try:
            job = store.reserve()
        except QueueFull as err:
            raise HTTPException(429, str(err), headers={"Retry-After": "10"}) from None
        except ModelUnavailable as err:
            raise HTTPException(503, str(err)) from None
        try:
            upload_kind, input_name = None, None
            if upload is not None:
                checked = await save_and_check_upload(upload, job, settings)
                upload_kind, input_name = checked.kind, f"input{checked.suffix}"
            job_request = parse_job_fields(fields, settings, upload_kind=upload_kind)
            job_request.input_name = input_name
            await run_in_threadpool(check_against_model, store.pipeline, job_request)
            store.submit(job, job_request)
        except (BadRequest, UploadRejected) as err:
            store.release(job)
            raise HTTPException(err.status, str(err)) from None
        except QueueFull as err:
            raise HTTPException(429, str(err), headers={"Retry-After": "10"}) from None
        except ModelUnavailable as err:
            raise HTTPException(503, str(err)) from None
        except BaseException:
            store.release(job)
            raise
        return JSONResponse(view(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}", **NO_STORE})

    @app.get("/v1/jobs")
    def list_jobs():
        return JSONResponse({"jobs": [view(job) for job in store.list()], **store.counts()}, headers=NO_STORE)

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str):
        return JSONResponse(view(find_job(job_id)), headers=NO_STORE)

    @app.get("/v1/jobs/{job_id}/video")
    def get_video(job_id: str, download: bool = False):
        job = find_job(job_id)
        state = store.snapshot(job)
        if state["has_video"] and job.video_path.is_file():
            name = f"magi1-{job.id[:12]}.mp4" if download else None
            return FileResponse(job.video_path, media_type="video/mp4", filename=name)
        raise HTTPException(409, video_not_ready_message(state))

    @app.get("/v1/jobs/{job_id}/preview.png")
    def get_preview(job_id: str):
        job = find_job(job_id)
        png = store.previews.png(job.id)
        if png is None:
            raise HTTPException(404, "no preview yet: previews appear while the job's chunks are denoised")
        return Response(png, media_type="image/png", headers=NO_STORE)

    @app.get("/v1/jobs/{job_id}/chunks/{name}")
    def get_chunk(job_id: str, name: str):
        job = find_job(job_id)
        match = CHUNK_NAME.match(name)
        if match is None:
            raise HTTPException(404, "chunks are addressed by their index: /chunks/0, /chunks/1.mp4, ...")
        index = int(match.group(1))
        state = store.snapshot(job)
        path = job.chunk_path(index)
        if index < state["chunks_ready"] and path.is_file():
            return FileResponse(path, media_type="video/mp4")
        still_coming = not JobState(state["state"]).finished and (state["num_chunks"] is None
                                                                   or index < state["num_chunks"])
        if still_coming:
            raise HTTPException(425, f"chunk {index} is not ready yet ({state['chunks_ready']} ready so far)")
        raise HTTPException(404, f"this job has no chunk {index} ({state['chunks_ready']} were generated)")

    @app.post("/v1/jobs/{job_id}/cancel")
    def cancel_job(job_id: str):
        job = find_job(job_id)
        if not store.cancel(job):
            raise HTTPException(409, f"the job has already finished ({job.state.value})")
        return JSONResponse(view(job), headers=NO_STORE)

    @app.delete("/v1/jobs/{job_id}")
    def delete_job(job_id: str):
        job = find_job(job_id)
        store.delete(job)
        return JSONResponse({"id": job.id, "deleted": True}, headers=NO_STORE)

    return app


# ---------------------------------------------------------------------------------------------- helpers
async def read_submission(request: Request) -> tuple[dict, UploadFile | None]:
    """The text fields and the optional uploaded file of a POST /v1/jobs."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "the JSON body must be an object of job fields")
        return body, None
    if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise HTTPException(415, "send the job as multipart/form-data (with an optional `file`) or as JSON")
    form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    fields: dict[str, str] = {}
    upload: UploadFile | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != UPLOAD_FIELD:
                raise HTTPException(400, f"files go in the `{UPLOAD_FIELD}` field, not {key[:40]!r}")
            # A browser form with no file chosen sends an empty, nameless part: that is "no upload".
            if value.filename or (value.size or 0) > 0:
                upload = value
            continue
        if key in fields:
            raise HTTPException(400, f"field {key[:40]!r} was sent twice")
        fields[key] = value
    return fields, upload


async def save_and_check_upload(upload: UploadFile, job: Job, settings: ServerSettings):
    """Copy the upload into the job's folder under a server-chosen name, then make sure it decodes."""
    received = job.folder / "upload.part"
    size = 0
    with received.open("wb") as out:
        while block := await upload.read(COPY_BLOCK):
            size += len(block)
            if size > settings.max_upload_bytes:
                raise UploadRejected(f"the upload is larger than {settings.max_upload_bytes} bytes", status=413)
            out.write(block)
    checked = await run_in_threadpool(check_upload, received, settings)
    received.rename(job.folder / f"input{checked.suffix}")
    return checked


def job_view(record: dict) -> dict:
    """The API's picture of a job: its record plus the URLs a client follows."""
    request = record.pop("request")
    base = f"/v1/jobs/{record['id']}"
    chunk_prompts = request.get("chunk_prompts")
    return {
        "id": record["id"],
        "state": record["state"],
        "mode": request["mode"],
        "prompt": request["prompt"],
        "chunk_prompts": chunk_prompts,
        "settings": {k: request[k] for k in ("num_frames", "height", "width", "steps", "seed", "keep_aspect")},
        "has_input": request.get("input_name") is not None,
        "progress": round(float(record["progress"]), 4),
        "step": record["step"],
        "total_steps": record["total_steps"],
        "chunks_ready": record["chunks_ready"],
        "num_chunks": record["num_chunks"],
        "fps": record["fps"],
        "queue_position": record["queue_position"],
        "cancel_requested": record["cancel_requested"],
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


def check_against_model(pipeline, job_request) -> None:
    """Settings the model's config rejects (e.g. steps not a multiple of the window) fail now, not in the queue.

    Only possible once the model has loaded; before that the worker reports such mistakes as a failed job.
    """
    settings_for = getattr(pipeline, "settings_for", None)
    if settings_for is None:
        return
    try:
        settings_for(height=job_request.height, width=job_request.width, num_frames=job_request.num_frames,
                     num_inference_steps=job_request.steps, seed=job_request.seed)
    except ValueError as err:
        raise BadRequest(f"the model cannot run these settings: {err}") from None


def model_defaults(pipeline) -> dict | None:
    """What a job gets for the fields it leaves out (None until the model has loaded)."""
    runtime = getattr(getattr(pipeline, "config", None), "runtime_config", None)
    if runtime is None:
        return None
    frames_per_chunk = getattr(runtime, "chunk_width", 0) * getattr(runtime, "temporal_downsample_factor", 0)
    return {
        "num_frames": runtime.num_frames, "height": runtime.video_size_h, "width": runtime.video_size_w,
        "steps": runtime.num_steps, "seed": runtime.seed, "fps": getattr(pipeline, "fps", runtime.fps),
        "frames_per_chunk": frames_per_chunk or None, "window_size": getattr(runtime, "window_size", None),
    }


# ---------------------------------------------------------------------------------------------- CLI
def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main_serve(args) -> int:
    """`magi1 serve`: check the config and weights now, then serve until interrupted."""
    import uvicorn

    from magi1.config import load_config
    from magi1.errors import InputError
    from magi1.pipeline import MagiPipeline, check_weights_present

    config = load_config(args.config_file)
    check_weights_present(config)  # a missing folder fails in a second, before the server starts
    special_tokens = getattr(args, "special_tokens", None)
    if special_tokens and not Path(special_tokens).is_file():
        raise InputError(f"--special_tokens: no such file: {special_tokens}")

    temporary_dir = None
    if getattr(args, "results_dir", None):
        results_dir = Path(args.results_dir)
    else:
        temporary_dir = results_dir = Path(tempfile.mkdtemp(prefix="magi1-serve-"))
        logger.info("results go to %s and are removed when the server stops (--results_dir keeps them)", results_dir)
    host = args.host
    loopback = is_loopback(host)
    settings = ServerSettings(results_dir=results_dir, max_queue=args.max_queue,
                              allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    if not loopback:
        logger.warning("listening on %s: anyone who can reach this address can submit jobs", host)

    def load_pipeline():
        return MagiPipeline.from_pretrained(config, device=args.device, dtype=args.dtype,
                                            special_tokens_path=special_tokens)

    app = create_app(load_pipeline, settings, model_id=f"magi1-{Path(str(args.config_file)).stem}")
    shown_host = f"[{host}]" if ":" in host else host
    logger.info("magi1 serve: open http://%s:%d/ (model loading in the background)", shown_host, args.port)
    try:
        uvicorn.run(app, host=host, port=args.port, log_level="info")
    finally:
        if temporary_dir is not None:
            shutil.rmtree(temporary_dir, ignore_errors=True)
    return 0
