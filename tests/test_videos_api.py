"""The OpenAI-style Videos API of a real `magi1 serve` (demo model), driven by the unmodified `openai` package."""

from __future__ import annotations


import httpx
import numpy as np
import openai
import pytest

from served_magi1 import KEY_A, STEPS, decode_mp4, mean_abs, openai_client, png_of

# client.videos is marked deprecated (OpenAI's own Sora service closes); the client code is what we test.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FAST = {"num_inference_steps": STEPS, "seed": 11}


@pytest.fixture(scope="module")
def client(magi1_server):
    return openai_client(magi1_server)


@pytest.fixture(scope="module")
def limits(client):
    (model,) = client.models.list().data
    assert model.id == "magi1-demo_distill" and model.model_extra["status"] == "ready"
    return model.model_extra["magi1"]


@pytest.fixture(scope="module")
def first_video(client, limits):
    """A one-chunk t2v video made with create_and_poll, and its decoded frames."""
    video = client.videos.create_and_poll(prompt="a red ball rolls to the right", seconds="1", size="64x64",
                                          extra_body=FAST, poll_interval_ms=100)
    return video, decode_mp4(client.videos.download_content(video.id).read())


def test_create_and_poll_downloads_a_video_of_the_seconds_asked_for(first_video, limits):
    video, frames = first_video
    assert video.status == "completed" and video.progress == 100 and video.error is None
    assert video.object == "video" and video.id.startswith("video_") and video.completed_at >= video.created_at
    assert video.seconds == "1" and video.size == "64x64" and video.model == "magi1-demo_distill"
    # One second at the model's fps is one whole chunk here; the mp4 holds exactly those frames.
    assert limits["chunk_seconds"] == 1.0
    assert frames.shape == (limits["frames_per_chunk"], 64, 64, 3)
    assert frames.std() > 1.0  # a picture, not a blank


@pytest.fixture(scope="module")
def i2v_video(client):
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = (220, 40, 40)
    image[:, 32:] = (40, 60, 220)
    video = client.videos.create_and_poll(prompt="a red ball rolls", input_reference=("ref.png", png_of(image),
                                          "image/png"), seconds="1", extra_body=FAST, poll_interval_ms=100)
    return image, video, decode_mp4(client.videos.download_content(video.id).read())


def test_input_reference_makes_an_i2v_video_that_starts_from_the_image(client, limits, first_video, i2v_video):
    image, video, frames = i2v_video
    assert video.status == "completed" and video.model_extra["magi1"]["mode"] == "i2v"
    assert len(frames) == limits["frames_per_chunk"]  # the image frame counts in the second asked for
    mirrored = image[:, ::-1]
    assert mean_abs(frames[0], image) < mean_abs(frames[0], mirrored) / 2
    assert mean_abs(frames[0], image) < mean_abs(first_video[1][0], image)
    client.videos.delete(video.id)
    with pytest.raises(openai.NotFoundError) as err:
        client.videos.retrieve(video.id)
    assert err.value.code == "video_not_found"


def test_extend_continues_the_video_and_serves_it_stitched(client, limits, first_video, i2v_video):
    video, frames = first_video
    fpc = limits["frames_per_chunk"]
    mp4 = client.videos.download_content(video.id).read()
    # openai 3.60's extend() insists on a file in `video` (its {"id": ...} form fails in the client): upload it.
    extension = client.videos.extend(video=("first.mp4", mp4, "video/mp4"), prompt="the red ball keeps rolling",
                                     seconds="1", extra_body=FAST)
    extension = client.videos.poll(extension.id, poll_interval_ms=100)
    assert extension.status == "completed" and extension.seconds == "2"  # OpenAI: the stitched duration
    assert extension.model_extra["magi1"]["mode"] == "v2v"
    stitched = decode_mp4(client.videos.download_content(extension.id).read())
    assert stitched.shape == (2 * fpc, 64, 64, 3)
    assert np.array_equal(stitched[:fpc], frames)  # the source kept as it was (its H.264 packets copied)
    # The continuation picks up where its source ends: much nearer to it than to another video's end.
    other_scene = i2v_video[2]
    assert mean_abs(stitched[fpc], frames[-1]) < mean_abs(stitched[fpc], other_scene[-1]) / 2
    thumbnail = client.videos.download_content(extension.id, variant="thumbnail")
    assert thumbnail.response.headers["content-type"] == "image/png"

    # By id: the JSON form of the API (what other clients send), through the client's generic post.
    by_id = client.post("/videos/extensions", cast_to=openai.types.Video,
                        body={"video": {"id": video.id}, "prompt": "it rolls on", "seconds": "1", **FAST})
    assert by_id.model_extra["magi1"]["extends"] == video.id and by_id.seconds == "2"
    listed = [v.id for v in client.videos.list()]
    assert listed.index(by_id.id) < listed.index(extension.id) < listed.index(video.id)  # newest first
    first_page = client.videos.list(limit=1)
    assert [v.id for v in first_page.data] == [by_id.id] and first_page.has_more
    assert [v.id for v in client.videos.list(limit=1)] == listed  # iterating follows the pages
    deleted = client.videos.delete(by_id.id)  # queued or running: cancelled, then removed
    assert deleted.deleted and deleted.id == by_id.id
    assert by_id.id not in [v.id for v in client.videos.list()]


