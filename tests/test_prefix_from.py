"""Which frames of a clip v2v continues: the first 32 (the official choice) or, with --prefix_from end, the last
32, so a user continuing a clip continues where it ends. Checked on the frames the run is given and through
`magi1 generate` itself."""

from __future__ import annotations

import numpy as np
import pytest

from magi1.cli import main
from magi1.errors import InputError
from magi1.io.video import probe_video, write_video
from magi1.preflight import PREFIX_FRAMES, load_checked_video


@pytest.fixture(scope="module")
def dark_then_bright(tmp_path_factory):
    """96 frames at 24 fps: the first half dark grey, the second half bright."""
    frames = np.zeros((96, 64, 64, 3), np.uint8)
    frames[:48] = 30
    frames[48:] = 220
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=24)


def test_start_takes_the_first_frames_and_end_the_last(dark_then_bright):
    start = load_checked_video(dark_then_bright, 64, 64, 24)
    end = load_checked_video(dark_then_bright, 64, 64, 24, prefix_from="end")
    assert len(start) == len(end) == PREFIX_FRAMES == 32
    assert start.mean() < 60 and end.mean() > 190  # the dark start, the bright end
    with pytest.raises(InputError, match="start or end"):
        load_checked_video(dark_then_bright, 64, 64, 24, prefix_from="middle")


def test_generate_continues_the_end_of_the_clip(tiny_model, dark_then_bright, tmp_path, capsys):
    out = tmp_path / "more.mp4"
    args = ["generate", "--config_file", str(tiny_model), "--prefix_video_path", str(dark_then_bright),
            "--prefix_from", "end", "--num_frames", "48", "--seed", "1", "--output_path", str(out), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    assert probe_video(out).num_frames > 0
    with pytest.raises(SystemExit) as refused:  # argparse names the choices
        main(args[:5] + ["--prefix_from", "sideways"] + args[7:])
    assert refused.value.code == 2 and "invalid choice" in capsys.readouterr().err
