"""Taking in one job: read the body, check everything, and only then ask whether there is room for it.

    job = await accept_submission(request, store, settings)   # raises ApiError (the one error shape)

The order is the point: a job that could never run is told why (400 / 413 / 415) even while the queue is
full or the model is loading, and only a valid job can hear 429 (queue or client cap), 503 (no model) or
507 (low disk). Any route that creates jobs (the job API, an OpenAI-style one) goes through this.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .clients import client_identity
from .config_check import check_job_against_config
from .cost import JobCost, check_cost
from .errors import ApiError, scrub_paths
from .job_request import UPLOAD_FIELD, BadRequest, JobRequest, echo_names, parse_job_fields
from .jobs import Job, JobStore, Refusal, StagedJob
from .settings import MiB, ServerSettings
from .uploads import CheckedUpload, UploadRejected, check_upload

logger = logging.getLogger(__name__)

MAX_FORM_FIELDS = 32
COPY_BLOCK = 1 * MiB
JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def accept_submission(request, store: JobStore, settings: ServerSettings) -> Job:
    """Parse, check and queue the job in `request`; ApiError for every refusal."""
    client = client_identity(request)
    fields, upload = await read_submission(request)
    staged = store.stage()
    try:
        checked = await save_and_check_upload(upload, staged, settings) if upload is not None else None
        job_request = parse_job_fields(fields, settings, upload_kind=checked.kind if checked else None)
        job_request.input_name = f"input{checked.suffix}" if checked else None
        cost = await run_in_threadpool(check_job, store, job_request, settings)
        return store.commit(staged, job_request, client=client, cost=cost)
    except (BadRequest, UploadRejected) as err:
        store.discard(staged)
        raise ApiError(err.status, str(err)) from None
    except Refusal as err:
        store.discard(staged)
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
        raise ApiError(err.status, str(err), headers=headers) from None
    except BaseException:
        store.discard(staged)
        raise


def check_job(store: JobStore, job_request: JobRequest, settings: ServerSettings) -> JobCost | None:
    """What can be known before the job runs: against the model's config (known while the model loads)."""
    config = store.config
    if config is not None:
        return check_job_against_config(job_request, config, settings)
    # A pipeline without a MagiConfig (a custom one): its own check, once it has loaded.
    pipeline = store.pipeline
    settings_for = getattr(pipeline, "settings_for", None)
    if settings_for is not None:
        try:
            settings_for(height=job_request.height, width=job_request.width, num_frames=job_request.num_frames,
                         num_inference_steps=job_request.steps, seed=job_request.seed)
        except ValueError as err:
            raise BadRequest(f"the model cannot run these settings: {scrub_paths(str(err))}") from None
    runtime = getattr(getattr(pipeline, "config", None), "runtime_config", None)
    return check_cost(job_request, runtime, settings) if runtime is not None else None


# ---------------------------------------------------------------------------------------------- the body
def content_type_of(request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_submission(request) -> tuple[dict, UploadFile | None]:
    """The fields and the optional uploaded file of a job submission (JSON object, or a form)."""
    content_type = content_type_of(request)
    if content_type in JSON_TYPES:
        return await read_json_object(request), None
    if content_type not in FORM_TYPES:
        raise ApiError(415, "send the job as multipart/form-data (with an optional `file`), "
                            "application/x-www-form-urlencoded, or a JSON object")
    form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    fields: dict[str, str] = {}
    upload: UploadFile | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != UPLOAD_FIELD:
                raise ApiError(400, f"files go in the `{UPLOAD_FIELD}` field, not {echo_names([key])}")
            # A browser form with no file chosen sends an empty, nameless part: that is "no upload".
            if value.filename or (value.size or 0) > 0:
                upload = value
            continue
        if key in fields:
            raise ApiError(400, f"field {echo_names([key])} was sent twice")
        fields[key] = value
    return fields, upload


async def read_json_object(request) -> dict[str, Any]:
    """The body as a JSON object (the body is already capped by RequestLimits, so it fits in memory)."""
    body = await request.body()
    try:
        value = json.loads(body.decode("utf-8-sig"))  # JSON is UTF-8 (RFC 8259); strict, so no lone surrogates
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply", code="invalid_json") from None
    except ValueError:  # JSONDecodeError, bad UTF-8, a number too long to convert
        raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the JSON body must be an object of fields", code="invalid_json")
    return value


async def save_and_check_upload(upload: UploadFile, staged: StagedJob, settings: ServerSettings) -> CheckedUpload:
    """Copy the upload into the staged job folder under a server-chosen name, then decode it in full."""
    received = staged.folder / "upload.part"
    size = 0
    with received.open("wb") as out:
        while block := await upload.read(COPY_BLOCK):
            size += len(block)
            if size > settings.max_upload_bytes:
                raise UploadRejected(f"the upload is larger than {settings.max_upload_bytes} bytes", status=413)
            out.write(block)
    checked = await run_in_threadpool(check_upload, received, settings)
    received.rename(staged.folder / f"input{checked.suffix}")
    return checked