def test_refusals_come_in_the_openai_error_envelope(client, limits, magi1_server):
    too_big = f"{limits['default_width'] * 2}x{limits['default_height'] * 2}"
    cases = [
        ({"size": too_big}, "size", "unsupported_value"),
        ({"size": "wide"}, "size", "invalid_value"),
        ({"seconds": str(limits["max_seconds"] + 1)}, "seconds", "unsupported_value"),
        ({"model": "sora-2"}, "model", "model_not_found"),
        ({"extra_body": {"guidance": 3}}, "guidance", "unknown_parameter"),
        ({"extra_body": {"fps": limits["fps"] + 1}}, "fps", "unsupported_value"),
        ({"extra_body": {"num_inference_steps": limits["max_steps"] + 1}}, "num_inference_steps", "invalid_value"),
        ({"extra_body": {"seed": "soon"}}, "seed", "invalid_value"),
        ({"size": "0x0"}, "size", "unsupported_value"),
        ({"extra_body": {"num_inference_steps": limits["window_size"] + 2}}, "num_inference_steps", "invalid_value"),
    ]
    for arguments, param, code in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.videos.create(prompt="a ball", **arguments)
        assert (err.value.param, err.value.code) == (param, code), arguments
        assert err.value.message.endswith(tuple(".)0123456789abcdefghijklmnopqrstuvwxyz'\"")), err.value.message
    assert str(limits["max_pixels"]) in client_error(client, size=too_big)  # the model's limit is stated
    assert "positive multiples of 16" in client_error(client, size="0x0")
    # Steps that do not fill the model's window evenly: one sentence in the client's terms, not the config's
    steps_message = client_error(client, extra_body={"num_inference_steps": limits["window_size"] + 2})
    assert f"must be a multiple of {limits['window_size']}" in steps_message
    assert "num_steps" not in steps_message and "noise2clean" not in steps_message and steps_message.count(";") == 0
    # A missing video is named by the field that named it: the list's `after`, the extension's `video`
    with pytest.raises(openai.NotFoundError) as unknown_after:
        client.videos.list(after="video_0123456789abcdef0123456789abcdef")
    assert (unknown_after.value.param, unknown_after.value.code) == ("after", "video_not_found")
    with pytest.raises(openai.NotFoundError) as unknown_source:
        client.post("/videos/extensions", cast_to=openai.types.Video,
                    body={"video": {"id": "video_0123456789abcdef0123456789abcdef"}, "prompt": "on", "seconds": "1"})
    assert (unknown_source.value.param, unknown_source.value.code) == ("video", "video_not_found")
    response = httpx.post(magi1_server.url + "/v1/videos", json={"prompt": "x", "frames": 3},
                          headers={"Authorization": f"Bearer {KEY_A}"})
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["type"] == "invalid_request_error"


def client_error(client, **arguments) -> str:
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.create(prompt="a ball", **arguments)
    return err.value.message


