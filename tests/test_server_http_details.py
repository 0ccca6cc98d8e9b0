"""HTTP details a client meets on a real `magi1 serve` (demo model): the OpenAPI file a code generator reads,
Range requests of players and download managers, uploads that are no usable image, and the video object of a
job made through /v1/jobs. Found by driving the server as a client would; each was wrong before."""

from __future__ import annotations

import collections
import struct
import zlib

import httpx
import openai
import pytest

from served_magi1 import KEY_A, STEPS, decode_mp4, openai_client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
AUTH = {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture(scope="module")
def client(magi1_server):
    return openai_client(magi1_server)


@pytest.fixture(scope="module")
def video(client):
    made = client.videos.create_and_poll(prompt="a green ball falls", seconds="1",
                                         extra_body={"num_inference_steps": STEPS, "seed": 3}, poll_interval_ms=100)
    assert made.status == "completed"
    return made


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that states a size but holds no pixels: what a decompression bomb looks like up front."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_openapi_lists_each_operation_once_with_a_unique_id(magi1_server):
    schema = httpx.get(magi1_server.url + "/openapi.json", headers=AUTH).json()
    operations = [(path, method, op["operationId"]) for path, ops in schema["paths"].items()
                  for method, op in ops.items() if isinstance(op, dict) and "operationId" in op]
    repeated = [name for name, n in collections.Counter(op for _, _, op in operations).items() if n > 1]
    assert not repeated, repeated
    assert not [(path, method) for path, method, _ in operations if method == "head"]
    assert ("/v1/videos/{video_id}/content", "get") in {(p, m) for p, m, _ in operations}


def test_range_requests_are_read_as_http_says(magi1_server, client, video):
    url = f"{magi1_server.url}/v1/videos/{video.id}/content"
    whole = httpx.get(url, headers=AUTH)
    assert whole.status_code == 200 and len(decode_mp4(whole.content)) == 24
    size = len(whole.content)
    part = httpx.get(url, headers={**AUTH, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == whole.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{size}"
    # A Range the server cannot read is ignored: the whole file, as a player expects.
    for unreadable in ("bytes=abc", "lines=1-2", "bytes=20-10", "bytes="):
        got = httpx.get(url, headers={**AUTH, "Range": unreadable})
        assert got.status_code == 200 and got.content == whole.content, unreadable
    # One that starts past the end is a 416 in the error envelope, stating the length.
    beyond = httpx.get(url, headers={**AUTH, "Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    assert "starts beyond" in beyond.json()["error"]["message"]
    assert httpx.head(url, headers=AUTH).headers["content-length"] == str(size)


def test_an_upload_that_is_no_image_is_a_bad_request_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.create(prompt="a ball", input_reference=("ball.png", b"not an image at all", "image/png"))
    assert refused.value.status_code == 400 and refused.value.body["param"] == "input_reference"
    assert "not a decodable image or video" in refused.value.body["message"]


def test_an_image_past_pillows_own_pixel_cap_gets_the_pixel_limit_error(client):
    for side in (13000, 16000, 30000):  # below and above Pillow's 2 x MAX_IMAGE_PIXELS bomb cap
        with pytest.raises(openai.APIStatusError) as refused:
            client.videos.create(prompt="a ball", input_reference=("big.png", png_header_only(side, side),
                                                                   "image/png"))
        assert refused.value.status_code == 413, (side, refused.value.body)
        assert "pixels per frame are accepted" in refused.value.body["message"]


def test_a_job_made_through_the_job_api_has_the_models_size_in_the_videos_api(magi1_server):
    job = httpx.post(magi1_server.url + "/v1/jobs", headers=AUTH,
                     json={"prompt": "a red ball", "num_frames": 24, "steps": STEPS}).json()
    seen = httpx.get(f"{magi1_server.url}/v1/videos/video_{job['id']}", headers=AUTH).json()
    assert seen["size"] == "64x64", seen


def test_an_extension_takes_a_bare_video_id(magi1_server):
    answer = httpx.post(magi1_server.url + "/v1/videos/extensions", headers=AUTH,
                        json={"prompt": "on", "video": "video_" + "0" * 32})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "video_not_found"
    for wrong in ({"id": 5}, ["video_" + "0" * 32], 7):  # sent but not an id: told so, not "video is required"
        answer = httpx.post(magi1_server.url + "/v1/videos/extensions", headers=AUTH,
                            json={"prompt": "on", "seconds": "1", "video": wrong})
        error = answer.json()["error"]
        assert answer.status_code == 400 and (error["param"], error["code"]) == ("video", "invalid_value"), error
        assert error["message"].startswith("video must be"), error


def test_a_chunk_prompt_past_the_video_names_chunk_prompts(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.create(prompt="a ball", seconds="1", extra_body={"chunk_prompts": {"99": "x"}})
    assert refused.value.body["param"] == "chunk_prompts", refused.value.body
