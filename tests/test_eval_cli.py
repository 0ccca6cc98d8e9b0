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
