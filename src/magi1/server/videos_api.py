"""The OpenAI-style Videos API on the server's one job queue (what the `openai` package's client.videos calls).

  POST   /v1/videos                 create (multipart or JSON; input_reference image -> i2v)  -> the video object
  GET    /v1/videos                 list, newest first (after, limit, order)
  GET    /v1/videos/{id}            retrieve (header openai-poll-after-ms tells create_and_poll how often)
  DELETE /v1/videos/{id}            cancel if needed and remove
  GET    /v1/videos/{id}/content    the mp4 (variant=thumbnail: a PNG of the first frame)
  POST   /v1/videos/extensions      continue a finished video (its id, or an uploaded mp4): MAGI-1's v2v
  POST   /v1/videos/sync            create and wait: the mp4 itself, with Server-Timing (queue, generate)
  GET    /v1/models                 the loaded model, with its limits under "magi1"
Every job is also a /v1/jobs job (and the reverse): ids are "video_" + the job id.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from . import video_files
from .clients import client_identity
from .cost import JobCost, budget_for, cost_view
from .errors import scrub_paths
from .extension_checks import check_extendable, check_total_length
from .file_ranges import MediaFileResponse
from .job_request import BadRequest, whole_number
from .jobs import Job, JobStore, Refusal, StagedJob
from .openai_errors import ApiError, invalid, not_found
from .settings import ServerSettings
from .submission import check_job, save_and_check_upload
from .uploads import UploadRejected
from .video_request import ModelLimits, model_limits, parse_video_request, seconds_of, seconds_text

ID_PREFIX = "video_"
NO_STORE = {"Cache-Control": "no-store"}
STATUS = {"queued": "queued", "running": "in_progress", "done": "completed", "failed": "failed",
          "cancelled": "failed"}
POLL_AFTER_MS = "500"
MAX_LIST = 100
REFUSAL_CODES = {429: "rate_limit_exceeded", 503: "model_unavailable", 507: "insufficient_storage"}


def videos_router(store: JobStore, settings: ServerSettings, model_id: str) -> APIRouter:
    """Which jobs a caller sees is the server's client identity (clients.py): each API key its own."""
    router = APIRouter(tags=["videos (OpenAI-style)"])
    frames_cache: dict[str, int] = {}

    def limits() -> ModelLimits:
        """From the model's config, so requests are checked while the model still loads."""
        config = store.config
        if config is None:  # a custom pipeline without a MagiConfig: known once it has loaded
            if store.model_state == "failed":
                raise ApiError(503, f"the model failed to load: {store.model_error}", code="model_unavailable")
            raise ApiError(503, "the model is still loading; try again in a few seconds", code="model_loading",
                           headers={"Retry-After": "5"})
        return model_limits(config, settings, fps=getattr(store.pipeline, "fps", None))

    def find(request: Request, video_id: str, param: str = "video_id") -> Job:
        job = store.get(video_id[len(ID_PREFIX):], client_identity(request)) \
            if video_id.startswith(ID_PREFIX) else None
        if job is None:
            raise not_found(video_id, param)  # 404 for another client's video too, so ids do not leak
        return job

    def content_path(job: Job) -> "video_files.Path":
        state = store.snapshot(job)
        if not (state["has_video"] and job.video_path.is_file()):
            status, name = video_status(state), ID_PREFIX + job.id
            if status in ("queued", "in_progress"):  # content will come: ask again later
                reason = "it is queued" if status == "queued" else "it is still being made"
                raise ApiError(409, f"video {name} has no content yet: {reason}", param="video_id",
                               code="video_not_ready")
            # final: this video will never have content, so asking again cannot help
            if state["state"] == "failed":
                message = f"video {name} failed, so it has no content: {state['error'] or 'no reason was recorded'}"
            else:
                message = f"video {name} was cancelled before any chunk finished, so it has no content"
            raise ApiError(400, message, param="video_id", code="video_failed")
        meta = job.request.video_api or {}
        if meta.get("stitched"):
            return video_files.stitched_video(job.folder, state["fps"] or limits().fps)
        return job.video_path

    def view(job: Job) -> dict:
        record = store.snapshot(job)
        config = store.config
        budget = budget_for(settings, config.runtime_config) if config is not None else None
        runtime = config.runtime_config if config is not None else None
        default_size = f"{runtime.video_size_w}x{runtime.video_size_h}" if runtime is not None else None
        # What a job sent without seed or steps was made with: the config's, as its mp4's tags record them.
        defaults = {"seed": runtime.seed, "steps": runtime.num_steps} if runtime is not None else {}
        return video_object(record, job, model_id, settings, frames_cache, budget, default_size, defaults)

    async def commit(request: Request, staged: StagedJob, prepared) -> Job:
        """Check the request against the config and the cost budget, then queue it (the last check is room)."""
        try:
            cost = await run_in_threadpool(check_job, store, prepared.job, settings)
        except BadRequest as err:
            raise invalid(str(err), param=_param_of(str(err))) from None
        prepared.job.video_api = prepared.meta
        try:
            return store.commit(staged, prepared.job, client=client_identity(request), cost=cost)
        except Refusal as err:
            headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
            raise ApiError(err.status, str(err), code=REFUSAL_CODES.get(err.status), headers=headers) from None

    async def staged_submission(work, upload_field: str) -> Job:
        """Run work(staged) in a fresh staged folder, which is discarded unless work commits it."""
        staged = store.stage()
        try:
            return await work(staged)
        except UploadRejected as err:
            # 400, not 415, for a file that is no usable image or video: OpenAI clients map only 400 to their
            # BadRequestError (the job API keeps 415); 413 stays for files past a size limit.
            status = 400 if err.status == 415 else err.status
            raise ApiError(status, str(err), param=upload_field, code="invalid_file") from None
        finally:
            if staged.folder.exists():  # committed folders have been renamed away
                store.discard(staged)

    async def create_video(request: Request) -> Job:
        model = limits()
        fields, files = await video_files.read_body(request, ("input_reference",))
        reference = fields.pop("input_reference", None)

        async def work(staged: StagedJob) -> Job:
            upload_kind, input_name = None, None
            if "input_reference" in files:
                checked = await save_and_check_upload(files["input_reference"], staged, settings)
                upload_kind, input_name = checked.kind, f"input{checked.suffix}"
            elif reference not in (None, ""):
                if not isinstance(reference, dict) or "image_url" not in reference:
                    raise invalid("input_reference must be an image file or {\"image_url\": a data URL} "
                                  "(file_id is not supported here)", param="input_reference",
                                  code="unsupported_value")
                data = video_files.decode_data_url(reference["image_url"], "input_reference.image_url")
                checked = await run_in_threadpool(video_files.store_bytes, data, staged.folder, settings)
                upload_kind, input_name = checked.kind, f"input{checked.suffix}"
            if upload_kind == "video":
                raise invalid("input_reference must be an image; to continue a video use POST "
                              "/v1/videos/extensions", param="input_reference", code="unsupported_value")
            prepared = parse_video_request(fields, model, settings, model_id=model_id, kind="create",
                                           upload_kind=upload_kind)
            prepared.job.input_name = input_name
            return await commit(request, staged, prepared)

        return await staged_submission(work, "input_reference")

    @router.post("/v1/videos", summary="Create a video (t2v, or i2v with input_reference)")
    async def create(request: Request):
        return JSONResponse(view(await create_video(request)), headers=NO_STORE)

    @router.post("/v1/videos/extensions", summary="Continue a finished video (MAGI-1 video continuation)")
    async def extend(request: Request):
        model = limits()
        fields, files = await video_files.read_body(request, ("video",))
        source_ref = fields.pop("video", None)
        if isinstance(source_ref, str) and source_ref.startswith(ID_PREFIX):
            source_ref = {"id": source_ref}  # a bare id is taken as {"id": ...}: there is no other reading of it

        async def work(staged: StagedJob) -> Job:
            if "video" in files:
                checked = await save_and_check_upload(files["video"], staged, settings)
                if checked.kind != "video":
                    raise invalid("video must be an mp4 (or another video) or {\"id\": a video id}", param="video")
                source, size, source_id = staged.folder / f"input{checked.suffix}", None, None
            elif isinstance(source_ref, dict) and isinstance(source_ref.get("id"), str):
                earlier = find(request, source_ref["id"], "video")
                record = store.snapshot(earlier)
                check_extendable(source_ref["id"], video_status(record), record)
                source = await run_in_threadpool(content_path, earlier)
                size = (earlier.request.video_api or {}).get("size") or \
                    f"{earlier.request.width or model.default_width}x{earlier.request.height or model.default_height}"
                source_id = ID_PREFIX + earlier.id
            elif source_ref not in (None, ""):  # sent, but neither a file nor {"id": text}
                raise invalid("video must be {\"id\": a completed video's id (text)} or an uploaded mp4, got "
                              f"{str(source_ref)[:40]!r}", param="video")
            else:
                raise invalid("video is required: {\"id\": a completed video's id} or an uploaded mp4",
                              param="video", code="missing_required_parameter")
            if size is not None and "size" not in fields:
                fields["size"] = size  # an extension keeps its video's size unless asked otherwise
            prepared = parse_video_request(fields, model, settings, model_id=model_id, kind="extension",
                                           upload_kind="video")
            request_job = prepared.job
            source_frames = await run_in_threadpool(
                prepare_extension, source, staged.folder, request_job, model)
            if source.parent == staged.folder and source.name != "input.mp4":
                source.unlink(missing_ok=True)
            request_job.input_name = "input.mp4"
            check_total_length(source_frames, float(prepared.meta["seconds"]), model)
            source_seconds = seconds_of(source_frames, model.fps)
            prepared.meta.update(extends=source_id, stitched=True, source_seconds=source_seconds,
                                 seconds=seconds_text(source_seconds + float(prepared.meta["seconds"])))
            return await commit(request, staged, prepared)

        return JSONResponse(view(await staged_submission(work, "video")), headers=NO_STORE)

    @router.post("/v1/videos/sync", summary="Create a video and wait: the mp4 itself, with timing headers")
    async def create_sync(request: Request):
        job = await create_video(request)
        while not job.state.finished:
            if await request.is_disconnected():
                store.cancel(job)  # nobody is waiting for it any more
                raise ApiError(499, "the client went away")
            await asyncio.sleep(0.05)
        state = store.snapshot(job)
        if not state["has_video"]:
            if state["state"] == "cancelled":
                raise ApiError(409, "the video was cancelled before any chunk finished", code="cancelled",
                               headers={"X-Video-Id": ID_PREFIX + job.id})
            raise ApiError(500, f"the video failed: {state['error']}", code="generation_failed",
                           headers={"X-Video-Id": ID_PREFIX + job.id})
        path = await run_in_threadpool(content_path, job)
        queued = (state["started_at"] or state["created_at"]) - state["created_at"]
        generated = state["finished_at"] - (state["started_at"] or state["finished_at"])
        timing = f"queue;dur={queued * 1000:.0f}, generate;dur={generated * 1000:.0f}"
        return MediaFileResponse(path, media_type="video/mp4", headers={"X-Video-Id": ID_PREFIX + job.id,
                                                                   "Server-Timing": timing, **NO_STORE})

    @router.get("/v1/videos", summary="List videos")
    def list_videos(request: Request, after: str | None = None, limit: str | None = None, order: str = "desc"):
        if order not in ("asc", "desc"):
            raise invalid(f"order must be asc or desc, got {order[:10]!r}", param="order")
        count = _limit(limit)
        if after and not after.startswith(ID_PREFIX):
            raise not_found(after, "after")
        try:
            jobs, more = store.page(client_identity(request), limit=count, after=after[len(ID_PREFIX):] if after
                                    else None, order=order)
        except KeyError:
            raise not_found(after, "after") from None
        data = [view(j) for j in jobs]
        return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": more}, headers=NO_STORE)

    @router.get("/v1/videos/{video_id}", summary="Retrieve a video")
    def retrieve(request: Request, video_id: str):
        return JSONResponse(view(find(request, video_id)),
                            headers={"openai-poll-after-ms": POLL_AFTER_MS, **NO_STORE})

    @router.delete("/v1/videos/{video_id}", summary="Delete a video (cancelled first if still running)")
    def delete(request: Request, video_id: str):
        job = find(request, video_id)
        store.delete(job)
        frames_cache.pop(job.id, None)
        return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True}, headers=NO_STORE)

    @router.get("/v1/videos/{video_id}/content", summary="Download the mp4 (or variant=thumbnail)")
    def content(request: Request, video_id: str, variant: str = "video"):
        job = find(request, video_id)
        if variant not in ("video", "thumbnail"):
            raise invalid(f"variant {variant[:20]!r} is not offered here: video or thumbnail", param="variant",
                          code="unsupported_value")
        path = content_path(job)
        if variant == "thumbnail":
            return FileResponse(video_files.thumbnail(path), media_type="image/png", headers=NO_STORE)
        return MediaFileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4", headers=NO_STORE)

    @router.get("/v1/models", summary="The model this server runs")
    def models():
        return JSONResponse({"object": "list", "data": [model_object()]}, headers=NO_STORE)

    @router.get("/v1/models/{name}", summary="One model")
    def one_model(name: str):
        if name != model_id:
            raise ApiError(404, f"this server runs {model_id!r} only", param="model", code="model_not_found")
        return JSONResponse(model_object(), headers=NO_STORE)

    def model_object() -> dict:
        config = store.config
        stated = model_limits(config, settings, fps=getattr(store.pipeline, "fps", None)).to_dict() \
            if config is not None else None
        return {"id": model_id, "object": "model", "created": int(store_started), "owned_by": "magi1",
                "status": store.model_state, "magi1": stated}

    store_started = time.time()
    return router


