"""`magi1 eval physics` runs end to end on a tiny model and prints the table with both baselines."""

from __future__ import annotations

from magi1.eval.cli import main_eval


def test_eval_physics_prints_model_and_baselines(tiny_model, tmp_path, capsys):
    code = main_eval(["physics", "--config_file", str(tiny_model), "--scenarios", "1", "--seconds", "1",
                      "--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for row in ("copy last frame", "random motion", "| v2v |", "| i2v |"):
        assert row in out
    assert len(list((tmp_path / "generated" / "v2v").glob("*.mp4"))) == 1


def test_eval_unknown_kind():
    assert main_eval(["vbench"]) == 2


def test_eval_prompts_runs_every_prompt_at_the_seed_given(tiny_model, capsys):
    code = main_eval(["prompts", "--config_file", str(tiny_model), "--prompts", "a red ball", "a blue square",
                      "--seed", "5", "--num_frames", "24", "--device", "cpu"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| a ")]
    assert code == 0 and len(rows) == 2 and all(row.split(" | ")[1] == "5" for row in rows), rows


def test_eval_without_a_kind_is_a_usage_error(capsys):
    assert main_eval([]) == 2 and "usage: magi1 eval" in capsys.readouterr().err


def _magi1_eval(*argv, cwd):
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "magi1.cli", "eval", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_eval_mistakes_are_one_line_on_stderr_before_any_work(tmp_path):
    # each was a traceback (exit 1), the whole usage, or a message on stdout without "error:"
    (tmp_path / "bench").mkdir()
    (tmp_path / "videos").mkdir()
    for argv, message in [
        (["physiks"], "magi1 eval: error: unknown evaluation 'physiks' (did you mean physics?); available: "
                      "physics, quality, prompts"),
        (["physics", "--senarios", "1"], "magi1 eval physics: error: unrecognized arguments: --senarios 1 "
                                         "(--senarios: did you mean --scenarios?)"),
        (["physics", "--scenarios", "0"], "magi1 eval physics: error: argument --scenarios: must be at least 1, "
                                          "got 0; see `magi1 eval physics --help`"),
        (["physics", "--seconds", "-1"], "argument --seconds: must be positive, got -1"),
        (["physics", "--benchmark_root", "bench"], "--benchmark_root needs --generated"),
        (["physics", "--benchmark_root", "nowhere", "--generated", "videos"], "--benchmark_root nowhere is not a "
                                                                             "folder"),
        (["physics", "--benchmark_root", "bench", "--generated", "videos"], "no generated .mp4 files in videos"),
    ]:
        done = _magi1_eval(*argv, cwd=tmp_path)
        assert done.returncode == 2 and not done.stdout, (argv, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, done.stderr)


def test_eval_quality_and_prompts_mistakes_are_one_line_before_the_model_loads(tmp_path):
    # argparse's usage block, a traceback after every video was made (an unwritable --save_frames / --out), a
    # threshold no video can meet, or an empty prompt scored as "shows it": each is now one sentence, exit 2.
    # The config names no model, so a refusal that came after loading would say that instead.
    (tmp_path / "afile").write_text("")
    missing = ["--config_file", "nowhere.json"]
    for argv, message in [
        (["quality", "--scenarios", "0"], "magi1 eval quality: error: argument --scenarios: must be at least 1, "
                                          "got 0; see `magi1 eval quality --help`"),
        (["quality", "--num_frames", "-5"], "argument --num_frames: must be at least 1, got -5"),
        (["quality", "--num_framez", "3"], "--num_framez: did you mean --num_frames?"),
        (["quality", "--modes", "i2v"], "argument --modes: invalid choice: 'i2v'"),
        (["quality", *missing, "--save_frames", "afile"], "--save_frames afile is a file, not a folder"),
        (["prompts", "--threshold", "2"], "argument --threshold: must be a share of frames above 0 and at most 1"),
        (["prompts", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (["prompts", "--seed", "-1"], "argument --seed: must be 0 or more, got -1"),
        (["quality", "--seed", "-1"], "argument --seed: must be 0 or more, got -1"),
        (["prompts", "--prompts"], "argument --prompts: expected at least one argument"),
        (["prompts", *missing, "--prompts", " "], "--prompts has an empty prompt"),
        (["prompts", *missing, "--save_frames", "afile/sheets"], "--save_frames afile/sheets cannot be made"),
        (["physics", *missing, "--out", "afile"], "--out afile is a file, not a folder"),
    ]:
        done = _magi1_eval(*argv, cwd=tmp_path)
        assert done.returncode == 2 and not done.stdout, (argv, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, done.stderr)


def test_eval_quality_of_one_chunk_and_an_odd_frame_count(tiny_model, tmp_path):
    # 32 prefix frames + 7 made the VAE round trip encode 39 frames (a last tile of 3: refused), and a one-chunk
    # video has no chunk boundary: its boundary columns read "nan%" (after numpy's RuntimeWarning), now "-".
    sheets = tmp_path / "sheets"
    done = _magi1_eval("quality", "--config_file", str(tiny_model), "--scenarios", "1", "--num_frames", "7",
                       "--steps", "4", "--device", "cpu", "--save_frames", str(sheets), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "nan" not in done.stdout and "RuntimeWarning" not in done.stderr
    rows = {line.split(" | ")[0]: line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")}
    assert rows["| t2v"][-2:] == ["-", "- |"] and "| vae round trip" in rows, done.stdout
    assert sorted(p.name for p in sheets.iterdir()) == ["t2v_00.png", "v2v_00.png"]
