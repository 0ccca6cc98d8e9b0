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
