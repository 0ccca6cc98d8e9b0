"""`magi1 generate` on a tiny model, and its up-front validation (clear message, exit 2, no output file)."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import numpy as np
import pytest

from magi1.cli import main
from magi1.io.image import save_image
from magi1.io.video import probe_video


def test_console_script_resolves():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("magi1") == "magi1.cli:main"
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0


def test_generate_t2v_writes_the_file(tiny_model, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = main(["generate", "--config_file", str(tiny_model), "--prompt", "a red ball", "--num_frames", "48",
                 "--output_path", str(out), "--quiet"])
    assert code == 0 and probe_video(out).num_frames == 48
    assert "first chunk after" in capsys.readouterr().out


def test_a_huge_resume_state_is_announced_before_the_run(tiny_model, tmp_path, monkeypatch, caplog):
    # --num_frames 1000000 on the demo saved a 1 GB state after every chunk without a word; the warning is
    # tried here with a lower bar, so the run stays small.
    import magi1.cli

    argv = ["generate", "--config_file", str(tiny_model), "--prompt", "a red ball", "--num_frames", "48", "--quiet"]
    assert main([*argv, "--output_path", str(tmp_path / "small.mp4")]) == 0
    assert "resume state" not in caplog.text
    monkeypatch.setattr(magi1.cli, "LARGE_RESUME_STATE_BYTES", 1)
    assert main([*argv, "--output_path", str(tmp_path / "big.mp4")]) == 0
    assert "--num_frames 48 is 0.0 hours of video in 2 chunks; the resume state kept beside the output is" in caplog.text


def test_generate_i2v_with_chunk_prompts(tiny_model, tmp_path):
    image = tmp_path / "in.png"
    save_image(image, np.full((40, 50, 3), 128, np.uint8))
    out = tmp_path / "i2v.mp4"
    code = main(["generate", "--config_file", str(tiny_model), "--mode", "i2v", "--image_path", str(image),
                 "--prompt", "a ball", "--chunk_prompt", "1:a square", "--num_frames", "24",
                 "--output_path", str(out), "--quiet"])
    # 24 frames + the image frame = 7 latent frames -> 2 chunks of 24 frames.
    assert code == 0 and probe_video(out).num_frames == 48
    from magi1.run_tags import read_run_settings

    settings = read_run_settings(out)  # the chunk prompts are kept; the image's path is not
    assert settings["mode"] == "i2v" and settings["chunk_prompts"] == {"0": "a ball", "1": "a square"}
    assert "prompt" not in settings and str(tmp_path) not in json.dumps(settings)


@pytest.mark.parametrize("extra, message", [
    (["--mode", "i2v"], "needs --image_path"),
    (["--mode", "v2v"], "needs --prefix_video_path"),
    (["--image_path", "missing.png"], "no such file"),
    (["--mode", "t2v", "--image_path", "{image}"], "takes no --image_path"),
    (["--height", "40"], "multiple of 16"),
    (["--width", "0"], "multiple of 16"),
    (["--special_tokens", "nope.npz"], "no such file"),
    (["--steps", "3"], "must be a multiple of"),
    (["--set", "runtime_config.num_stepz=4"], "did you mean 'num_steps'"),
    (["--chunk_prompt", "x:y"], "CHUNK:PROMPT"),
    (["--config_file", "4.5B_bse"], "did you mean '4.5B_base'"),
])
def test_bad_inputs_fail_fast_without_output(tiny_model, tmp_path, capsys, extra, message):
    image = tmp_path / "img.png"
    save_image(image, np.zeros((32, 32, 3), np.uint8))
    out = tmp_path / "never.mp4"
    args = ["generate", "--config_file", str(tiny_model), "--output_path", str(out), "--quiet"]
    args += [a.replace("{image}", str(image)) for a in extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_unreadable_image_and_missing_weights(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "o.mp4"
    assert main(["generate", "--config_file", str(tiny_model), "--image_path", str(bad),
                 "--output_path", str(out)]) == 2
    assert "bad.png" in capsys.readouterr().err
    config = json.loads(tiny_model.read_text())
    config["runtime_config"]["load"] = str(tmp_path / "no_weights_here")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(config))
    assert main(["generate", "--config_file", str(broken), "--output_path", str(out)]) == 2
    assert "no_weights_here" in capsys.readouterr().err
    assert not out.exists()


def test_a_16_bit_image_conditions_i2v_as_its_8_bit_copy(tiny_model, tmp_path):
    # A 16-bit grey PNG reached the model clipped to white (Pillow's convert("RGB")); ffmpeg, as the official
    # code reads images, keeps its top 8 bits: the same video as the 8-bit copy.
    from PIL import Image

    from magi1.io.video import load_video

    ramp = np.linspace(0, 255, 32 * 32).reshape(32, 32).round().astype(np.uint8)
    Image.fromarray(ramp).save(tmp_path / "grey8.png")
    Image.fromarray(ramp.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    videos = []
    for name in ("grey8", "grey16"):
        out = tmp_path / f"{name}.mp4"
        assert main(["generate", "--config_file", str(tiny_model), "--image_path", str(tmp_path / f"{name}.png"),
                     "--prompt", "a ball", "--num_frames", "24", "--output_path", str(out), "--quiet"]) == 0
        videos.append(load_video(out, 32, 32, fps=24, max_frames=None))
    np.testing.assert_array_equal(videos[0], videos[1])


def _magi1(*argv, cwd):
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "magi1.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_contact_sheet_of_a_video_and_its_refusals(tmp_path):
    from PIL import Image

    from magi1.io.video import write_video

    clip = np.zeros((12, 32, 48, 3), np.uint8)
    clip[..., 0] = (np.arange(12) * 20)[:, None, None]
    write_video(tmp_path / "clip.mp4", clip, fps=24, crf=0)
    done = _magi1("contact-sheet", "clip.mp4", "sheet.png", "--every", "3", "--columns", "2", "--gap", "0",
                  cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "wrote sheet.png", done.stderr
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape == (64, 96, 3)  # frames 0, 3, 6, 9: two rows of two
    assert [round(sheet[y, x, 0] / 20) for y, x in ((0, 0), (0, 48), (32, 0), (32, 48))] == [0, 3, 6, 9]

    (tmp_path / "notes.png").write_text("not a picture")
    for argv, message in [
        # a sheet too large to hold was made anyway: the process was killed for memory (exit 137)
        (["clip.mp4", "huge.png", "--scale", "1000"], "would be 100000x34000 pixels, more than the 89478485"),
        (["notes.png", "n.png"], "cannot read notes.png as a video"),  # was "target size must be positive"
        (["missing.mp4", "m.png"], "no video at missing.mp4"),
    ]:
        done = _magi1("contact-sheet", *argv, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
        assert not (tmp_path / argv[1]).exists()
