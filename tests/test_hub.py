"""Official weights from the hub: exact folders, a fake local cache laid out as huggingface_hub lays it out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fake_hub import add_to_hub_cache, fake_special_tokens, tiny_official_repo_files
from magi1.errors import MissingWeightsError
from magi1.hub import HubVariant, resolve_hub_uri

REPO = "sand-ai/MAGI-1"


def test_each_variant_asks_for_exactly_its_folders():
    assert HubVariant("4.5B_distill").allow_patterns == [
        "ckpt/magi/4.5B_distill/inference_weight.distill/*", "ckpt/vae/*", "ckpt/t5/t5-v1_1-xxl/*"]
    assert HubVariant("24B_distill_quant").weight_folder == "ckpt/magi/24B_distill_quant/inference_weight.fp8.distill"
    assert HubVariant("4.5B_base").weight_folder == "ckpt/magi/4.5B_base/inference_weight"
    with pytest.raises(ValueError, match="did you mean '4.5B_base'"):
        HubVariant("4.5b_base")


@pytest.fixture()
def fake_cache(tiny_model, tmp_path, monkeypatch):
    """The tiny base model as variant 4.5B_base of sand-ai/MAGI-1 in an offline Hugging Face cache."""
    import huggingface_hub.constants

    tokens = fake_special_tokens(tmp_path / "special_tokens.npz", channels=32)
    snapshot = add_to_hub_cache(tmp_path / "hub", REPO, tiny_official_repo_files(tiny_model.parent, "4.5B_base", tokens))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return snapshot


def test_from_pretrained_offline_resolves_the_right_folders_and_generates(fake_cache, tiny_model):
    from magi1 import MagiPipeline

    pipe = MagiPipeline.from_pretrained(REPO, variant="4.5B_base", config=str(tiny_model), device="cpu")
    r = pipe.config.runtime_config
    assert r.load == str(fake_cache / "ckpt/magi/4.5B_base")
    assert (r.vae_pretrained, r.t5_pretrained) == (str(fake_cache / "ckpt/vae"), str(fake_cache / "ckpt/t5"))
    assert pipe.special_tokens is not None  # found beside the weights, as the official run scripts use them
    latents = pipe("a red ball bounces", num_frames=24, output_type="latent").frames
    assert latents.shape == (1, 16, 6, 4, 4) and torch.isfinite(latents).all()
    # The preset points at the same cache: no path into the installed package.
    from magi1.config import load_config

    preset = load_config("4.5B_base")
    assert preset.resolve_path(preset.runtime_config.load) == str(fake_cache / "ckpt/magi/4.5B_base")


def test_a_missing_or_cut_off_file_names_what_to_download(fake_cache, tiny_model):
    from magi1 import MagiPipeline

    (fake_cache / "ckpt/vae/diffusion_pytorch_model.safetensors").unlink()
    weights = fake_cache / "ckpt/magi/4.5B_base/inference_weight/model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(MissingWeightsError) as err:
        MagiPipeline.from_pretrained(REPO, variant="4.5B_base", config=str(tiny_model), device="cpu")
    message = str(err.value)
    assert "ckpt/vae/diffusion_pytorch_model.safetensors is missing" in message
    assert "inference_weight/model.safetensors is damaged" in message and "truncated" in message
    assert "magi1 download 4.5B_base" in message
    with pytest.raises(MissingWeightsError, match="magi1 download 24B_distill"):
        resolve_hub_uri("hf://sand-ai/MAGI-1/ckpt/magi/24B_distill")


def test_sizes_are_checked_against_the_cached_tree_listing(fake_cache, tiny_model, tmp_path):
    import huggingface_hub

    from fake_hub import add_tree_listing
    from magi1.hub import locate

    if not hasattr(huggingface_hub, "get_cached_repo_tree"):
        pytest.skip("this huggingface_hub keeps no tree listing beside its snapshots")
    files = tiny_official_repo_files(tiny_model.parent, "4.5B_base", fake_cache / "example/assets/special_tokens.npz")
    add_tree_listing(tmp_path / "hub", REPO, files)
    assert locate("4.5B_base") == fake_cache
    config = fake_cache / "ckpt/vae/config.json"
    text = config.read_text()
    config.unlink()
    config.write_text(text + " ")  # one byte more than the hub lists (a safetensors check would not see it)
    with pytest.raises(MissingWeightsError, match=r"ckpt/vae/config.json has \d+ bytes, the hub lists \d+"):
        locate("4.5B_base")


def test_download_command_checks_the_cache_offline_and_a_dir_gets_a_config(fake_cache, tmp_path, capsys):
    import json
    import shutil

    from magi1.cli import main

    folder = tmp_path / "magi"
    shutil.copytree(fake_cache, folder)  # symlinks followed: plain files, as `--dir` downloads leave them
    assert main(["download", "4.5B_base"]) == 0  # offline: finds and checks the cached snapshot
    assert str(fake_cache) in capsys.readouterr().out
    (fake_cache / "ckpt/t5/t5-v1_1-xxl/config.json").unlink()
    assert main(["download", "4.5B_base"]) == 2
    err = capsys.readouterr().err
    assert "ckpt/t5/t5-v1_1-xxl/config.json is missing" in err and "magi1 download 4.5B_base" in err

    # --dir: a plain folder in the repository's layout, checked, with a ready config JSON written beside it.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "magi1.cli", "download", "4.5B_base", "--dir", str(folder)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"--config_file {folder / '4.5B_base.json'}" in done.stdout
    written = json.loads((folder / "4.5B_base.json").read_text())["runtime_config"]
    assert (written["load"], written["vae_pretrained"], written["t5_pretrained"]) == (
        "./ckpt/magi/4.5B_base", "./ckpt/vae", "./ckpt/t5")


def test_download_fetches_exactly_the_needed_folders_and_refetches_a_short_file(monkeypatch, tmp_path):
    import huggingface_hub

    from magi1 import hub

    calls = {}
    (tmp_path / "ckpt/vae").mkdir(parents=True)
    (tmp_path / "ckpt/vae/config.json").write_text("{}")

    def fake_snapshot_download(repo_id, **kwargs):
        calls["snapshot"] = (repo_id, kwargs["allow_patterns"])
        return str(tmp_path)

    class FakeApi:
        def __init__(self, **_):
            pass

        def list_repo_tree(self, repo_id, path_in_repo, recursive, revision):
            entry = type("RepoFile", (), {"path": f"{path_in_repo}/config.json", "size": 99})
            return [entry] if path_in_repo == "ckpt/vae" else []

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, path, **kw: calls.setdefault("refetched", []).append((path, kw["force_download"])))
    monkeypatch.setattr(hub, "fetch_special_tokens", lambda target: calls.setdefault("tokens", target))
    with pytest.raises(MissingWeightsError):  # the fakes fetch nothing real, so the final check fails
        hub.download("4.5B_distill")
    assert calls["snapshot"] == (REPO, HubVariant("4.5B_distill").allow_patterns)
    assert calls["refetched"] == [("ckpt/vae/config.json", True)]  # 2 bytes where the hub lists 99
    assert calls["tokens"] == tmp_path / "example/assets/special_tokens.npz"


def test_download_without_a_reachable_hub_says_so_in_one_line(tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on: the connection is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run([sys.executable, "-m", "magi1.cli", "download", "4.5B_distill", "--dir", str(tmp_path / "w")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"magi1 download: error: could not fetch 4.5B_distill from {REPO}: cannot reach the "
                            f"Hugging Face Hub at http://127.0.0.1:{port} (")
    assert "HF_ENDPOINT" in error and "HF_HUB_OFFLINE=1" in error and "Traceback" not in done.stderr
