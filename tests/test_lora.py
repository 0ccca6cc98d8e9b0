"""LoRA: the dataset scanner, buckets, adapters (scale 0 = base, fused = unfused, wrong model refused), the
objective's resume, and `magi1 train lora` / `magi1 generate --lora` as a user runs them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from magi1.config import MagiConfig
from magi1.errors import InputError
from magi1.testing import random_dit_state, tiny_config_dict


def _moving_square(frames: int, size: int = 32, colour=(230, 40, 40), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    video = np.full((frames, size, size, 3), 200, np.uint8)
    x = int(rng.integers(0, size - 8))
    for t in range(frames):
        y = min(size - 8, t // 2)
        video[t, y : y + 8, x : x + 8] = colour
    return video


def _write_clip(folder: Path, name: str, frames: int, caption: str | None, seed: int = 0) -> Path:
    from magi1.io.video import write_video

    path = write_video(folder / f"{name}.mp4", _moving_square(frames, seed=seed), 24)
    if caption is not None:
        (folder / f"{name}.txt").write_text(caption)
    return path


# ------------------------------------------------------------------------------------------ data
def test_dataset_scanner_pairs_captions_and_reports_every_bad_file(tmp_path):
    from PIL import Image

    from magi1.lora.dataset import scan_folder

    _write_clip(tmp_path, "good", 30, "a red square falls")
    (tmp_path / "sub").mkdir()
    _write_clip(tmp_path / "sub", "nested", 26, "another red square")
    Image.fromarray(_moving_square(1)[0]).save(tmp_path / "still.png")
    (tmp_path / "still.txt").write_text("a red square rests\n")
    _write_clip(tmp_path, "no_caption", 30, None)
    _write_clip(tmp_path, "empty_caption", 30, "   \n")
    _write_clip(tmp_path, "too_short", 10, "a short clip")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "broken.txt").write_text("a broken clip")
    (tmp_path / "orphan.txt").write_text("a caption without a clip")
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / ".hidden.mp4").write_bytes(b"")  # hidden files are not the user's data

    scan = scan_folder(tmp_path, fps=24, min_frames=24)
    assert sorted(i.path.name for i in scan.items) == ["good.mp4", "nested.mp4", "still.png"]
    assert {i.path.name: i.caption for i in scan.items}["still.png"] == "a red square rests"
    assert {i.path.name: i.kind for i in scan.items}["still.png"] == "image"
    reasons = {p.path.name: p.reason for p in scan.problems}
    assert set(reasons) == {"no_caption.mp4", "empty_caption.txt", "too_short.mp4", "broken.mp4", "orphan.txt",
                            "notes.json"}
    assert "no caption file no_caption.txt" in reasons["no_caption.mp4"]
    assert "empty" in reasons["empty_caption.txt"]
    assert "shorter than one chunk" in reasons["too_short.mp4"]
    assert "not a readable video" in reasons["broken.mp4"]
    assert "no video or image" in reasons["orphan.txt"]
    assert "6 entries not used" in scan.summary()


def test_hugging_face_metadata_files_caption_the_clips_they_name(tmp_path):
    import json

    from magi1.lora.dataset import scan_folder

    _write_clip(tmp_path, "a", 30, None)
    _write_clip(tmp_path, "b", 30, "the sidecar caption")  # a .txt beside the file wins over its row
    _write_clip(tmp_path, "untitled", 30, None)
    rows = [{"file_name": "a.mp4", "text": "a red square falls"}, {"file_name": "b.mp4", "text": "the row"},
            {"file_name": "gone.mp4", "text": "no such file"}, {"file_name": "untitled.mp4", "tags": "x"}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "sub").mkdir()
    _write_clip(tmp_path / "sub", "c", 30, None)
    _write_clip(tmp_path / "sub", "d", 30, None)
    (tmp_path / "sub" / "metadata.csv").write_text('file_name,caption\nc.mp4,"a blue square, then a ball"\nd.mp4,\n')

    scan = scan_folder(tmp_path, fps=24, min_frames=24)
    assert {i.path.name: i.caption for i in scan.items} == {
        "a.mp4": "a red square falls", "b.mp4": "the sidecar caption", "c.mp4": "a blue square, then a ball"}
    reasons = sorted(str(p.relative_to(tmp_path)) if p.is_absolute() else str(p) for p in
                     (problem.path for problem in scan.problems))
    text = "\n".join(str(problem) for problem in scan.problems)
    assert reasons == ["metadata.jsonl", "metadata.jsonl", "sub/d.mp4", "untitled.mp4"], text
    assert "row 3 names gone.mp4, which is not there" in text
    assert "row 4 needs file_name and one of text, caption, prompt (has file_name, tags)" in text
    assert "d.mp4: caption is empty" in text
    assert "no caption file untitled.txt (nor a metadata.jsonl / metadata.csv row)" in text


def test_buckets_keep_the_area_and_videos_are_cut_into_whole_chunks():
    from magi1.lora.buckets import Bucket, bucket_sizes, nearest_bucket, whole_chunk_segments

    buckets = bucket_sizes(720, 720)
    assert Bucket(720, 720) in buckets
    assert all(b.height % 16 == 0 and b.width % 16 == 0 for b in buckets)
    assert all(0.8 < b.height * b.width / 720**2 <= 1.0 for b in buckets)
    wide = nearest_bucket(1080, 1920, buckets)
    assert 1.6 < wide.aspect < 1.9 and nearest_bucket(1920, 1080, buckets).aspect < 0.65
    pieces = whole_chunk_segments(130, chunk_frames=24, clip_chunks=2)
    assert [(p.start_frame, p.chunks) for p in pieces] == [(0, 2), (48, 2), (96, 1)]  # the last 10 frames dropped
    assert whole_chunk_segments(23, 24, 5) == []


# ------------------------------------------------------------------------------------------ adapters
def _tiny_dit(seed: int = 0, **model_overrides):
    from magi1.models.dit import MagiDiT

    data = tiny_config_dict()
    data["model_config"].update(model_overrides)
    config = MagiConfig.from_dict(data)
    model = MagiDiT(config.model_config)
    model.load_state_dict(random_dit_state(config.model_config, seed=seed))
    return model


def _dit_inputs(model):
    c = model.config
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 12, 4, 4, generator=gen)
    y = torch.randn(2, 1, c.caption_max_length, c.caption_channels, generator=gen)
    mask = torch.zeros(2, 1, c.caption_max_length)
    mask[:, :, :7] = 1
    kv = torch.tensor([[0, 16], [0, 32]], dtype=torch.int32)
    return (x, torch.tensor([[0.95, 0.3]]), y, mask, kv), {"null_adaln": False}


def _trained_looking_lora(model, rank: int = 4):
    from magi1.lora.adapters import LoraSettings, add_lora

    params = add_lora(model, LoraSettings(rank=rank), "default")
    with torch.no_grad():  # B starts at 0 (no effect); give both matrices values as after training
        for p in params:
            p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    return params


def test_lora_at_scale_zero_is_the_base_model_bit_for_bit_and_fused_equals_unfused(tmp_path):
    from magi1.lora.adapters import adapter_names, fuse, remove_adapters, save_lora, set_scale, unfuse

    model = _tiny_dit()
    args, kwargs = _dit_inputs(model)
    base = model(*args, **kwargs)
    official_keys = set(model.state_dict())
    _trained_looking_lora(model)
    adapted = model(*args, **kwargs)
    assert (adapted - base).abs().max() > 1e-3  # the adapter acts, on every targeted linear kind
    set_scale(model, "default", 0.0)
    assert torch.equal(model(*args, **kwargs), base)
    set_scale(model, "default", 0.5)
    half = model(*args, **kwargs)
    assert 0 < (half - base).abs().max() < (adapted - base).abs().max()
    set_scale(model, "default", 1.0)
    save_lora(model, tmp_path / "lora", model_name="tiny")
    fuse(model, ["default"])
    torch.testing.assert_close(model(*args, **kwargs), adapted, atol=2e-5, rtol=1e-4)
    unfuse(model)
    torch.testing.assert_close(model(*args, **kwargs), adapted, atol=2e-5, rtol=1e-4)
    remove_adapters(model)
    assert adapter_names(model) == [] and set(model.state_dict()) == official_keys
    torch.testing.assert_close(model(*args, **kwargs), base, atol=1e-5, rtol=1e-5)
    saved = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert saved["r"] == 4 and "linear_fc1" in saved["target_modules"]


def test_pipeline_load_lora_scale_zero_and_fuse_through_a_generation(tiny_model, tmp_path):
    from magi1.lora.adapters import save_lora
    from magi1.pipeline import MagiPipeline

    donor = _tiny_dit(seed=5)
    _trained_looking_lora(donor)
    save_lora(donor, tmp_path / "lora", model_name="tiny")
    pipe = MagiPipeline.from_pretrained(str(tiny_model), device="cpu")
    run = dict(prompt="a red ball bounces", num_frames=24, num_inference_steps=2, output_type="latent",
               generator=torch.Generator().manual_seed(0), progress=False)
    base = pipe(**run).latents
    name = pipe.load_lora(tmp_path / "lora", scale=0.0)
    assert pipe.lora_scales == {name: 0.0}
    assert torch.equal(pipe(**dict(run, generator=torch.Generator().manual_seed(0))).latents, base)
    pipe.set_lora_scale(1.0)
    unfused = pipe(**dict(run, generator=torch.Generator().manual_seed(0))).latents
    assert (unfused - base).abs().max() > 1e-3
    pipe.fuse_lora()
    fused = pipe(**dict(run, generator=torch.Generator().manual_seed(0))).latents
    torch.testing.assert_close(fused, unfused, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="unfuse_lora"):
        pipe.set_lora_scale(0.5)
    pipe.unfuse_lora()
    with pytest.raises(InputError, match="unload_lora"):
        pipe.save_pretrained(tmp_path / "saved")
    pipe.unload_lora()
    assert pipe.lora_scales == {}
    torch.testing.assert_close(pipe(**dict(run, generator=torch.Generator().manual_seed(0))).latents, base,
                               atol=1e-5, rtol=1e-5)


def test_a_lora_for_another_model_is_refused_in_one_sentence(tmp_path):
    from safetensors.torch import load_file, save_file

    from magi1.lora.adapters import ADAPTER_WEIGHTS, LoraMismatchError, attach_lora, read_lora, save_lora

    donor = _tiny_dit()
    _trained_looking_lora(donor)
    save_lora(donor, tmp_path / "tiny_lora", model_name="tiny")
    other = _tiny_dit(seed=1, ffn_hidden_size=96)  # same depth and width, a narrower MLP
    with pytest.raises(LoraMismatchError) as err:
        attach_lora(other, read_lora(tmp_path / "tiny_lora"), "x")
    message = str(err.value)
    assert "was made for a DiT with 2 layers of width 64, MLP 128 (tiny), not for this model's 2 layers of " \
           "width 64, MLP 96" in message and "ffn_hidden_size" in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    # A file without the shapes in its metadata (another tool's) is still checked against the linears.
    weights = tmp_path / "tiny_lora" / ADAPTER_WEIGHTS
    save_file(load_file(str(weights)), str(weights))
    with pytest.raises(LoraMismatchError, match=r"expects videodit_blocks\.layers\.0\.mlp\.linear_fc1 to map "
                                                r"64 to 128 features, this model's maps 64 to 96"):
        attach_lora(other, read_lora(tmp_path / "tiny_lora"), "x")
    assert "lora_A" not in str([n for n, _ in other.named_modules()])  # nothing was injected


# ------------------------------------------------------------------------------------------ the objective
def _latent_groups():
    from magi1.train.data import LatentClips

    gen = torch.Generator().manual_seed(0)
    videos = LatentClips(torch.randn(3, 16, 12, 4, 4, generator=gen), ["a red ball", "a blue square", "two balls"],
                         torch.randn(3, 16, 1, 4, 4, generator=gen))
    images = LatentClips(torch.randn(2, 16, 1, 4, 4, generator=gen), ["a red ball", "two balls"],
                         torch.randn(2, 16, 1, 4, 4, generator=gen))
    return [videos, images]


def _caption_table():
    from magi1.lora.trainer import CaptionTable

    gen = torch.Generator().manual_seed(1)
    table = {}
    for caption in ("a red ball", "a blue square", "two balls"):
        mask = torch.zeros(1, 64, dtype=torch.long)
        mask[:, : 3 + len(caption) % 5] = 1
        table[caption] = (torch.randn(1, 1, 64, 32, generator=gen), mask)
    return CaptionTable(table, 64)


def _lora_trainer(log_dir: Path, steps: int, dropout: float = 0.0):
    from magi1.lora.trainer import MagiObjectiveTrainer, ObjectiveSettings

    from magi1.lora.adapters import LoraSettings, add_lora

    model = _tiny_dit()
    add_lora(model, LoraSettings(rank=2, dropout=dropout), "default")  # B starts at 0, as in real training
    model.enable_gradient_checkpointing()
    config = MagiConfig.from_dict(tiny_config_dict())
    settings = ObjectiveSettings(steps=steps, lr=5e-3, warmup=1, tokens_per_step=64, seed=7)
    return MagiObjectiveTrainer(model, config, _latent_groups(), _caption_table(), settings, device="cpu",
                                log_dir=log_dir)


def test_a_resumed_run_continues_the_same_loss_curve(tmp_path):
    from magi1.lora.trainer import LOSS_CSV, read_loss_csv
    from magi1.train.loop import LoopSettings, run_loop

    whole = tmp_path / "whole"
    run_loop(_lora_trainer(whole, 6), LoopSettings(total_steps=6, progress=False))
    expected = read_loss_csv(whole / LOSS_CSV)

    parted = tmp_path / "parted"
    state = str(parted / "state")
    first = _lora_trainer(parted, 6)
    run_loop(first, LoopSettings(total_steps=3, state_dir=state, progress=False))
    first._log(4, {"loss": 9.0, "grad": 0.0, "lr": 0.0})  # a step logged after the last save, then killed
    outcome = run_loop(_lora_trainer(parted, 6), LoopSettings(total_steps=6, state_dir=state, progress=False))
    assert outcome["resumed_from"] == 3
    resumed = read_loss_csv(parted / LOSS_CSV)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in expected]  # printed to 8 digits: the same curve
    assert len({r["loss"] for r in expected}) == 6


def test_a_run_resumed_in_a_new_process_ends_with_the_same_adapters_under_dropout(tmp_path):
    # Adapter dropout draws from torch's global generator: a resumed process starts it afresh, so without a
    # per-step seed the resumed run drew other dropout masks and ended with other weights.
    from magi1.lora.adapters import lora_state_dict
    from magi1.train.loop import LoopSettings, run_loop

    whole = _lora_trainer(tmp_path / "whole", 4, dropout=0.5)
    run_loop(whole, LoopSettings(total_steps=4, progress=False))
    state = str(tmp_path / "parted" / "state")
    run_loop(_lora_trainer(tmp_path / "parted", 4, dropout=0.5), LoopSettings(total_steps=2, state_dir=state,
                                                                               progress=False))
    torch.manual_seed(12345)  # a new process: the global generator is not where the first one left it
    resumed = _lora_trainer(tmp_path / "parted", 4, dropout=0.5)
    assert run_loop(resumed, LoopSettings(total_steps=4, state_dir=state, progress=False))["resumed_from"] == 2
    expected, got = lora_state_dict(whole.model), lora_state_dict(resumed.model)
    assert sorted(expected) == sorted(got)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ------------------------------------------------------------------------------------------ as a user
def _run_magi1(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "magi1.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_train_lora_then_generate_with_it_from_the_command_line(tiny_model, tmp_path, capsys):
    from magi1.cli import main
    from magi1.io.video import load_video

    data = tmp_path / "clips"
    data.mkdir()
    for index in range(3):
        _write_clip(data, f"clip{index}", 50, f"a red square falls number {index}", seed=index)
    (data / "stray.txt").write_text("no clip for this one")
    out = tmp_path / "my_lora"
    train = ["train", "lora", "--config_file", str(tiny_model), "--data", str(data), "--out", str(out), "--steps",
             "4", "--rank", "2", "--log_every", "2", "--checkpoint_every", "2", "--sample_every", "4",
             "--sample_steps", "2", "--tokens_per_step", "64", "--quiet"]
    done = _run_magi1(*train, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not used: " in done.stdout and "stray.txt: caption with no video or image" in done.stdout
    assert "training memory plan (estimate, cpu)" in done.stdout and "3 encoded" in done.stdout
    assert "LoRA written to" in done.stdout
    assert "Loading weights" not in done.stderr  # --quiet silences transformers' bar too
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert [r.split(",")[0] for r in (out / "loss.csv").read_text().split()[1:]] == ["1", "2", "3", "4"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sample = load_video(out / "samples" / "step_000004_0.mp4", 32, 32, 24, max_frames=None)
    assert sample.shape == (48, 32, 32, 3)

    # The same command again: everything is read from the cache (neither model loads), nothing retrains.
    latents = sorted((out / "cache" / "latents").iterdir())
    stamps = [p.stat().st_mtime_ns for p in latents]
    capsys.readouterr()
    assert main(train) == 0
    second = capsys.readouterr().out
    assert "3 segment latents reused, 0 encoded" in second and "the VAE and T5 were not loaded" in second
    assert "resumed from step 4" in second
    assert "nothing left to train" in second and "final loss nan" not in second  # was "final loss nan"
    assert [p.stat().st_mtime_ns for p in latents] == stamps

    # generate --lora DIR:SCALE: at scale 0 the decoded video is the base model's, frame for frame; fused at 0.7
    # it is another video of the same length.
    def generate(name: str, *lora: str) -> np.ndarray:
        path = tmp_path / name
        assert main(["generate", "--config_file", str(tiny_model), *lora, "--prompt", "a red square falls",
                     "--num_frames", "24", "--steps", "2", "--seed", "3", "--output_path", str(path), "--quiet"]) == 0
        return load_video(path, 32, 32, 24, max_frames=None)

    base = generate("base.mp4")
    assert np.array_equal(generate("scale0.mp4", "--lora", f"{out}:0"), base)
    fused = generate("with_lora.mp4", "--lora", f"{out}:0.7", "--fuse_lora")
    assert fused.shape == base.shape == (24, 32, 32, 3)
    from magi1.run_tags import read_run_settings

    assert read_run_settings(tmp_path / "with_lora.mp4")["lora"] == ["my_lora:0.7"]  # its name, not its path

    # A LoRA made for another model: one sentence, exit code 2, before anything is generated.
    donor = _tiny_dit(ffn_hidden_size=96)
    _trained_looking_lora(donor)
    from magi1.lora.adapters import save_lora

    save_lora(donor, tmp_path / "other_lora", model_name="another model")
    capsys.readouterr()
    assert main(["generate", "--config_file", str(tiny_model), "--lora", str(tmp_path / "other_lora"),
                 "--output_path", str(tmp_path / "never.mp4")]) == 2
    error = capsys.readouterr().err
    assert "was made for a DiT with 2 layers of width 64, MLP 96 (another model)" in error
    assert not (tmp_path / "never.mp4").exists()

    # DIR:SCALE typed wrong: what is wrong with the spec, not "folder 'my_lora:abc' does not exist".
    for spec, expected in ((f"{out}:abc", "the scale after the ':' must be a finite number, got 'abc'"),
                           (f"{out}:nan", "must be a finite number, got 'nan'"),
                           (":0.5", "names no folder before the ':'")):
        done = _run_magi1("generate", "--config_file", str(tiny_model), "--lora", spec, "--output_path",
                          str(tmp_path / "never.mp4"), cwd=tmp_path)
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and not (tmp_path / "never.mp4").exists()


def test_train_lora_refuses_an_out_folder_it_would_spoil_before_any_work(tiny_model, tmp_path):
    data = tmp_path / "clips"
    data.mkdir()
    _write_clip(data, "clip0", 50, "a red square falls", seed=0)
    vae_folder = tiny_model.parent / "vae"
    before = sorted(p.name for p in vae_folder.iterdir())

    def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
        return _run_magi1("train", "lora", "--config_file", str(tiny_model), "--data", str(data), "--out", str(out),
                          "--steps", "2", "--quiet", *extra, cwd=tmp_path)

    # A model's folder (--full would overwrite its config.json), the clips folder itself (the next scan would
    # read the cache and logs as clips), a folder of the clips: refused in one sentence, nothing written.
    spoiled = ((vae_folder, "already holds files that are not a `magi1 train lora` run (config.json"),
               (data, "is inside --data"), (data / "lora", "is inside --data"))
    # Numbers that only a sample would have used, and thread counts, are refused by argparse too.
    numbers = (("--sample_frames", "0"), ("--sample_steps", "0"), ("--threads", "0"), ("--threads", "-2"))
    runs = [(out, "--full") for out, _ in spoiled] + [(tmp_path / "lora", "--cache_dir", str(data / "cache"))]
    runs += [(tmp_path / "lora", flag, value) for flag, value in numbers]
    with ThreadPoolExecutor(2) as pool:  # independent refusals: two at a time keeps the suite short
        results = list(pool.map(lambda run: train(*run), runs))
    for (_, expected), done in zip(spoiled, results):
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in vae_folder.iterdir()) == before
    assert sorted(p.name for p in data.iterdir()) == ["clip0.mp4", "clip0.txt"]
    done = results[len(spoiled)]
    assert done.returncode == 2 and "--cache_dir" in done.stderr and "is inside --data" in done.stderr
    for (flag, _), done in zip(numbers, results[len(spoiled) + 1:]):
        assert done.returncode == 2 and f"argument {flag}: must be at least 1" in done.stderr, done.stderr
    assert not (tmp_path / "lora").exists()


def test_train_lora_trains_on_images_beside_videos_from_the_command_line(tiny_model, tmp_path):
    # An image's latent was written under two names of one tensor, which safetensors refuses: every folder with
    # an image ended in a traceback while the cache was built.
    from PIL import Image

    data = tmp_path / "clips"
    data.mkdir()
    _write_clip(data, "clip0", 30, "a red square falls")
    Image.fromarray(_moving_square(1, size=48)[0]).save(data / "still.png")
    (data / "still.txt").write_text("a red square rests")
    done = _run_magi1("train", "lora", "--config_file", str(tiny_model), "--data", str(data), "--out",
                      str(tmp_path / "lora"), "--steps", "2", "--rank", "2", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 videos and 1 images with captions" in done.stdout and "2 encoded" in done.stdout
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()


def test_train_lora_reads_a_hugging_face_videofolder_from_the_command_line(tiny_model, tmp_path):
    data = tmp_path / "videofolder"
    data.mkdir()
    for index in range(2):
        _write_clip(data, f"clip{index}", 30, None, seed=index)
    (data / "metadata.csv").write_text("file_name,text\nclip0.mp4,a red square falls\nclip1.mp4,a red square rests\n")
    done = _run_magi1("train", "lora", "--config_file", str(tiny_model), "--data", str(data), "--out",
                      str(tmp_path / "lora"), "--plan_only", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 videos and 0 images with captions" in done.stdout and "not used" not in done.stdout
    report = (tmp_path / "lora" / "dataset_report.txt").read_text()
    assert "a red square falls" in report and "a red square rests" in report


def test_hue_fraction_counts_the_new_colour_and_none_of_the_demo_palette():
    from magi1.lora.synthetic_concept import NEW_COLOURS, concept_clip, hue_fraction
    from magi1.train.synthetic import BACKGROUNDS, COLOURS

    for name, rgb in COLOURS.items():
        assert hue_fraction(np.array([[rgb]], np.uint8), "cyan") == 0.0, name
        assert hue_fraction(np.array([[rgb]], np.uint8), name) == 1.0
    assert all(hue_fraction(np.array([[bg]], np.uint8), "cyan") == 0.0 for bg in BACKGROUNDS)
    lighter = tuple(int(c + (255 - c) * 0.35) for c in NEW_COLOURS["cyan"])  # blurred toward a light background
    assert hue_fraction(np.array([[lighter]], np.uint8), "cyan") == 1.0
    frames, caption = concept_clip(500_000)
    assert "cyan" in caption and 0.0 < hue_fraction(frames, "cyan") < 0.5


def test_unknown_adapter_targets_are_refused_before_any_work(tiny_model, tmp_path):
    # `plan` used to plan "0.0 M params" for them, and `train lora` refused them only after encoding the cache.
    plan = _run_magi1("plan", "--train", "lora", "--lora_targets", "bogus", cwd=tmp_path)
    assert plan.returncode == 2 and "no linear of the DiT is named bogus" in plan.stderr, plan.stderr
    assert "linear_fc1" in plan.stderr and "training memory plan" not in plan.stdout
    data = tmp_path / "clips"
    data.mkdir()
    _write_clip(data, "clip0", 50, "a red square falls", seed=0)
    train = _run_magi1("train", "lora", "--config_file", str(tiny_model), "--data", str(data), "--out",
                       str(tmp_path / "lora"), "--target_modules", "attn,bogus", "--steps", "2", cwd=tmp_path)
    assert train.returncode == 2 and "no linear of the DiT is named bogus" in train.stderr, train.stderr
    assert not (tmp_path / "lora" / "cache").exists()


def test_train_lora_packs_several_clips_into_one_step_from_the_command_line(tiny_model, tmp_path):
    # A --tokens_per_step that holds more than one clip packs them at irregular token starts (the gathered
    # attention path), under the bf16 autocast training uses; it crashed on a float32 / bf16 index_put.
    data = tmp_path / "clips"
    data.mkdir()
    for index in range(3):
        _write_clip(data, f"clip{index}", 24, f"a red square falls number {index}", seed=index)
    out = tmp_path / "packed"
    done = _run_magi1("train", "lora", "--config_file", str(tiny_model), "--data", str(data), "--out", str(out),
                      "--steps", "2", "--rank", "2", "--sample_every", "0", "--tokens_per_step", "4096", "--quiet",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "adapter_model.safetensors").is_file()
    losses = [float(r.split(",")[1]) for r in (out / "loss.csv").read_text().split()[1:]]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_lora_specs_typed_wrong_are_refused_by_the_spec_parser_and_load_lora_words_its_own(tiny_model, tmp_path):
    from magi1.lora.adapters import save_lora
    from magi1.lora.pipeline_api import parse_lora_spec
    from magi1.pipeline import MagiPipeline

    donor = _tiny_dit()
    _trained_looking_lora(donor)
    folder = tmp_path / "my_lora"
    save_lora(donor, folder, model_name="tiny")
    assert parse_lora_spec(f"{folder}:0.5") == (str(folder), 0.5)
    assert parse_lora_spec(str(folder)) == (str(folder), 1.0)
    for spec, expected in ((f"{folder}:abc", "the scale after the ':' must be a finite number, got 'abc'"),
                           (f"{folder}:nan", "must be a finite number, got 'nan'"),
                           (":0.5", "names no folder before the ':'"),
                           (f"{folder}:0.5:0.5", f"gives two scales: write one, e.g. {folder}:0.5")):
        with pytest.raises(InputError, match=expected.replace("(", r"\(")):
            parse_lora_spec(spec)
    done = _run_magi1("generate", "--config_file", str(tiny_model), "--lora", f"{folder}:0.5:0.5",
                      "--output_path", str(tmp_path / "never.mp4"), cwd=tmp_path)
    assert done.returncode == 2 and "gives two scales" in done.stderr and "Traceback" not in done.stderr
    # load_lora takes its scale as scale=: no talk of a scale after a ':'
    pipe = MagiPipeline.from_pretrained(str(tiny_model), device="cpu")
    with pytest.raises(InputError) as err:
        pipe.load_lora(f"{folder}:abc")
    assert str(err.value) == f"LoRA folder {folder}:abc does not exist"
    with pytest.raises(InputError, match=r"load_lora takes the scale as scale=0\.8"):
        pipe.load_lora(f"{folder}:0.8")
