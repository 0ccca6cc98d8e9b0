"""Image and video IO on small synthetic files (64x48, a few dozen frames)."""

from __future__ import annotations

from fractions import Fraction

import av
import av.filter
import numpy as np
import pytest
from PIL import Image

from magi1.io import (
    VideoWriter,
    frames_to_mp4_bytes,
    load_image,
    load_video,
    partial_path_for,
    probe_video,
    write_video,
)

H, W = 48, 64
LEVEL_STEP = 6  # frame i is filled with level i * LEVEL_STEP, so decoded frames tell their index


def smooth_clip(num_frames: int) -> np.ndarray:
    """Gradients that drift over time: easy for H.264, so the round trip error stays small."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = [
        np.stack([x / W * 200 + t * 2, y / H * 200, np.full_like(x, 100 + t)], axis=-1) for t in range(num_frames)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def indexed_clip(num_frames: int) -> np.ndarray:
    frames = np.zeros((num_frames, H, W, 3), np.uint8)
    frames[..., 0] = (np.arange(num_frames) * LEVEL_STEP)[:, None, None]
    return frames


def frame_indices(frames) -> list[int]:
    return [int(round(float(frame[..., 0].mean()) / LEVEL_STEP)) for frame in frames]


@pytest.fixture(scope="module")
def clip_30fps(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "indexed_30fps.mp4"
    write_video(path, indexed_clip(37), fps=30, crf=0)
    return path


def test_round_trip_frames_size_fps_and_pixels(tmp_path):
    frames = smooth_clip(12)
    path = write_video(tmp_path / "clip.mp4", frames, fps=24)
    assert probe_video(path) == (12, 24.0, H, W)
    decoded = load_video(path, H, W, fps=24, max_frames=None)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).mean() < 3.0


def test_streaming_writer_appends_chunks_into_a_partial_file(tmp_path):
    target = tmp_path / "stream.mp4"
    frames = smooth_clip(12)
    with VideoWriter(target, fps=24, crf=18) as writer:
        for start in range(0, 12, 4):
            writer.append(frames[start : start + 4])
            assert not target.exists()  # bytes go to the hidden partial file meanwhile
        writer.append(frames[0])  # a single (H, W, 3) frame is accepted too
        assert writer.frames_written == 13
    assert target.exists() and not partial_path_for(target).exists()
    assert probe_video(target).num_frames == 13


def test_failure_mid_write_leaves_no_file(tmp_path):
    target = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="sampler died"):
        with VideoWriter(target, fps=24) as writer:
            writer.append(smooth_clip(4))
            raise RuntimeError("sampler died")
    assert not target.exists() and not partial_path_for(target).exists()


def test_keep_partial_keeps_a_playable_partial_file(tmp_path):
    target = tmp_path / "kept.mp4"
    writer = VideoWriter(target, fps=24, keep_partial=True, fragmented=True)
    writer.append(smooth_clip(6))
    writer.abort()
    assert not target.exists()
    assert probe_video(partial_path_for(target)).num_frames == 6


def _libavfilter_fps(path, fps) -> list[int]:
    """What ffmpeg's own fps filter picks, through PyAV's libavfilter bindings."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        source = graph.add_buffer(template=stream)
        fps_filter = graph.add("fps", f"fps={fps}")
        sink = graph.add("buffersink")
        source.link_to(fps_filter)
        fps_filter.link_to(sink)
        graph.configure()
        picked = []
        for frame in [*container.decode(stream), None]:
            graph.push(frame)
            while True:
                try:
                    picked.append(graph.pull().to_ndarray(format="rgb24"))
                except (av.BlockingIOError, av.EOFError):
                    break
    return frame_indices(picked)


@pytest.mark.parametrize("fps, expected_count", [(24, 30), (12, 15), (Fraction(24000, 1001), 30), (60, 74)])
def test_fps_resampling_matches_ffmpeg_fps_filter(clip_30fps, fps, expected_count):
    # 37 frames at 30 fps last 37/30 s; at 24 fps that is round(29.6) = 30 frames.
    frames = load_video(clip_30fps, H, W, fps=fps, max_frames=None)
    assert len(frames) == expected_count
    assert frame_indices(frames) == _libavfilter_fps(clip_30fps, fps)


def test_load_video_takes_the_first_frames_and_scales(clip_30fps):
    first = load_video(clip_30fps, 32, 32, fps=24)  # official prefix: the first 32 frames
    assert first.shape == (30, 32, 32, 3)  # the clip only has 30 at 24 fps
    assert frame_indices(load_video(clip_30fps, 24, 40, fps=24, max_frames=4)) == [0, 1, 3, 4]
    assert load_video(clip_30fps, 24, 24, fps=30, max_frames=5, keep_aspect=True).shape == (5, 24, 24, 3)


def three_bands(width=80, height=40) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    third = width // 4
    image[:, :third, 0] = 255  # red on the left quarter
    image[:, third:-third, 1] = 255  # green in the middle half
    image[:, -third:, 2] = 255  # blue on the right quarter
    return image


