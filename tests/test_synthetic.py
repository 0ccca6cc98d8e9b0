"""Synthetic physics clips: determinism, physics sanity, captions, takes, and the held-out Physics-IQ set."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from magi1.eval import read_video, score_generated_folder, write_lossless_video
from magi1.train.synthetic import (
    COLOURS,
    EVAL_FIRST_SEED,
    SceneConfig,
    SyntheticPhysicsDataset,
    make_clip,
    write_physics_iq_eval_set,
)


def test_same_seed_same_bytes_different_seed_different_clip():
    a, b = make_clip(5), make_clip(5)
    assert a.frames.tobytes() == b.frames.tobytes() and a.caption == b.caption
    assert a.frames.shape == (96, 64, 64, 3) and a.frames.dtype == np.uint8
    assert make_clip(6).frames.tobytes() != a.frames.tobytes()


def test_objects_stay_inside_the_frame():
    config = SceneConfig(height=48, width=80, num_frames=120)
    for seed in range(12):
        clip = make_clip(seed, config)
        for i, obj in enumerate(clip.objects):
            x, y = clip.positions[:, i, 0], clip.positions[:, i, 1]
            assert (x - obj.size >= -1e-9).all() and (x + obj.size <= config.width + 1e-9).all()
            assert (y - obj.size >= -1e-9).all() and (y + obj.size <= config.height + 1e-9).all()


def test_gravity_speeds_the_fall_until_a_bounce_on_the_floor():
    config = SceneConfig(min_objects=1, max_objects=1)
    gain = config.gravity * config.height / config.fps  # px/s gained per frame in free fall
    for seed in range(4):
        clip = make_clip(seed, config)
        vy, y, size = clip.velocities[:, 0, 1], clip.positions[:, 0, 1], clip.objects[0].size
        steps = np.diff(vy)
        first_bounce = int(np.argmax(steps < 0))
        assert first_bounce > 0
        np.testing.assert_allclose(steps[:first_bounce], gain, rtol=1e-9)
        # the first slow-down is a bounce on the floor, and the object is still next to it
        assert any(e.kind == "floor" and e.frame == first_bounce + 1 for e in clip.events)
        assert y[first_bounce + 1] + size > config.height - 4


def test_caption_names_every_object():
    for seed in range(10):
        clip = make_clip(seed)
        for obj in clip.objects:
            assert obj.colour in COLOURS and f"{obj.colour} {obj.shape}" in clip.caption
        assert len({o.colour for o in clip.objects}) == len(clip.objects)


def test_takes_agree_until_the_split_then_differ():
    config = SceneConfig(conditioning_frames=30)
    one, two = make_clip(3, config, take=1), make_clip(3, config, take=2)
    assert one.split_frame == two.split_frame == 30
    np.testing.assert_array_equal(one.frames[:30], two.frames[:30])
    np.testing.assert_array_equal(one.positions[:30], two.positions[:30])
    assert not np.array_equal(one.frames[30:], two.frames[30:])
    # a tiny perturbation: the takes stay close for a while
    assert np.abs(one.positions[31] - two.positions[31]).max() < 0.5


def test_rendering_is_fast():
    make_clip(0)  # warm up
    durations = []
    for seed in range(5):
        start = time.perf_counter()
        make_clip(seed)
        durations.append(time.perf_counter() - start)
    assert min(durations) < 0.05  # 64x64x96; typically ~10-20 ms on one core


def test_dataset_maps_index_to_seed():
    data = SyntheticPhysicsDataset(4, SceneConfig(num_frames=16, conditioning_frames=4), first_seed=10)
    item = data[2]
    assert len(data) == 4 and item["frames"].shape == (16, 64, 64, 3) and isinstance(item["caption"], str)
    np.testing.assert_array_equal(item["frames"], data.clip(2).frames)
    assert data.clip(2).seed == 12 and data.seed_of(-1) == 13
    with pytest.raises(IndexError):
        data[4]
    with pytest.raises(ValueError):
        SyntheticPhysicsDataset(10, first_seed=EVAL_FIRST_SEED - 5)


def test_eval_set_layout_and_scores(tmp_path):
    root = tmp_path / "bench"
    manifest = write_physics_iq_eval_set(root, num_scenarios=1, fps=8, conditioning_seconds=1.0)
    assert len(manifest) == 6  # 3 perspectives × 2 takes
    take1 = [m for m in manifest if m["take"] == 1]
    take2 = {m["perspective"]: m for m in manifest if m["take"] == 2}
    assert {m["id"] for m in take1} == {"0001", "0002", "0003"}
    assert (root / "descriptions" / "descriptions.csv").is_file()
    frames = read_video(take1[0]["testing"])
    assert frames.shape == (40, 64, 64, 3)  # 5 s at 8 FPS; lossless: decodes to the rendered pixels
    clip = make_clip(EVAL_FIRST_SEED, SceneConfig(fps=8.0, num_frames=48, conditioning_frames=8),
                     perspective=take1[0]["perspective"])
    np.testing.assert_array_equal(frames, clip.frames[8:])

    def score_with(make_generated):
        folder = tmp_path / f"gen{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for m in take1:
            make_generated(m, folder / f"{m['id']}_model.mp4")
        return score_generated_folder(root, folder)

    perfect = score_with(lambda m, dst: shutil.copy(m["testing"], dst))
    second_take = score_with(lambda m, dst: shutil.copy(take2[m["perspective"]]["testing"], dst))
    frozen = score_with(lambda m, dst: write_lossless_video(
        dst, np.repeat(read_video(m["conditioning"])[-1:], 40, axis=0), 8))
    assert perfect.score.score == 100.0 and perfect.fps == 8
    assert second_take.score.score > 90.0
    assert frozen.score.score < second_take.score.score
    scenario = f"synthetic-{EVAL_FIRST_SEED}"
    assert set(perfect.views[scenario]) == {"perspective-left", "perspective-center", "perspective-right"}
    assert perfect.scenarios[scenario]["spatial_iou"] == 1.0