def test_sync_returns_the_mp4_with_timing_headers(client, limits, magi1_server):
    response = httpx.post(magi1_server.url + "/v1/videos/sync", timeout=300,
                          json={"prompt": "a blue ball", "seconds": "1", **FAST},
                          headers={"Authorization": f"Bearer {KEY_A}"})
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert "generate;dur=" in response.headers["server-timing"]
    assert len(decode_mp4(response.content)) == limits["frames_per_chunk"]
    video = client.videos.retrieve(response.headers["x-video-id"])
    assert video.status == "completed"


def test_the_clients_sora_only_calls_are_refused_in_one_sentence(client, first_video):
    """remix, edit and characters are in client.videos but not in MAGI-1: each is a NotFoundError that says what
    to use instead (they were a generic 404 and, for the POSTs, a 405 the client raises as a bare APIStatusError)."""
    video, _ = first_video
    calls = {
        "remix": lambda: client.videos.remix(video.id, prompt="make it blue"),
        "edit": lambda: client.videos.edit(prompt="make it blue", video=("v.mp4", b"\x00" * 16, "video/mp4")),
        "create_character": lambda: client.videos.create_character(name="ball", video=("v.mp4", b"\x00" * 16,
                                                                                         "video/mp4")),
        "get_character": lambda: client.videos.get_character("char_123"),
    }
    for name, call in calls.items():
        with pytest.raises(openai.NotFoundError) as refused:
            call()
        assert refused.value.code == "unsupported_endpoint", (name, refused.value.message)
        assert f"client.videos.{name}" in refused.value.message and refused.value.message.count(";") == 1
    assert client.videos.retrieve(video.id).status == "completed"  # the video itself is untouched


def test_a_video_made_with_the_defaults_reports_the_seed_and_steps_it_was_made_with(client, limits, tmp_path):
    """A client that sent no seed or steps can read from the video object how to make the same video again:
    the values its mp4's tags record (they were null)."""
    from magi1.run_tags import read_run_settings

    video = client.videos.create_and_poll(prompt="a green ball falls", seconds="1", poll_interval_ms=100)
    assert video.status == "completed"
    client.videos.download_content(video.id).write_to_file(tmp_path / "made.mp4")
    made = read_run_settings(tmp_path / "made.mp4")
    extras = video.model_extra["magi1"]
    assert (extras["seed"], extras["num_inference_steps"]) == (made["seed"], made["steps"])
    assert extras["num_inference_steps"] == limits["default_steps"]
    again = client.videos.create_and_poll(prompt="a green ball falls", seconds="1", poll_interval_ms=100,
                                          extra_body={"seed": extras["seed"],
                                                      "num_inference_steps": extras["num_inference_steps"]})
    np.testing.assert_array_equal(decode_mp4(client.videos.download_content(again.id).read()),
                                  decode_mp4((tmp_path / "made.mp4").read_bytes()))


def test_deleting_every_video_while_paging_through_the_list_deletes_them_all(tmp_path):
    """The usual way to clear a server: each page's last video is deleted before the client asks for the page
    after it (that cursor was a 404, and the loop stopped after the first page). On the fake model, for speed."""
    from serve_process import ServeProcess

    keys = {"MAGI1_API_KEYS": "sk-pager-alice-0001,sk-pager-bobby-0002"}
    with ServeProcess(["--pipeline", "serve_fake:load_pipeline", "--config_file", "demo", "--results_dir",
                       str(tmp_path / "results")], env=keys) as server:
        alice, bob = (openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
                      for key in keys["MAGI1_API_KEYS"].split(","))
        made = [alice.videos.create_and_poll(prompt=f"a ball {i}", seconds="1", size="32x32", poll_interval_ms=20)
                for i in range(5)]
        assert all(v.status == "completed" for v in made)
        deleted = []
        for video in alice.videos.list(limit=2):  # auto-paging: after=<the previous page's last id>
            alice.videos.delete(video.id)
            deleted.append(video.id)
        assert sorted(deleted) == sorted(v.id for v in made)
        assert alice.videos.list().data == []
        # a deleted video's id still pages for its own client only: to another it is as unknown as ever
        with pytest.raises(openai.NotFoundError) as unknown:
            bob.videos.list(after=deleted[1])
        assert unknown.value.param == "after"
        assert alice.videos.list(after=deleted[1]).data == []