def _given_or(value, default):
    return default if value is None else value


def _limit(text: str | None) -> int:
    try:
        count = whole_number(text, "limit")
    except BadRequest:
        count = 0
    if count is None:
        return 20
    if not 1 <= count <= MAX_LIST:
        raise invalid(f"limit must be a whole number from 1 to {MAX_LIST}, got {str(text)[:10]!r}", param="limit")
    return count


def _param_of(message: str) -> str | None:
    """The Videos API field a config refusal is about (a budget refusal is about several)."""
    if "budget" in message:
        return None
    if "chunk prompt" in message or message.startswith("chunk_prompts"):
        return "chunk_prompts"
    if "step" in message:
        return "num_inference_steps"
    if "frames" in message or "chunk" in message:
        return "seconds"
    return None


def video_status(record: dict) -> str:
    """The Videos API status of a job record. A live video its viewer ended with session.stop is the completed
    (shorter) video of the chunks it finished, as the live protocol promises; any other cancel is a failure."""
    if record["state"] == "cancelled" and record["stopped"] and record["has_video"]:
        return "completed"
    return STATUS[record["state"]]


def prepare_extension(source, folder, request_job, model: ModelLimits) -> int:
    """video_files.prepare_extension, with a video that cannot be read told as a 400 naming no path."""
    try:
        return video_files.prepare_extension(source, folder, request_job.width, request_job.height, model.fps,
                                             request_job.keep_aspect, model.frames_per_chunk)
    except (OSError, ValueError) as err:
        raise invalid(f"the video cannot be read: {scrub_paths(str(err))}", param="video") from None


