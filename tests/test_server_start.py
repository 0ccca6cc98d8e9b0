"""`magi1 serve` refusing to start, as a user meets it: exit 2, one sentence, and nothing left behind.

Without --results_dir the server keeps its jobs in a temporary folder that it removes when it stops; a start
refused after that folder was made (a busy port) used to leave it in the temp directory, and a wrong preset
made one and announced it ("results go to ...") before saying the preset was wrong.
"""

from __future__ import annotations

import os
import socket
import subprocess

from serve_process import magi1_command


def serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    return subprocess.run(magi1_command() + ["serve", "--threads", "1", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TMPDIR": str(temp)})


def test_a_wrong_preset_is_refused_before_any_folder_is_made(tmp_path):
    done = serve(tmp_path, "--config_file", "no_such_preset", "--port", "0")
    assert done.returncode == 2, done.stderr
    assert "unknown preset 'no_such_preset'" in done.stderr and "results go to" not in done.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_busy_port_is_refused_without_leaving_a_temporary_results_folder(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = serve(tmp_path, "--config_file", "demo_distill", "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
    assert list((tmp_path / "tmp").iterdir()) == []
