"""The demo's quality metrics (smoothness, persistence), its caption wordings and its unknown-prompt warning."""

import subprocess
import sys

import numpy as np
import pytest

from magi1.eval.persistence import named_colours, object_counts, persistence
from magi1.eval.smoothness import group_boundary_ratio
from magi1.train.captions import SHAPE_PLURALS, SHAPE_SYNONYMS, CaptionVariants, caption_variants, clip_facts
from magi1.train.synthetic import COLOURS, SceneConfig, make_clip

CONFIG = SceneConfig(num_frames=48)


def test_real_motion_is_smooth_and_a_held_frame_is_not():
    clips = [make_clip(seed, CONFIG).frames for seed in range(4)]
    assert 0.8 < group_boundary_ratio(clips).ratio < 1.25
    stepped = [np.repeat(f[1::4], 4, axis=0) for f in clips]  # one frame shown 4 times, as a frozen decoder does
    report = group_boundary_ratio(stepped)
    assert report.within_change == 0 and report.ratio == float("inf")
    with pytest.raises(ValueError, match="at least 5 frames"):
        group_boundary_ratio(clips[0][:4])


def test_persistence_counts_named_objects_and_sees_drops_and_extras():
    clip = make_clip(3, SceneConfig(num_frames=72))
    named = named_colours(clip.caption)
    assert set(named) == {o.colour for o in clip.objects}
    assert persistence(clip.frames, clip.caption).passes()
    # Erase one object for the second chunk (fill its colour with the background): it is missing there.
    frames = clip.frames.copy()
    gone = clip.objects[0].colour
    mask = np.linalg.norm(frames[24:48].astype(float) - COLOURS[gone], axis=-1) < 90
    frames[24:48][mask] = frames[0, 0, 0]
    report = persistence(frames, clip.caption)
    assert report.presence[gone] < 0.7 and not report.passes()
    assert report.boundary_presence[gone] < report.presence[gone] + 0.5
    # A square of a colour the caption does not name, in every frame: no frame is clean.
    extra = next(c for c in COLOURS if c not in named)
    frames = clip.frames.copy()
    frames[:, 2:8, 2:8] = COLOURS[extra]
    report = persistence(frames, clip.caption)
    assert report.clean == 0.0 and report.extras[extra] == len(frames)
    assert object_counts(frames[:1])[0][extra] == 1


def test_named_colours_reads_counts_and_ignores_repeats():
    assert named_colours("two red balls and a blue square; the red ball hits the blue square") == {"red": 2, "blue": 1}
    assert named_colours("a cat walks") == {}


def test_caption_variants_name_every_object_and_include_what_newcomers_type():
    config = SceneConfig(num_frames=120)
    texts = set()
    for seed in range(40):
        clip = make_clip(seed, config)
        variants = caption_variants(clip, config, 12, seed=0)
        assert variants[0] == clip.caption and len(variants) == 12
        assert variants == caption_variants(clip, config, 12, seed=0)  # deterministic
        drawer = CaptionVariants(clip_facts(clip, config))
        rng = np.random.default_rng(seed)
        for _ in range(20):
            text = drawer.draw(rng)
            texts.add(text)
            words = set(text.replace(",", " ").replace(";", " ").split())
            for obj in clip.objects:  # every object is named, by its colour or by a word for its shape
                colours = {obj.colour, "violet"} if obj.colour == "purple" else {obj.colour}
                shapes = set(SHAPE_SYNONYMS[obj.shape]) | {SHAPE_PLURALS.get(w, w + "s") for w in SHAPE_SYNONYMS[obj.shape]}
                assert words & (colours | shapes), (text, obj)
    for wanted in ("two balls collide", "a red ball bounces", "slides to the left"):
        assert any(wanted in t for t in texts), wanted


