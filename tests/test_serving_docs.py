"""docs/serving.md's client examples, run as they stand against a real `magi1 serve`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from served_magi1 import KEY_A, decode_mp4

DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"


def doc_block(heading: str, language: str) -> str:
    section = DOC.read_text().split(heading, 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_the_openai_example_runs_verbatim(magi1_server, tmp_path):
    code = doc_block("### With the `openai` package", "python")
    env = {**os.environ, "OPENAI_BASE_URL": magi1_server.url + "/v1", "OPENAI_API_KEY": KEY_A}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("magi1-demo_distill 64x64 max")
    assert lines[1].endswith("completed 1 s 64x64") and lines[2].endswith("completed 2 s")
    first, longer = decode_mp4((tmp_path / "ball.mp4").read_bytes()), decode_mp4((tmp_path / "ball-longer.mp4").read_bytes())
    assert len(longer) == 2 * len(first) and first.shape[1:] == (64, 64, 3)
