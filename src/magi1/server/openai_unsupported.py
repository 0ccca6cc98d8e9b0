"""The `openai` package's Videos calls this server does not offer, each answered in one sentence.

client.videos has remix, edit and characters (Sora's features) next to the calls MAGI-1 can serve. Without
these routes a call would meet the generic "no such page or API route" (remix, get_character) or a bare 405
that the client raises as a plain APIStatusError (edit, create_character, which POST to paths shaped like
/v1/videos/{id}). Here each is a 404, `openai.NotFoundError`, saying what the server offers instead.
"""

from __future__ import annotations

from fastapi import APIRouter

from .openai_errors import ApiError

CONTINUE_INSTEAD = "MAGI-1 continues a video instead: POST /v1/videos/extensions (client.videos.extend)"


def unsupported_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def refuse(what: str, advice: str = CONTINUE_INSTEAD) -> None:
        raise ApiError(404, f"this server does not offer {what}; {advice}", code="unsupported_endpoint")

    @router.post("/v1/videos/{video_id}/remix")
    def remix(video_id: str):
        refuse("remixing a video (client.videos.remix)")

    @router.post("/v1/videos/edits")
    def edit():
        refuse("editing a video (client.videos.edit)")

    @router.post("/v1/videos/characters")
    def create_character():
        refuse("characters (client.videos.create_character)", "a video is made from a prompt and, for i2v, an "
               "input_reference image")

    @router.get("/v1/videos/characters/{character_id}")
    def get_character(character_id: str):
        refuse("characters (client.videos.get_character)", "a video is made from a prompt and, for i2v, an "
               "input_reference image")

    return router