def test_generate_warns_about_a_prompt_with_none_of_the_demo_words(tmp_path):
    """As a user meets it: `magi1 generate` on the shipped demo says what the demo knows, then still runs."""
    out = tmp_path / "cat.mp4"
    run = subprocess.run([sys.executable, "-m", "magi1.cli", "generate", "--prompt", "a cat walks", "--num_frames",
                          "24", "--steps", "4", "--output_path", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "ball" in warning[0] and "a cat walks" in warning[0]
    assert out.is_file()
    quiet = subprocess.run([sys.executable, "-m", "magi1.cli", "generate", "--prompt", "a red ball bounces",
                            "--num_frames", "24", "--steps", "4", "--output_path", str(tmp_path / "b.mp4"), "--quiet"],
                           capture_output=True, text=True, timeout=240)
    assert quiet.returncode == 0 and "warning:" not in quiet.stderr


def test_eval_quality_and_contact_sheet_from_the_command_line(tmp_path):
    """`magi1 eval quality` prints both tables and saves sheets; `magi1 contact-sheet` tiles an mp4's frames."""
    from PIL import Image

    from magi1.io.video import write_video

    run = subprocess.run([sys.executable, "-m", "magi1.cli", "eval", "quality", "--scenarios", "1", "--num_frames",
                          "24", "--steps", "4", "--modes", "t2v", "--save_frames", str(tmp_path / "sheets")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "| vae round trip |" in run.stdout and "| t2v | 1 |" in run.stdout
    assert (tmp_path / "sheets" / "t2v_00.png").is_file()

    clip = make_clip(5, SceneConfig(num_frames=24)).frames
    video = tmp_path / "clip.mp4"
    write_video(video, clip, fps=24)
    sheet = tmp_path / "sheet.png"
    run = subprocess.run([sys.executable, "-m", "magi1.cli", "contact-sheet", str(video), str(sheet), "--every", "6",
                          "--columns", "2", "--gap", "2"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    image = np.asarray(Image.open(sheet).convert("RGB"))
    assert image.shape == (2 * 66, 2 * 66, 3)  # 4 frames (0, 6, 12, 18) in 2 rows of 2, 64 px + 2 px gap
    assert np.abs(image[:64, :64].astype(int) - clip[0]).mean() < 12  # the first tile is the first frame
    missing = subprocess.run([sys.executable, "-m", "magi1.cli", "contact-sheet", str(tmp_path / "nope.mp4"),
                              str(sheet)], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no video at" in missing.stderr


def test_shipped_demo_vocabulary_is_the_recipe_s_and_warns_only_on_unknown_prompts(tmp_path):
    import json
    from pathlib import Path

    import magi1
    from magi1.models.prompt_vocabulary import check_prompt
    from magi1.train.captions import known_words, write_demo_vocabulary

    shipped = next((Path(magi1.__file__).parent / "demo" / "t5").glob("*/prompt_vocabulary.json"))
    write_demo_vocabulary(tmp_path)
    assert json.loads(shipped.read_text()) == json.loads((tmp_path / "prompt_vocabulary.json").read_text())
    assert {"ball", "square", "red", "collide", "slides"} <= known_words()
    for prompt in ("A RED BALL bounces", "two balls collide", "a blue square slides to the left", "sphere, violet"):
        assert check_prompt(prompt, tmp_path) is None, prompt
    message = check_prompt("a cat walks in the park", tmp_path)
    assert "a cat walks in the park" in message and "balls and squares" in message
    assert check_prompt("a cat walks", tmp_path / "no-vocabulary-here") is None  # e.g. the official T5: no warning


def test_prompt_check_counts_what_a_prompt_names_and_passes_ground_truth():
    """`eval.prompts`: the objects a prompt names, and a ground-truth clip shows its own caption while a blank
    video (what generation 1 gave for "a red ball bounces") does not."""
    from magi1.eval.prompts import check_video, named_object_count

    assert named_object_count("two balls collide") == 2
    assert named_object_count("a red ball and a blue square fall and bounce on the floor") == 2
    assert named_object_count("a red ball hits the blue square") == 1
    assert named_object_count("ball, orange") == 1 and named_object_count("three balls fall") == 3
    clip = make_clip(3, SceneConfig(num_frames=48))
    result = check_video(clip.caption, clip.frames)
    assert result.shows(0.9) and set(result.colours) == {o.colour for o in clip.objects}
    blank = np.broadcast_to(clip.frames[:1, :1, :1], clip.frames.shape).copy()  # background only
    miss = check_video(clip.caption, blank)
    assert not miss.shows(0.9) and miss.worst_colour == 0 and miss.count_reached == 0


def test_eval_prompts_from_the_command_line():
    """As a user runs it: `magi1 eval prompts` on the shipped demo prints one row per prompt and a verdict."""
    run = subprocess.run([sys.executable, "-m", "magi1.cli", "eval", "prompts", "--prompts", "a red ball bounces",
                          "two balls collide", "--num_frames", "24", "--steps", "4"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "| a red ball bounces | 0 | red " in run.stdout and "| two balls collide | 0 | - | 2 |" in run.stdout
    assert "of 2 prompts show what they name" in run.stdout