def test_image_stretch_versus_centre_crop(tmp_path):
    path = tmp_path / "bands.png"
    Image.fromarray(three_bands()).save(path)
    stretched = load_image(path, 40, 40)
    assert stretched.shape == (40, 40, 3) and stretched.dtype == np.uint8
    assert stretched[20, 2, 0] > 200 and stretched[20, 37, 2] > 200  # both side bands survive, squeezed
    cropped = load_image(path, 40, 40, keep_aspect=True)
    assert cropped.shape == (40, 40, 3)
    assert (cropped[..., 1] > 200).all()  # only the green middle half is left


def test_image_sources_pil_numpy_float_gray_rgba():
    bands = three_bands()
    reference = load_image(bands, 20, 30)
    assert np.array_equal(load_image(Image.fromarray(bands), 20, 30), reference)
    assert np.array_equal(load_image(bands.astype(np.float32) / 255.0, 20, 30), reference)
    rgba = np.concatenate([bands, np.zeros_like(bands[..., :1])], axis=-1)  # alpha is dropped, not composited
    assert np.array_equal(load_image(rgba, 20, 30), reference)
    assert load_image(bands[..., 1], 20, 30).shape == (20, 30, 3)


@pytest.mark.parametrize("mode, grey, expected", [("I;16", 128 * 257, 128), ("I", 200 * 257, 200), ("F", 0.5, 128)])
def test_deep_images_are_scaled_to_8_bits_not_clipped(tmp_path, mode, grey, expected):
    # A 16-bit PNG was clipped at 255 by Pillow's convert("RGB"): every grey above 255/65535 came out white.
    values = np.full((8, 8), grey, np.uint16 if mode == "I;16" else np.int32 if mode == "I" else np.float32)
    path = tmp_path / ("deep.png" if mode == "I;16" else "deep.tiff")  # Pillow writes 32-bit grey as TIFF only
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == mode
    assert np.array_equal(load_image(path, 8, 8), np.full((8, 8, 3), expected, np.uint8))


def test_load_video_from_end_holds_only_the_last_frames(tmp_path):
    import tracemalloc

    path = tmp_path / "long.mp4"
    write_video(path, indexed_clip(40), fps=24, crf=0)
    whole = load_video(path, 128, 128, fps=24, max_frames=None)
    tracemalloc.start()
    last = load_video(path, 128, 128, fps=24, max_frames=4, from_end=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert frame_indices(last) == frame_indices(whole[-4:]) == [36, 37, 38, 39]
    # --prefix_from end decoded the whole clip at the model's size to keep 32 frames (an hour-long clip filled
    # the memory); now it holds the newest ones only
    assert peak < whole.nbytes / 4, f"peak {peak} bytes for 4 of the {len(whole)} frames ({whole.nbytes} bytes)"


def _portrait_phone_clip(path, frames: int = 6):
    """Landscape 64x32 frames (red on the left) stored with a display matrix that turns them a quarter
    counter-clockwise: how a phone keeps a portrait video."""
    stored = np.zeros((frames, 32, 64, 3), np.uint8)
    stored[:, :, :16, 0] = 255
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)
        for frame in stored:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_a_portrait_phone_video_is_read_upright(tmp_path):
    # The ffmpeg CLI (the official reader) turns a video by its display matrix; frames were read as stored,
    # so a portrait phone clip was continued lying on its side
    path = _portrait_phone_clip(tmp_path / "phone.mp4")
    assert probe_video(path) == (6, 24.0, 64, 32)
    frames = load_video(path, 64, 32, fps=24, max_frames=None)
    red_rows = frames[0, :, :, 0].mean(axis=1)
    assert frames.shape == (6, 64, 32, 3) and red_rows[-12:].min() > 200 and red_rows[:44].max() < 30
    assert load_video(path, 64, 16, fps=24, max_frames=1, keep_aspect=True)[0, -4:, :, 0].min() > 200


def test_mp4_bytes_decode(tmp_path):
    data = frames_to_mp4_bytes(smooth_clip(5), fps=12)
    path = tmp_path / "bytes.mp4"
    path.write_bytes(data)
    assert probe_video(path) == (5, 12.0, H, W)


def test_bad_inputs_have_clear_errors(tmp_path):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video(missing, H, W, fps=24)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png", H, W)
    text = tmp_path / "notes.txt"
    text.write_text("not a picture, not a film")
    with pytest.raises(ValueError, match="notes.txt.*image"):
        load_image(text, H, W)
    with pytest.raises(ValueError, match="notes.txt.*video"):
        load_video(text, H, W, fps=24)
    with pytest.raises(ValueError, match="notes.txt.*video"):
        probe_video(text)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 47, 64, 3), np.uint8), fps=24)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((2, H, W, 3), np.float32), fps=24)
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(tmp_path / "empty.mp4", fps=24).close()
    with pytest.raises(ValueError, match="size changed"):
        with VideoWriter(tmp_path / "resized.mp4", fps=24) as writer:
            writer.append(smooth_clip(2))
            writer.append(np.zeros((2, 32, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == [text]  # no final or partial files were left behind
