"""Every bad input a user can give `magi1 generate` is refused before a model loads: one sentence, exit 2, no file.

Each case is its own process running the real CLI on the embedded demo model (refusals come before any weights
are read). To keep the table cheap on two cores, one driver subprocess imports the CLI once and forks a child per
case: the child runs `magi1.cli.main(argv)` as the console script does, and its exit code and stderr are what a
user would see. A few cases also run as a plain `python -m magi1.cli` each. Valid edge cases are not refused.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from magi1.config import load_config
from magi1.errors import InputError
from magi1.io.image import save_image
from magi1.io.video import write_video
from magi1.preflight import check_run

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb, without the memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * 16))  # far too little data: refused before decoding anyway
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    save_image(folder / "still.png", np.full((48, 64, 3), 90, np.uint8))
    (folder / "text.png").write_text("not an image")
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    write_video(folder / "clip.mp4", np.full((8, 64, 64, 3), 100, np.uint8), fps=24)
    _png_claiming(folder / "bomb.png", 12000, 10000)
    (folder / "folder.mp4").mkdir()
    np.savez(folder / "other.npz", weights=np.zeros(3))
    return folder


def _run(args: list[str], cwd: Path, *, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "magi1.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# (extra flags, what the one-line message must say). {in} is the inputs folder, {out} the output file.
REFUSED = [
    (["--output_path", "{in}/folder.mp4"], "is a folder"),
    (["--output_path", "{in}/nowhere/out.mp4"], "does not exist"),
    (["--output_path", "{out}.gif"], "must end in .mp4"),
    (["--output_path", "/proc/out.mp4"], "output folder /proc"),  # os.access says yes for root; creating fails
    (["--image_path", "{in}/bomb.png"], "more than the"),
    (["--image_path", "{in}/text.png"], "not a readable image"),
    (["--prefix_video_path", "{in}/still.png"], "still image, not a video"),
    (["--prefix_video_path", "{in}/broken.mp4"], "not a readable video"),
    (["--num_frames", "1"], "no chunk to generate"),
    (["--num_frames", "3"], "no chunk to generate"),
    (["--num_frames", "0"], "--num_frames must be at least 1"),
    (["--num_frames", "1000000000"], "ask for fewer frames"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "cpu:1"], "unknown device"),
    (["--dtype", "fp8"], "fp8 is a weight format"),
    (["--dtype", "int8"], "unknown dtype"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--seed", "-1"], "--seed must be between 0"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--threads", "100000"], "more than the"),
    (["--offload", "blocks", "--blocks_on_device", "0"], "--blocks_on_device must be at least 1"),
    (["--enhance", "--enhance_timeout", "0"], "--enhance_timeout must be a positive number"),
    (["--height", "40"], "multiple of 16"),
    (["--chunk_prompt", "9:a blue ball"], "chunk prompt is given for chunk 9"),
    (["--resume"], "nothing to resume"),
    (["--mode", "i2v"], "needs --image_path"),
    (["--set", "runtime_config.load={in}/no_weights"], "runtime_config.load"),
    # a flag by another tool's name: one line naming this command's own (was the top-level usage, then
    # "magi1: error: unrecognized arguments")
    (["--num_inference_steps", "8"], "--num_inference_steps: use --steps"),
    (["--fps", "12"], "--fps: it is a config field: --set runtime_config.fps=VALUE"),
    (["--promt", "a cat"], "--promt: did you mean --prompt?"),
    (["--image_path", "{in}/clip.mp4"], "is a video, not an image; continue it with v2v"),
    # found by using the CLI: each was a misleading message, a traceback, or a flag dropped without a word
    (["--config_file", "{in}"], "is a folder; give a config JSON file or a preset name"),  # was "not found"
    (["--special_tokens", "{in}/still.png"], "is not an .npz file"),  # was numpy's pickle traceback, exit 1
    (["--special_tokens", "{in}/other.npz"], "lacks the arrays caption_token, logo_token, other_tokens"),
    (["--prompt", "a red ball", "--chunk_prompt", "0:a blue ball"], "both give the first chunk's caption"),
    (["--steps", "1"], "--steps must be a multiple of 4 on this model"),  # was "num_steps (1) must be ..."
    (["--set", "runtime_config.window_size=0"],  # was two lines
     "invalid config: runtime_config.window_size must be positive"),
    (["--prefix_video_path", "{in}/text.png"], "is not a readable video (nor an image)"),  # was "a still image"
    (["--num_frames", "abc"], "argument --num_frames: invalid int value: 'abc'; see `magi1 generate --help`"),
    # the clip being continued was replaced by its continuation
    (["--prefix_video_path", "{in}/clip.mp4", "--output_path", "{in}/./clip.mp4"], "which the new video would overwrite"),
]


# Reads a JSON list of argv lists; forks one child per case, which runs the CLI with stderr into a file.
FORK_DRIVER = """
import json, os, sys, tempfile
from magi1.cli import main
import numpy, PIL.Image, av, magi1.preflight, magi1.io.video, magi1.io.image, magi1.prompting.cli  # shared by the children
import torch, magi1.config, magi1.runtime, magi1.resume  # most refusals read a config: imported once, not per child
def start(argv):
    err = tempfile.TemporaryFile("w+")
    pid = os.fork()
    if pid == 0:
        os.dup2(err.fileno(), 2)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        code = 1
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid, err

