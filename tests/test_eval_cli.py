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
