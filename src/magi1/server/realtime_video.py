"""WS /v1/realtime/video: one video streamed as it is made, with its prompt changeable mid-stream.

The protocol (JSON text messages, plus one binary message per chunk; docs/serving.md has it in full):

  client -> server
    {"type": "session.start", "prompt": ..., "size": "64x64", "seconds": 2 | "frames": 48, "seed": 7,
     "num_inference_steps": 4, "chunk_prompts": {...}, "image": data URL (i2v), "video": data URL (v2v),
     "enhance": true, "story": ...}
    {"type": "session.interaction", "prompt": ..., "transition_chunks": 0}
    {"type": "session.stop"}
  server -> client
    {"type": "video.start", "video_id", "status", "num_chunks", "frames_per_chunk", "fps", "width", ...}
    per clean chunk: {"type": "video.chunk_metadata", "chunk", "start_frame", "num_frames", "caption", ...},
                     then one binary message: the chunk as a fragmented-MP4 fragment (the first one starts
                     with the init segment), ready for Media Source Extensions' appendBuffer
    {"type": "session.interaction.accepted", "event_id", ...}   at once
    {"type": "session.interaction.applied", "event_id", "first_chunk"}   when its first chunk enters the window
    {"type": "session.done", "status": "completed" | "stopped" | "failed", "chunks", "video_id", "error"}
    {"type": "error", "error": {"message", "type", "param", "code"}}

A change of prompt captions every chunk from the first one that has not yet entered the denoising window
when the server receives it (MAGI-1's per-chunk captions, decided live: sampling/live_prompts.py); each
chunk's metadata says which caption it got. session.stop stops the run at its next denoising step: the
chunks already sent are the video (GET /v1/videos/{id}/content serves the same bytes), a completed one in the
Videos API (the job is marked `stopped`). The session is a job on the server's one queue (also listed under
/v1/videos and /v1/jobs); a client that disconnects cancels it (a failed video there, its chunks kept).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from . import video_files
from .clients import client_identity
from .errors import error_type, scrub_paths
from .job_request import BadRequest, short_number
from .jobs import Job, JobState, JobStore, Refusal
from .live_jobs import LiveJob, LiveJobs
from .openai_errors import ApiError
from .settings import ServerSettings
from .submission import check_job
from .uploads import UploadRejected
from .video_request import model_limits, parse_video_request

logger = logging.getLogger(__name__)

PATH = "/v1/realtime/video"
SUBPROTOCOL = "magi1.realtime.v1"
START_FIELDS = ("prompt", "model", "size", "seconds", "frames", "seed", "num_inference_steps", "chunk_prompts",
                "negative_prompt", "image", "video", "keep_aspect", "enhance", "story")
START_TIMEOUT_S = 60.0       # a connection that never says what to make is closed
WAKE_EVERY_S = 0.25          # how often the session looks at its job between wake-ups
MAX_MESSAGE_CHARS = 100_000  # interactions and stops are small; session.start may carry an image
DONE_STATUS = {JobState.DONE: "completed", JobState.CANCELLED: "stopped", JobState.FAILED: "failed"}


def max_message_bytes(settings: ServerSettings) -> int:
    """The largest client message: a session.start carrying an upload as big as the HTTP routes take, in
    base64 (uvicorn is given the same bound, so the server's own check is the one a client meets)."""
    return MAX_MESSAGE_CHARS + settings.max_upload_bytes * 4 // 3


def realtime_router(store: JobStore, settings: ServerSettings, model_id: str) -> APIRouter:
    router = APIRouter()

    @router.websocket(PATH)
    async def realtime_video(websocket: WebSocket):
        origin = websocket.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != websocket.headers.get("host"):
            # Browsers let any site open a WebSocket to localhost; only the server's own page may.
            await websocket.close(code=1008, reason="cross-origin WebSocket refused")
            return
        offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        session = RealtimeSession(websocket, store, settings, model_id)
        try:
            await session.run()
        except WebSocketDisconnect:
            pass
        finally:
            session.end()

    return router


class SessionError(Exception):
    """Something the client sent is wrong; told as an `error` message (`fatal`: the session ends)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, fatal: bool = False,
                 status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.fatal, self.status = message, param, code, fatal, status


class RealtimeSession:
    def __init__(self, websocket: WebSocket, store: JobStore, settings: ServerSettings, model_id: str):
        self.websocket, self.store, self.settings, self.model_id = websocket, store, settings, model_id
        self.job: Job | None = None
        self.live: LiveJob | None = None
        self.wake = asyncio.Event()
        self.sending = asyncio.Lock()  # the stream and the replies to the client are sent from two tasks
        self.closed_by_client = False

    @property
    def live_jobs(self) -> LiveJobs:
        return self.store.live_jobs

    # ------------------------------------------------------------------ the session
    async def run(self) -> None:
        try:
            start = await asyncio.wait_for(self.receive(), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            await self.send_error(SessionError(f"no session.start within {START_TIMEOUT_S:.0f} s", fatal=True))
            return
        except SessionError as err:
            await self.send_error(err)
            return
        if start.get("type") != "session.start":
            await self.send_error(SessionError("the first message must be {\"type\": \"session.start\", ...}",
                                               param="type", fatal=True))
            return
        try:
            await self.start_job(start)
        except SessionError as err:
            await self.send_error(err)
            return
        reader = asyncio.create_task(self.read_client())
        try:
            await self.stream()
        finally:
            reader.cancel()

    async def start_job(self, start: dict) -> None:
        fields = {k: v for k, v in start.items() if k != "type"}
        loop = asyncio.get_running_loop()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(self.wake.set)
            except RuntimeError:  # the connection's loop is gone: nobody to wake
                pass

        staged = self.store.stage()
        try:
            prepared, model = await self.prepare(fields, staged)
            try:
                cost = await run_in_threadpool(check_job, self.store, prepared.job, self.settings)
            except BadRequest as err:
                raise SessionError(str(err)) from None
            prepared.job.video_api = {**prepared.meta, "live": True}
            self.live = LiveJob(staged.id, wake)
            self.live_jobs.add(self.live)  # before the job is queued, so the worker finds it from the start
            try:
                self.job = self.store.commit(staged, prepared.job, client=client_identity(self.websocket), cost=cost)
            except Refusal as err:
                self.live_jobs.remove(staged.id)
                raise SessionError(str(err), code="rate_limit_exceeded" if err.status == 429 else None,
                                   status=err.status, fatal=True) from None
        except ApiError as err:
            raise SessionError(err.message, param=err.param, code=err.code, status=err.status, fatal=True) from None
        except UploadRejected as err:
            raise SessionError(str(err), code="invalid_file", status=err.status, fatal=True) from None
        finally:
            if staged.folder.exists():  # committed folders have been renamed away
                self.store.discard(staged)
        request = self.job.request
        num_chunks = math.ceil(request.num_frames / model.frames_per_chunk) if request.num_frames else None
        await self.send({"type": "video.start", "video_id": f"video_{self.job.id}", "job_id": self.job.id,
                         "status": "queued", "mode": request.mode, "prompt": request.prompt,
                         "enhance": request.wants_enhancement,  # the captions come in each chunk's metadata
                         "num_chunks": num_chunks, "frames_per_chunk": model.frames_per_chunk, "fps": model.fps,
                         "width": request.width, "height": request.height, "seconds": prepared.meta["seconds"],
                         "content_url": f"/v1/videos/video_{self.job.id}/content"})

    async def prepare(self, fields: dict, staged):
        unknown = sorted(set(fields) - set(START_FIELDS))
        if unknown:
            raise SessionError(f"unknown field {unknown[0][:40]!r} in session.start; it takes "
                               f"{', '.join(START_FIELDS)}", param=unknown[0][:40], code="unknown_parameter",
                               fatal=True)
        config = self.store.config
        if config is None:
            raise SessionError("the model is still loading; try again in a few seconds", code="model_loading",
                               status=503, fatal=True)
        model = model_limits(config, self.settings, fps=getattr(self.store.pipeline, "fps", None))
        frames = fields.pop("frames", None)
        if frames is not None:
            if "seconds" in fields:
                raise SessionError("give seconds or frames, not both", param="frames", fatal=True)
            if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
                raise SessionError(f"frames must be a whole number >= 1, got {str(frames)[:20]!r}", param="frames",
                                   fatal=True)
            fields["seconds"] = frames / model.fps  # whole chunks, like seconds
        image, video = fields.pop("image", None), fields.pop("video", None)
        if image is not None and video is not None:
            raise SessionError("give image (i2v) or video (v2v), not both", param="video", fatal=True)
        upload_kind, kind = None, "create"
        if image is not None:
            url = image.get("image_url") if isinstance(image, dict) else image
            checked = await self.store_upload(video_files.decode_data_url(url, "image"), staged, "image")
            if checked.kind != "image":
                raise SessionError("image must be a picture (png, jpeg, webp, bmp)", param="image", fatal=True)
            upload_kind = "image"
        elif video is not None:
            checked = await self.store_upload(video_files.decode_data_url(video, "video"), staged, "video")
            if checked.kind != "video":
                raise SessionError("video must be a video file (mp4, mkv, webm, avi)", param="video", fatal=True)
            upload_kind, kind = "video", "extension"
            if "seconds" not in fields:
                fields["seconds"] = model.default_seconds
        try:
            prepared = parse_video_request(fields, model, self.settings, model_id=self.model_id, kind=kind,
                                           upload_kind=upload_kind)
        except ApiError as err:
            if frames is not None and err.param == "seconds":  # the client asked in frames: answer in frames
                most = int(round(model.max_seconds * model.fps))
                raise SessionError(f"frames must be at most {most} on this server ({model.frames_per_chunk}-frame "
                                   f"chunks at {model.fps} fps), got {short_number(frames)}", param="frames",
                                   code=err.code, fatal=True) from None
            raise
        if upload_kind == "image":
            prepared.job.input_name = f"input{checked.suffix}"
        elif upload_kind == "video":
            from .videos_api import prepare_extension

            source = staged.folder / f"input{checked.suffix}"
            await run_in_threadpool(prepare_extension, source, staged.folder, prepared.job, model)
            if source.name != "input.mp4":
                source.unlink(missing_ok=True)
            prepared.job.input_name = "input.mp4"
        return prepared, model

    async def store_upload(self, data: bytes, staged, param: str):
        """The image or video of session.start saved into the staged job; a file that cannot be used is an
        error naming its field."""
        try:
            return await run_in_threadpool(video_files.store_bytes, data, staged.folder, self.settings)
        except UploadRejected as err:
            raise SessionError(str(err), param=param, code="invalid_file", status=err.status, fatal=True) from None

    async def stream(self) -> None:
        """Forward what the worker produces until the job has finished, then say so."""
        job = self.job
        while True:
            finished = job.state.finished  # read before taking: what a finished job made is already waiting
            for message in self.live.take():
                await self.send(message)
            if finished or self.websocket.application_state != WebSocketState.CONNECTED:
                break
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), WAKE_EVERY_S)
            except asyncio.TimeoutError:
                pass
        state = self.store.snapshot(job)
        status = DONE_STATUS.get(job.state, "failed")
        for change in self.live.prompts.close():
            await self.send({"type": "session.interaction.dropped", "event_id": change.event_id,
                             "reason": "no chunk was left to start with it"})
        await self.send({"type": "session.done", "video_id": f"video_{job.id}", "status": status,
                         "chunks": self.live.chunks_sent, "num_chunks": state["num_chunks"],
                         "error": state["error"] if status == "failed" else None,
                         "content_url": f"/v1/videos/video_{job.id}/content" if state["has_video"] else None})
        await self.close(1000)

    async def read_client(self) -> None:
        """Interactions and stops, while the video is made."""
        try:
            while True:
                message = await self.receive()
                try:
                    await self.handle(message)
                except SessionError as err:
                    await self.send_error(err)
        except WebSocketDisconnect:
            self.closed_by_client = True
            self.cancel_job()  # nobody is watching any more
        except SessionError as err:  # not a JSON object: the session ends
            self.cancel_job()
            await self.send_error(err)

    async def handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "session.interaction":
            prompt = message.get("prompt")
            transition = message.get("transition_chunks", 0)
            if not isinstance(prompt, str) or not prompt.strip():
                raise SessionError("session.interaction needs a non-empty prompt", param="prompt")
            if len(prompt) > self.settings.max_prompt_chars:
                raise SessionError(f"prompt is longer than {self.settings.max_prompt_chars} characters",
                                   param="prompt")
            if isinstance(transition, bool) or not isinstance(transition, int) or not 0 <= transition <= 64:
                raise SessionError("transition_chunks must be a whole number from 0 to 64",
                                   param="transition_chunks")
            if self.job.state.finished:
                raise SessionError("the video is already finished", code="session_finished")
            if self.job.cancel_requested.is_set():  # session.stop came first: no chunk will take the prompt
                raise SessionError("the video is stopping (session.stop), so no chunk is left to take a new prompt",
                                   code="session_finished")
            try:
                change = self.live.prompts.change(prompt, transition_chunks=transition)
            except ValueError as err:
                raise SessionError(str(err), code="session_finished") from None
            await self.send({"type": "session.interaction.accepted", "event_id": change.event_id,
                             "prompt": change.prompt, "transition_chunks": change.transition_chunks,
                             "chunks_sent": self.live.chunks_sent})
        elif kind == "session.stop":
            self.cancel_job(stopped=True)
        elif kind == "session.start":
            raise SessionError("this session has started already; open another connection for another video",
                               param="type")
        else:
            raise SessionError(f"unknown message type {str(kind)[:40]!r}: session.interaction or session.stop",
                               param="type")

    def cancel_job(self, stopped: bool = False) -> None:
        """stopped: the viewer ended the video (session.stop), rather than going away or breaking the protocol."""
        if self.job is not None and not self.job.state.finished:
            # stops at the next step; the chunks made so far stay the video
            self.store.cancel(self.job, stopped=stopped)

    def end(self) -> None:
        """The connection is over: a job still running has lost its viewer and is cancelled."""
        if self.job is not None:
            self.cancel_job()
            self.live_jobs.remove(self.job.id)

    # ------------------------------------------------------------------ messages
    async def receive(self) -> dict:
        event = await self.websocket.receive()
        if event["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(event.get("code", 1000))
        text = event.get("text")
        if text is None:
            raise SessionError("messages must be JSON text, not binary", fatal=True)
        if len(text) > max_message_bytes(self.settings):
            raise SessionError("the message is too large", fatal=True)
        try:
            message = json.loads(text)
        except ValueError:
            raise SessionError("messages must be JSON objects", fatal=True) from None
        if not isinstance(message, dict):
            raise SessionError("messages must be JSON objects", fatal=True)
        return message

    async def send(self, message: dict | bytes) -> None:
        async with self.sending:
            if self.websocket.application_state != WebSocketState.CONNECTED:
                return
            if isinstance(message, bytes):
                await self.websocket.send_bytes(message)
            else:
                await self.websocket.send_text(json.dumps(message))

    async def send_error(self, err: SessionError) -> None:
        await self.send({"type": "error", "error": {"message": scrub_paths(err.message),
                                                    "type": error_type(err.status, openai=True),
                                                    "param": err.param, "code": err.code}})
        if err.fatal:
            await self.close(1008 if err.status < 500 else 1011)

    async def close(self, code: int) -> None:
        async with self.sending:
            if self.websocket.application_state == WebSocketState.CONNECTED:
                await self.websocket.close(code=code)


__all__ = ["PATH", "SUBPROTOCOL", "RealtimeSession", "max_message_bytes", "realtime_router"]