def finish(pid, err):
    _, status = os.waitpid(pid, 0)
    err.seek(0)
    return [os.waitstatus_to_exitcode(status), err.read()]

argvs = json.load(sys.stdin)
results = []
for first in range(0, len(argvs), 2):  # two children at a time: one per core
    running = [start(argv) for argv in argvs[first:first + 2]]
    results += [finish(pid, err) for pid, err in running]
print(json.dumps(results))
"""


def _cases(inputs: Path, folder: Path) -> list[tuple[list[str], str, Path]]:
    cases = []
    for i, (extra, message) in enumerate(REFUSED):
        case_dir = folder / f"case{i}"
        case_dir.mkdir()
        out = case_dir / "never.mp4"
        args = ["generate", "--num_frames", "96", "--output_path", str(out), "--quiet"]
        cases.append((args + [a.replace("{in}", str(inputs)).replace("{out}", str(out)) for a in extra],
                      message, case_dir))
    return cases


def _check_refusal(code: int, stderr: str, message: str, case_dir: Path) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("magi1 generate: error: "), stderr
    assert message in lines[0], lines[0]
    assert not re.search(r"--load\b", lines[0])  # no flag of that name exists
    assert not list(case_dir.iterdir()), f"a refused run left {list(case_dir.iterdir())}"


def test_generate_refuses_every_bad_input_before_loading(inputs, tmp_path):
    import json

    cases = _cases(inputs, tmp_path)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", FORK_DRIVER], input=json.dumps([argv for argv, _, _ in cases]),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for (argv, message, case_dir), (code, stderr) in zip(cases, json.loads(done.stdout.splitlines()[-1])):
        _check_refusal(code, stderr, message, case_dir)


@pytest.mark.parametrize("index", [0, 3, 5, 13])  # folder output, /proc, text as PNG, a bad device: the console way
def test_refusal_through_a_fresh_interpreter(inputs, tmp_path, index):
    argv, message, case_dir = _cases(inputs, tmp_path)[index]
    done = _run(argv, tmp_path)
    _check_refusal(done.returncode, done.stderr, message, case_dir)


@pytest.mark.skipif(bool(os.environ.get("CUDA_VISIBLE_DEVICES")), reason="a GPU may be present")
def test_cuda_without_a_gpu_is_refused(tmp_path):
    done = _run(["generate", "--device", "cuda", "--output_path", str(tmp_path / "x.mp4")], tmp_path)
    assert done.returncode == 2 and "no CUDA device" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["train", "eval"])
def test_subcommand_help(tmp_path, command):
    done = _run([command, "-h"], tmp_path)
    assert done.returncode == 0 and "usage: magi1" in done.stdout, done.stderr


@pytest.mark.parametrize("argv, listed", [([], ["generate", "serve", "download", "contact-sheet"]),
                                           (["train"], ["demo", "lora", "distill"])])
def test_a_bare_command_lists_what_it_can_do(tmp_path, argv, listed):
    done = _run(argv, tmp_path)  # `magi1` or `magi1 train` alone: the commands with a line each, not an error
    assert done.returncode == 2 and "the following arguments are required" not in done.stderr, done.stderr
    assert all(f"\n    {name} " in done.stderr for name in listed), done.stderr


@pytest.mark.parametrize("argv, hint", [(["genrate", "--prompt", "x"], " (did you mean generate?)"),
                                         (["-v", "contact_sheet"], " (did you mean contact-sheet?)"), (["foo"], "")])
def test_a_mistyped_command_names_the_close_one(tmp_path, argv, hint):
    done = _run(argv, tmp_path)  # was argparse's usage block and "invalid choice" with no suggestion
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    word = next(a for a in argv if not a.startswith("-"))
    assert len(lines) == 1 and lines[0].startswith(f"magi1: error: unknown command {word!r}{hint}; the commands "
                                                   f"are generate, serve, train"), done.stderr


def test_a_mistyped_serve_flag_names_the_close_one(tmp_path):
    done = _run(["serve", "--prot", "8000"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("magi1 serve: error: unrecognized arguments: --prot 8000 "
                                   "(--prot: did you mean --port?); see `magi1 serve --help`")


def test_serve_without_the_server_extra_names_it(tmp_path):
    block = "import sys; sys.modules['fastapi'] = None; from magi1.cli import main; sys.exit(main(sys.argv[1:]))"
    done = _run(["serve"], tmp_path, code=block)
    assert done.returncode == 2 and "pip install 'magi1[serve]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ valid edge cases are not refused
@pytest.fixture(scope="module")
def demo_config():
    return load_config("demo")


@pytest.mark.parametrize("fields, chunks", [
    ({"num_frames": 4}, 1),                                    # one latent frame: one chunk
    ({"num_frames": 1, "mode": "i2v"}, 1),                     # the image frame makes the chunk
    ({"num_frames": 96, "chunk_prompts": {0: "a", 3: "b"}}, 4),  # a prompt for the last chunk
    ({"num_frames": 24, "video": "array"}, 2),                 # a numpy video of any size is resized
])
def test_valid_edge_cases_pass(inputs, demo_config, fields, chunks):
    fields = dict(fields)
    if fields.get("mode") == "i2v":
        fields["image"] = str(inputs / "still.png")
    if fields.get("video") == "array":
        fields["video"] = np.random.default_rng(0).integers(0, 256, (8, 50, 70, 3), dtype=np.uint8)
    checked = check_run(demo_config, prompt="a ball", **fields)
    assert checked.num_generated == chunks
    r = checked.config.runtime_config
    if checked.video is not None:
        assert checked.video.shape == (8, r.video_size_h, r.video_size_w, 3)


def test_python_api_refusals_are_input_errors(demo_config):
    for fields, message in [({"num_frames": 2}, "no chunk"), ({"chunk_prompts": {7: "x"}}, "chunk 7"),
                            ({"video": np.zeros((8, 64, 64), np.uint8)}, "(T, H, W, 3)"),
                            ({"image": 3}, "file path, a PIL image"), ({"height": 8.0}, "whole number")]:
        with pytest.raises(InputError, match=re.escape(message)):
            check_run(demo_config, prompt="a ball", **fields)


@pytest.mark.parametrize("name, message", [
    ("nowhere/out.mp4", "does not exist"),
    ("out.gif", "must end in .mp4"),
    (".", "is a folder"),
])
def test_generate_to_file_refuses_a_bad_output_path_before_any_work(tiny_pipeline, tmp_path, name, message):
    """The Python API as the README shows it: a bad path is an InputError before the first step, no file left."""
    from magi1.errors import InputError

    steps = []
    with pytest.raises(InputError, match=message):
        tiny_pipeline.generate_to_file(tmp_path / name, prompt="a red ball bounces", seed=1, num_frames=24,
                                       progress=False, callback=lambda event: steps.append(event))
    assert steps == [] and sorted(p.name for p in tmp_path.iterdir()) == []


def test_python_api_mistakes_found_by_trying_them_are_one_input_error(tiny_pipeline):
    """Each of these ended in a ConfigError, a torch AssertionError or a silent wrong run before."""
    import numpy as np
    import torch

    from magi1.errors import InputError

    cases = [
        (dict(height=72), "height must be a positive multiple of 16"),
        (dict(num_frames=0), "num_frames must be at least 1"),
        (dict(num_inference_steps=7), "steps must be a multiple of 2 on this model"),
        (dict(seed=1.5), "seed must be a whole number"),
        (dict(chunk_prompts="a blue square", num_frames=48), "not a string"),
        (dict(chunk_prompts=["a", "b", "c"], num_frames=24), "lists 3 prompts"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            tiny_pipeline("a ball", output_type="latent", **kwargs)
    assert tiny_pipeline("a ball", num_frames=np.int64(24), output_type="latent").latents.shape[2] == 6
    with pytest.raises(InputError, match="floating-point"):
        tiny_pipeline.to(torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            tiny_pipeline.to(torch.device("cuda"))


# `magi1 generate` with the model load replaced by a failure: a refusal printed under it came before any load.
NO_MODEL_LOAD = ("import sys\nimport magi1.pipeline as p\n"
                 "p.MagiPipeline.from_pretrained = classmethod(lambda *a, **k: sys.exit('the model was loaded'))\n"
                 "from magi1.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def test_other_libraries_info_lines_stay_out_of_the_output(tmp_path):
    # The CLI's root logger at INFO printed every library's INFO lines: torch's "FakeTensor cache stats: ..."
    # at exit (seen after an early Ctrl-C), httpx's line per request; magi1's own INFO lines stay
    code = ("import atexit, logging, sys\n"
            "atexit.register(lambda: logging.getLogger('httpx').info('cache stats'))\n"
            "atexit.register(lambda: logging.getLogger('magi1.pipeline').info('a magi1 line'))\n"
            "from magi1.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    done = _run(["plan"], tmp_path, code=code)
    assert done.returncode == 0 and "a magi1 line" in done.stderr and "cache stats" not in done.stderr, done.stderr
    done = _run(["-v", "plan"], tmp_path, code=code)
    assert done.returncode == 0 and "cache stats" in done.stderr, done.stderr  # -v: everything


def test_make_tiny_into_a_folder_it_cannot_create_is_one_line(tmp_path):
    done = _run(["make-tiny", "/proc/tiny_model"], tmp_path)  # was a FileNotFoundError traceback, exit 1
    assert done.returncode == 2 and done.stderr.strip() == (
        "magi1 make-tiny: error: cannot write the tiny model into /proc/tiny_model: No such file or directory")


def test_a_cut_off_resume_state_is_refused_before_the_model_loads(inputs, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes((inputs / "clip.mp4").read_bytes())  # the partial video of a killed run
    state = tmp_path / ".out.mp4.resume.safetensors"
    state.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"latent\"")  # a disk that filled up mid-write
    done = _run(["generate", "--output_path", str(out), "--resume", "--quiet"], tmp_path, code=NO_MODEL_LOAD)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"magi1 generate: error: the saved resume state {state} cannot be read"), lines[0]
    assert lines[0].endswith("delete it and run without --resume to start over")
