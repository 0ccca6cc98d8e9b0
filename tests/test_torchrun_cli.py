"""`torchrun ... magi1 generate` as the README tells a user with several GPUs (here: CPU processes on gloo),
and `magi1 serve` started the same way by mistake.

Context parallel (cp 2) and pipeline stages (pp 2) must write the same mp4 as one process; a launch whose
layout cannot work must fail at once with a sentence that says what to set, on every rank.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from magi1.io.video import load_video, probe_video

MAGI1 = Path(sys.executable).with_name("magi1")
TORCHRUN = Path(sys.executable).with_name("torchrun")
COMMON = ["generate", "--config_file", "demo_distill", "--num_frames", "48", "--quiet"]

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], *, processes: int | None = None) -> subprocess.CompletedProcess:
    # bf16-input islands forced: the path whose process-wide oneDNN switch once leaked into the one-process
    # run's decode worker (another video than the two-process runs', which have no worker), on every machine.
    env = dict(os.environ, OMP_NUM_THREADS="1", MAGI1_FP32_ISLANDS="bf16-inputs")
    if processes:
        command = [str(TORCHRUN), "--nproc_per_node", str(processes), "--master_port", str(free_port()),
                   str(MAGI1), *args]
    else:
        command = [str(MAGI1), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def frames(path: Path) -> np.ndarray:
    return load_video(path, 64, 64, 24, max_frames=None)


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> np.ndarray:
    path = tmp_path_factory.mktemp("alone") / "alone.mp4"
    done = run([*COMMON, "--output_path", str(path)])
    assert done.returncode == 0, done.stderr[-2000:]
    return frames(path)


@pytest.mark.parametrize("layout", [["engine_config.cp_size=2", "engine_config.cp_strategy=cp_ulysses"],
                                    ["engine_config.pp_size=2"]], ids=["cp2", "pp2"])
def test_two_processes_write_the_video_one_process_writes(tmp_path, alone, layout):
    path = tmp_path / "two.mp4"
    sets = [arg for item in layout for arg in ("--set", item)]
    done = run([*COMMON, *sets, "--output_path", str(path)], processes=2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert probe_video(path).num_frames == 48
    assert np.array_equal(frames(path), alone)
    assert done.stdout.count("wrote ") == 1  # only the output rank writes and reports
    assert "rank 1/2" in done.stderr


@pytest.mark.parametrize("sets, says", [
    ([], "WORLD_SIZE is 2"),
    (["--set", "engine_config.cp_size=2"], "set engine_config.cp_strategy to cp_ulysses"),
])
def test_a_launch_that_cannot_work_says_what_to_set(tmp_path, sets, says):
    done = run([*COMMON, *sets, "--output_path", str(tmp_path / "x.mp4")], processes=2)
    assert done.returncode != 0
    assert says in done.stderr and "Traceback" not in done.stderr.split("torch/distributed")[0]
    assert not (tmp_path / "x.mp4").exists()


def test_serve_under_torchrun_says_to_start_it_alone(tmp_path):
    """Every rank would load the model and fight for the port; each says in one line what to do instead."""
    done = run(["serve", "--config_file", "demo_distill", "--port", "0", "--results_dir", str(tmp_path / "r")],
               processes=2)
    assert done.returncode != 0
    assert done.stderr.count("magi1 serve runs as one process, but WORLD_SIZE is 2") == 2
    assert not (tmp_path / "r").exists()


def test_an_impossible_layout_is_one_line_from_every_rank(tmp_path):
    """cp_size 3 on 2 processes (and heads that 3 does not divide): each rank names itself and every problem
    on one line (it was a block of indented lines per rank, interleaved by torchrun)."""
    done = run([*COMMON, "--set", "engine_config.cp_size=3", "--set", "engine_config.cp_strategy=cp_ulysses",
                "--output_path", str(tmp_path / "x.mp4")], processes=2)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("magi1 generate: error:")]
    assert sorted(line.split(": ")[2] for line in said) == ["rank 0", "rank 1"], done.stderr[-2000:]
    for line in said:
        assert "WORLD_SIZE is 2" in line and "num_attention_heads (4) is not divisible by engine_config.cp_size (3)" \
            in line
    assert "\n  model num_attention_heads" not in done.stderr and not (tmp_path / "x.mp4").exists()


def test_offload_under_torchrun_is_refused_before_any_weights_are_read(tmp_path):
    """Every rank used to load the whole model first: here loading the DiT says so, loudly."""
    script = tmp_path / "generate_without_loading.py"
    script.write_text(
        "import sys\n"
        "import magi1.checkpoint.loader as loader\n"
        "def refuse(*args, **kwargs):\n"
        "    raise SystemExit('the DiT was loaded')\n"
        "loader.load_dit = refuse\n"
        "from magi1.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script),
                           *COMMON, "--set", "engine_config.pp_size=2", "--offload", "blocks",
                           "--output_path", str(tmp_path / "x.mp4")], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode != 0 and "the DiT was loaded" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.count("magi1 generate: error: weight offload runs in one process; under torchrun each rank "
                             "keeps its own share on its device") == 2, done.stderr[-2000:]
