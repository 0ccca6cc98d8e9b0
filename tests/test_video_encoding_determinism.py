"""The same frames always encode to the same mp4 bytes, whatever the heap held before.

On CPUs with AVX-512, libx264's AVX-512 kernels read memory they never wrote on small frames, so two runs
of the same `magi1 generate` could write different files (and a resumed video was "not the uninterrupted
one" now and then, only inside a busy test suite). glibc's MALLOC_PERTURB_ fills every new allocation with a
chosen byte, which turns "whatever the heap held" into a value the test picks: two runs with different fill
bytes must still write identical files.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from magi1.io.video import _encoder_options, x264_asm_cap

AVX512 = frozenset({"sse2", "avx", "avx2", "avx512f", "avx512bw"})


def test_libx264_is_held_to_avx2_only_where_the_cpu_has_avx512():
    assert x264_asm_cap(AVX512) == "AVX2"
    assert x264_asm_cap(frozenset({"sse2", "avx", "avx2"})) is None  # x264 picks AVX2 itself there
    assert x264_asm_cap(frozenset({"fp", "asimd"})) is None  # an ARM CPU: never name x86 sets
    assert x264_asm_cap(frozenset()) is None


def test_the_cap_sits_under_the_callers_own_x264_settings(monkeypatch):
    import magi1.io.video as video

    monkeypatch.setattr(video, "x264_asm_cap", lambda flags=None: "AVX2")
    assert _encoder_options("libx264", 18, None, None) == {"threads": "1", "crf": "18", "x264-params": "asm=AVX2"}
    merged = _encoder_options("libx264", None, None, {"x264-params": "keyint=24"})
    assert merged["x264-params"] == "asm=AVX2:keyint=24"
    assert _encoder_options("libx264", None, None, {"x264-params": "asm=auto"})["x264-params"] == "asm=auto"
    assert "x264-params" not in _encoder_options("libx265", None, None, None)  # another codec: untouched


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                    reason="MALLOC_PERTURB_ is glibc's")
def test_magi1_generate_writes_the_same_file_whatever_the_heap_held(tiny_model, tmp_path):
    files = []
    for fill in ("0", "85", "170"):  # 0: glibc leaves new memory as it was
        out = tmp_path / f"fill{fill}.mp4"
        run = subprocess.run([sys.executable, "-m", "magi1.cli", "generate", "--config_file", str(tiny_model),
                              "--prompt", "a red ball", "--num_frames", "48", "--seed", "5", "--device", "cpu",
                              "--output_path", str(out), "--quiet"],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "MALLOC_PERTURB_": fill})
        assert run.returncode == 0, run.stderr
        files.append(out.read_bytes())
    assert len(files[0]) > 1000
    assert files[1] == files[0] and files[2] == files[0]