def video_object(record: dict, job: Job, model_id: str, settings: ServerSettings, frames_cache: dict,
                 budget: int | None = None, default_size: str | None = None, defaults: dict | None = None) -> dict:
    """The OpenAI video object of a job, with magi1's own fields under "magi1". default_size: the model's
    configured "WxH", which a job made without a size (through /v1/jobs) is made at; defaults: its "seed" and
    "steps", which a job sent without them is made with (so the object says how to make the video again)."""
    defaults = defaults or {}
    request = record["request"]
    meta = request.get("video_api") or {}
    state = record["state"]
    status = video_status(record)
    error = None
    if state == "failed":
        error = {"code": "generation_failed", "message": record["error"] or "the video failed"}
    elif status == "failed":  # cancelled
        error = {"code": "cancelled", "message": "the video was cancelled"
                 + (f" after {record['chunks_ready']} chunk(s); those are kept" if record["has_video"] else "")}
    size = meta.get("size")
    if not size and (request.get("width") or request.get("height") or default_size):
        default_w, _, default_h = (default_size or "x").partition("x")
        size = f"{request.get('width') or default_w}x{request.get('height') or default_h}"
    seconds = meta.get("seconds")
    fps = record["fps"]
    if record["has_video"] and fps and job.video_path.is_file():
        if job.id not in frames_cache:
            frames_cache[job.id] = video_files.frame_count(job.video_path)
        seconds = seconds_text(seconds_of(frames_cache[job.id], fps) + float(meta.get("source_seconds") or 0))
    finished = record["finished_at"]
    return {
        "id": ID_PREFIX + record["id"], "object": "video", "model": meta.get("model", model_id),
        "status": status, "progress": 100 if status == "completed" else int(round(100 * float(record["progress"]))),
        "created_at": int(record["created_at"]), "completed_at": int(finished) if finished else None,
        "expires_at": int(finished + settings.result_ttl_s) if finished else None,
        "prompt": request.get("prompt"), "seconds": seconds or "", "size": size or "",
        "remixed_from_video_id": None, "error": error,
        "magi1": {"mode": request["mode"], "extends": meta.get("extends"),
                  "seed": _given_or(request.get("seed"), defaults.get("seed")),
                  "num_inference_steps": _given_or(request.get("steps"), defaults.get("steps")),
                  "chunk_prompts": request.get("chunk_prompts"),
                  "negative_prompt": request.get("negative_prompt"), "enhance": bool(request.get("enhance")),
                  "story": request.get("story"), "enhanced": record.get("enhanced"),
                  "chunks_ready": record["chunks_ready"], "stopped": record["stopped"],
                  "live_captions": record.get("live_captions"),
                  "num_chunks": record["num_chunks"], "fps": fps, "queue_position": record["queue_position"],
                  "estimated_cost": cost_view(JobCost(*record["cost"]) if record.get("cost") else None, budget),
                  "job": f"/v1/jobs/{record['id']}"},
    }
