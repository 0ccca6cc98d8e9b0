"""Physics-IQ metrics: the OpenCV-exact pixel rules, the masks, each metric and the aggregate score."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from magi1.eval import (
    ViewMetrics,
    benchmark_file_name,
    change_fps,
    evaluate_view,
    masks_at_metric_resolution,
    metric_size,
    motion_masks,
    mse_per_frame,
    parse_benchmark_file_name,
    physics_iq_score,
    physics_iq_score_from_csv,
    read_metrics_csv,
    spatial_iou,
    spatiotemporal_iou,
    weighted_spatial_iou,
    write_metrics_csv,
)
from magi1.eval.opencv_exact import (
    accumulate_weighted,
    convert_scale_abs,
    dilate_5x5,
    erode_5x5,
    gaussian_blur_5x5,
    grey_from_colour,
    resize_linear,
)


# ----------------------------------------------------------------------------------------- pixel rules
def test_grey_weights_and_channel_order():
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert grey_from_colour(red, "rgb")[0, 0] == (9798 * 255 + 16384) >> 15 == 76
    assert grey_from_colour(red, "bgr")[0, 0] == (3735 * 255 + 16384) >> 15 == 29  # first channel is blue
    assert grey_from_colour(np.full((1, 1, 3), 255, np.uint8))[0, 0] == 255


def test_blur_is_binomial_with_reflect101_borders():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    w = [1, 4, 6, 4, 1]

    def reflect(i, n):  # ...c b | a b c | b a...
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    expected = np.zeros_like(image)
    for y in range(7):
        for x in range(9):
            total = sum(w[i] * w[j] * int(image[reflect(y + i - 2, 7), reflect(x + j - 2, 9)])
                        for i in range(5) for j in range(5))
            expected[y, x] = (total + 128) // 256
    np.testing.assert_array_equal(gaussian_blur_5x5(image), expected)
    impulse = np.zeros((9, 9), np.uint8)
    impulse[4, 4] = 255
    assert gaussian_blur_5x5(impulse)[4, 4] == (36 * 255 + 128) // 256


@pytest.mark.parametrize("size", [32, 37])  # a multiple of the 16-wide blocks, and one with a scalar tail
def test_running_average_is_a_single_rounding_fma(size):
    rng = np.random.default_rng(size)
    acc = rng.uniform(0, 255, size)
    src = rng.integers(0, 256, size).astype(np.uint8)
    got = accumulate_weighted(acc, src, 0.3)
    head = size - size % 16
    for i in range(size):
        a, s = Fraction(float(acc[i])), Fraction(float(src[i]))
        if i < head:  # fma(acc, 0.7, round(src * 0.3))
            exact = a * Fraction(0.7) + Fraction(float(src[i]) * 0.3)
        else:  # fma(src, 0.3, round(acc * 0.7))
            exact = s * Fraction(0.3) + Fraction(float(acc[i]) * 0.7)
        assert got[i] == float(exact)


def test_reference_rounds_through_float32_half_even():
    values = np.array([105.49999999999999, 104.5, 105.5, -3.2, 300.0] + [0.0] * 11)
    assert list(convert_scale_abs(values)[:5]) == [106, 104, 106, 3, 255]


def test_morphology_ignores_pixels_outside_the_image():
    mask = np.zeros((16, 16), np.uint8)
    mask[:3, :3] = 255  # 3x3 in the corner: every in-image pixel of its windows is set, so it survives
    mask[6:10, 6:10] = 255  # 4x4 inside the image: removed by the opening
    mask[10:15, 10:15] = 255  # 5x5 inside: survives exactly
    opened = dilate_5x5(erode_5x5(mask))
    np.testing.assert_array_equal(opened[:3, :3], 255)
    assert opened[3:10, :10].max() == 0 and opened[:10, 3:10].max() == 0
    np.testing.assert_array_equal(opened[10:15, 10:15], 255)
    assert opened.sum() == 255 * (9 + 25)
    holey = np.full((12, 12), 255, np.uint8)
    holey[6, 6] = 0
    assert erode_5x5(dilate_5x5(holey)).min() == 255  # closing fills a one-pixel hole


def test_resize_by_four_averages_the_central_two_by_two():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    out = resize_linear(image, 24, 16)  # (width, height)
    p = image.astype(int)
    expected = (p[1::4, 1::4] + p[1::4, 2::4] + p[2::4, 1::4] + p[2::4, 2::4] + 2) // 4
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(resize_linear(image, 96, 64), image)  # same size: a copy
    np.testing.assert_array_equal(resize_linear(image[:63], 32, 21), image[1:63:3, 1::3])  # ×3: point sample


def test_resize_non_integer_ratio_stays_within_one_level_of_bilinear():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    out = resize_linear(image, 31, 22).astype(float)

    def taps(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(pos).astype(int)
        return low, np.minimum(low + 1, n_in - 1), pos - low

    y0, y1, fy = taps(50, 22)
    x0, x1, fx = taps(70, 31)
    img = image.astype(float)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    exact = top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]
    assert np.abs(out - exact).max() <= 1.0


def _documented_resize(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """cv2.resize INTER_LINEAR worked out value by value from physics-iq.md §4: (SIMD formula, scalar formula)."""

    def taps(n_in: int, n_out: int, clamp: bool):
        out = []
        for d in range(n_out):
            f = np.float32((d + 0.5) * (1.0 / (n_out / n_in)) - 0.5)
            s = int(np.floor(f))
            a = np.float32(f - np.float32(s))
            if clamp and s < 0:
                s, a = 0, np.float32(0)
            if clamp and s >= n_in - 1:
                s, a = n_in - 1, np.float32(0)
            out.append((s, int(np.rint(np.float32(np.float32(1) - a) * np.float32(2048))),
                        int(np.rint(a * np.float32(2048)))))
        return out

    src_h, src_w, channels = image.shape
    cols, rows = taps(src_w, width, True), taps(src_h, height, False)
    simd = np.zeros((height, width, channels), np.int64)
    scalar = np.zeros_like(simd)
    for y, (s, b0, b1) in enumerate(rows):
        r0, r1 = min(max(s, 0), src_h - 1), min(max(s + 1, 0), src_h - 1)
        for x, (c, c0, c1) in enumerate(cols):
            for k in range(channels):
                h0 = c0 * int(image[r0, c, k]) + c1 * int(image[r0, min(c + 1, src_w - 1), k])
                h1 = c0 * int(image[r1, c, k]) + c1 * int(image[r1, min(c + 1, src_w - 1), k])
                simd[y, x, k] = (((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16) + 2) >> 2
                scalar[y, x, k] = (h0 * b0 + h1 * b1 + (1 << 21)) >> 22
    return np.clip(simd, 0, 255).astype(np.uint8), np.clip(scalar, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("channels, width, height", [(1, 13, 22), (3, 13, 22), (1, 21, 17), (3, 21, 17)])
def test_resize_rounds_every_value_of_a_row_with_the_simd_formula(channels, width, height):
    """Rows of width × channels values not a multiple of 8: the last (length mod 8) values round as SIMD too."""
    image = np.random.default_rng(width * channels).integers(0, 256, (50, 70, channels), dtype=np.uint8)
    simd, scalar = _documented_resize(image, width, height)
    tail = (width * channels) % 8
    assert tail  # the case the old scalar tail got wrong ...
    tail_values = lambda a: a.reshape(height, -1)[:, -tail:]  # noqa: E731
    assert (tail_values(simd) != tail_values(scalar)).any()  # ... and the two roundings disagree there
    np.testing.assert_array_equal(resize_linear(image, width, height), simd)


def test_resize_matches_opencv_when_installed():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    for shape, size in (((50, 70, 3), (13, 22)), ((40, 61, 3), (21, 17)), ((37, 45, 1), (21, 11))):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR).reshape(size[1], size[0], shape[2])
        np.testing.assert_array_equal(resize_linear(image, *size), expected)


# --------------------------------------------------------------------------------------------- masks
def _uniform_video(levels, size=(16, 16)) -> np.ndarray:
    return np.stack([np.full(size + (3,), v, np.uint8) for v in levels])


def test_first_mask_is_empty_and_still_video_never_moves():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    masks = motion_masks(np.stack([frame] * 5))
    assert masks.shape == (5, 24, 24) and masks.dtype == np.uint8 and masks.max() == 0


def test_threshold_is_strict_and_applied_after_the_average_update():
    # A step of d grey levels: A_1 = v + 0.3 d, so |S_1 - R_1| = d - round(0.3 d).
    assert motion_masks(_uniform_video([100, 114]))[1].max() == 0  # 14 - 4 = 10: not > 10
    assert motion_masks(_uniform_video([100, 116]))[1].min() == 255  # 16 - 5 = 11
    assert motion_masks(_uniform_video([100, 100, 116]))[1].max() == 0


def test_channel_order_matters_for_masks():
    video = _uniform_video([100, 100])
    video[1, ..., 2] = 160  # the third channel jumps by 60: blue in RGB (weak), red in BGR (strong)
    assert motion_masks(video, "rgb")[1].max() == 0
    assert motion_masks(video, "bgr")[1].min() == 255


def test_small_moving_things_are_opened_away_large_ones_kept():
    def bar_video(thickness):
        video = _uniform_video([40] * 6, (40, 40))
        for t in range(6):
            video[t, 5 + 4 * t : 5 + 4 * t + thickness, 5:35] = 100
        return video

    assert motion_masks(bar_video(1))[1:].max() == 0
    assert motion_masks(bar_video(12))[1:].max() == 255


def test_metric_resolution_masks_need_two_of_four_samples():
    masks = np.zeros((1, 8, 8), np.uint8)
    # cell (0, 0) samples rows/cols 1..2: set 2 of them; cell (0, 1) samples rows 1..2, cols 5..6: set 1
    masks[0, 1, 1] = masks[0, 2, 2] = 255
    masks[0, 1, 5] = 255
    masks[0, 4:, 4:] = 255  # cell (1, 1) fully set, its non-sampled pixels included
    out = masks_at_metric_resolution(masks, 2, 2)
    np.testing.assert_array_equal(out[0], [[1, 0], [0, 1]])
    odd = np.zeros((1, 9, 9), np.uint8)
    odd[0, :, 8] = 255  # the mask writer keeps an even-sized frame: the last column is lost
    assert masks_at_metric_resolution(odd, 2, 2).max() == 0
    assert metric_size(1080, 1920) == (480, 270)


# ------------------------------------------------------------------------------------------- metrics
def test_spatiotemporal_iou_per_frame():
    a = np.zeros((3, 4, 4), np.uint8)
    b = np.zeros((3, 4, 4), np.uint8)
    a[1, 0, :2] = 1  # frame 1: a has 2 px, b has 1 of them and 1 more
    b[1, 0, 1:3] = 1
    a[2, 3, 3] = 1  # frame 2: disjoint
    b[2, 0, 0] = 1
    assert spatiotemporal_iou(a, b) == [1.0, 1 / 3, 0.0]
    assert spatiotemporal_iou(a, a) == [1.0, 1.0, 1.0]
    assert spatiotemporal_iou(a, b[:2]) == [1.0, 1 / 3]  # zip: the longer stack is cut


def test_spatial_iou_collapses_time():
    a = np.zeros((2, 4, 4), np.uint8)
    b = np.zeros((2, 4, 4), np.uint8)
    a[0, 0, 0] = a[1, 0, 1] = 1
    b[1, 0, 0] = b[0, 3, 3] = 1
    assert spatial_iou(a, b) == 1 / 3
    assert spatial_iou(a, a) == 1.0
    assert spatial_iou(np.zeros_like(a), np.zeros_like(b)) == 1.0  # nothing moves in either
    assert spatial_iou([], []) == 1.0
    assert spatial_iou(a, np.zeros_like(a)) == 0.0


def test_weighted_spatial_iou_by_hand():
    p = np.zeros((4, 1, 3), np.uint8)
    g = np.zeros((4, 1, 3), np.uint8)
    p[:2, 0, 0] = 1  # pixel 0 moves in 2/4 frames of P, in 4/4 of G
    g[:, 0, 0] = 1
    p[:, 0, 1] = 1  # pixel 1 only in P, 4/4
    g[0, 0, 2] = 1  # pixel 2 only in G, 1/4
    assert weighted_spatial_iou(p, g) == pytest.approx(0.5 / (1 + 1 + 0.25), abs=1e-15)
    assert weighted_spatial_iou(p, p) == 1.0
    assert weighted_spatial_iou(np.zeros_like(p), np.zeros_like(g)) == 1.0
    # each stack is normalised by its own frame count: 1 of 2 frames equals 2 of 4
    half_of_two = np.array([[[1]], [[0]]], np.uint8)
    half_of_four = np.array([[[1]], [[1]], [[0]], [[0]]], np.uint8)
    assert weighted_spatial_iou(half_of_two, half_of_four) == 1.0


def test_mse_per_frame_on_the_unit_scale():
    black = np.zeros((2, 4, 4, 3), np.uint8)
    white = np.full((2, 4, 4, 3), 255, np.uint8)
    assert mse_per_frame(black, black) == [0.0, 0.0]
    assert mse_per_frame(black, white) == [1.0, 1.0]
    grey = np.full((1, 4, 4, 3), 127, np.uint8)
    assert mse_per_frame(black[:1], grey)[0] == float(np.float32(np.float32(127 / 255.0) ** 2))
    with pytest.raises(ValueError, match="same number of frames"):
        mse_per_frame(black, white[:1])


def test_evaluate_view_identical_and_too_short():
    rng = np.random.default_rng(4)
    video = np.full((10, 32, 48, 3), 90, np.uint8)
    for t in range(10):
        video[t, 8:24, 2 + 3 * t : 14 + 3 * t] = rng.integers(150, 255, 3)
    m = evaluate_view(video, video, video, fps=2)  # window: 5 s × 2 fps = 10 frames
    assert m.spatial_iou_v1 == m.weighted_spatial_iou_v1 == m.variance_spatial == 1.0
    assert m.spatiotemporal_iou_v1 == [1.0] * 10 and m.v1_mse == [0.0] * 10
    assert len(m.variance_mse) == 10
    with pytest.raises(ValueError):
        evaluate_view(video, video, video[:8], fps=2)
    larger = np.repeat(np.repeat(video, 2, axis=1), 2, axis=2)  # another size: resized to take 1's metric size
    assert evaluate_view(video, video, larger, fps=2).spatial_iou_v1 > 0.5


# ----------------------------------------------------------------------------------------- aggregate
def _view(st, sp, wsp, mse, vst, vsp, vwsp, vmse) -> ViewMetrics:
    return ViewMetrics(st, st, sp, sp, wsp, wsp, mse, mse, vst, vsp, vwsp, vmse)


def _hand_case() -> dict:
    return {
        "a": {"center": _view([1.0, 0.5], 0.6, 0.3, [0.01, 0.03], [1.0, 0.8], 0.8, 0.6, [0.001, 0.003])},
        "b": {"center": _view([1.0, 0.0], 0.4, 0.1, [0.02, 0.02], [1.0, 1.0], 0.7, 0.5, [0.002, 0.002])},
    }


def test_physics_iq_score_by_hand():
    score = physics_iq_score(_hand_case())
    st, sp, wsp, mse = 0.625, 0.5, 0.2, 0.02
    v_st, v_sp, v_wsp, v_mse = 0.95, 0.75, 0.55, 0.002
    raw = 100 * ((st / v_st + sp / v_sp + wsp / v_wsp) / 3 - (mse - v_mse))
    assert score.raw == pytest.approx(raw, rel=1e-12)
    assert score.score == 54.47
    assert score.variance_spatiotemporal_iou == v_st and score.variance_mse == v_mse
    assert score.physical_variance_all_metrics == 2.248
    assert score.num_scenarios == 2


def test_score_rounding_rules():
    case = {"a": {"v": _view([1.0], 0.5, 0.5, [0.00005], [1.0], 0.123456, 0.12345, [0.00005])}}
    score = physics_iq_score(case)
    assert score.mse == 0.0001  # Python round(5e-05, 4) on every frame value
    assert score.variance_mse == 0.0001
    assert score.variance_weighted_spatial_iou == 0.1234  # numpy: rint(1234.5) = 1234, where Python gives 0.1235
    assert score.variance_spatial_iou == 0.12346  # five decimals for the spatial term
    assert score.score == 100.0  # clipped


def test_score_clips_to_zero_and_averages_views():
    bad = _view([0.0, 0.0], 0.0, 0.0, [0.5, 0.5], [1.0, 1.0], 1.0, 1.0, [0.0, 0.0])
    assert physics_iq_score({"a": {"v": bad}}).score == 0.0
    good = _view([1.0, 1.0], 1.0, 1.0, [0.0, 0.0], [1.0, 1.0], 1.0, 1.0, [0.0, 0.0])
    mixed = physics_iq_score({"a": {"left": good, "right": bad}})
    assert mixed.spatial_iou == 0.5 and mixed.spatiotemporal_iou == 0.5 and mixed.mse == 0.25
    with pytest.raises(ValueError):
        physics_iq_score({"a": {"left": good}, "b": {"right": good}})


def test_metrics_csv_round_trip_and_numpy_reprs(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics_csv(_hand_case(), path)
    assert read_metrics_csv(path) == _hand_case()
    assert physics_iq_score_from_csv(path) == physics_iq_score(_hand_case())
    text = path.read_text().replace("[1.0, 0.5]", "[np.float64(1.0), np.float64(0.5)]")
    path.write_text(text)
    assert read_metrics_csv(path)["a"]["center"].spatiotemporal_iou_v1 == [1.0, 0.5]


# ----------------------------------------------------------------------------------------- on disk
def test_file_names_round_trip():
    name = benchmark_file_name(7, "testing-videos", 24, "perspective-left", 2, "ball-drop")
    assert name == "0007_testing-videos_24FPS_perspective-left_take-2_ball-drop.mp4"
    info = parse_benchmark_file_name(name)
    assert (info.video_id, info.fps, info.perspective, info.take, info.scenario) == (
        "0007", "24", "perspective-left", 2, "ball-drop")
    with pytest.raises(ValueError):
        benchmark_file_name(1, "testing-videos", 24, "perspective-left", 1, "bad_name")


def test_change_fps_blends_neighbouring_frames():
    ramp = np.stack([np.full((2, 2, 3), t, np.uint8) for t in range(150)])
    out = change_fps(ramp, 8)  # 150 frames at 30 FPS → 40 frames spanning the same 5 s
    assert len(out) == 40 and out[0, 0, 0, 0] == 0 and out[-1, 0, 0, 0] == 149
    for j in (1, 20, 38):  # on a linear ramp the blend is the line itself, truncated to uint8
        assert out[j, 0, 0, 0] == math.floor(np.float32(j * 149 / 39) + 1e-4)
