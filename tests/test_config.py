"""magi1.config: the six official presets, strict reading, validation and overrides."""

import copy
import json

import pytest

from magi1.config import ConfigError, MagiConfig, load_config, preset_path

OFFICIAL_PRESETS = ["4.5B_base", "4.5B_distill", "4.5B_distill_quant", "24B_base", "24B_distill", "24B_distill_quant"]


def preset_dict(name="4.5B_base"):
    return json.loads(preset_path(name).read_text())


# ----------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", OFFICIAL_PRESETS)
def test_preset_loads_and_round_trips(name, tmp_path):
    config = load_config(name)
    assert config.to_dict() == preset_dict(name)  # read unchanged: every value as in the official JSON
    assert MagiConfig.from_dict(config.to_dict()) == config
    config.to_json(tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == config
    assert load_config(str(tmp_path / "c.json")) == config


def test_preset_variants_differ_as_documented():
    base, distill, quant = (load_config(f"24B_{v}") for v in ("base", "distill", "distill_quant"))
    assert (base.runtime_config.cfg_number, distill.runtime_config.cfg_number, quant.runtime_config.cfg_number) == (3, 1, 1)
    assert (base.runtime_config.num_steps, distill.runtime_config.num_steps, quant.runtime_config.num_steps) == (32, 16, 16)
    assert (distill.engine_config.distill, distill.engine_config.fp8_quant) == (True, False)
    assert (quant.engine_config.distill, quant.engine_config.fp8_quant) == (True, True)
    small = load_config("4.5B_base").model_config
    assert (small.num_layers, small.hidden_size, small.rope_dim, small.cond_hidden_size) == (34, 3072, 128, 768)
    assert base.model_config.half_channel_vae and base.model_config.latent_channels == 16


def test_relative_paths_resolve_against_the_json_folder(tmp_path):
    data = preset_dict()
    data["runtime_config"]["load"] = "./downloads/4.5B_base"  # as in the official example JSONs
    (tmp_path / "c.json").write_text(json.dumps(data))
    config = load_config(tmp_path / "c.json")
    assert config.resolve_path(config.runtime_config.load) == str(tmp_path / "downloads" / "4.5B_base")
    assert config.resolve_path(None) is None


@pytest.mark.parametrize("name", OFFICIAL_PRESETS)
def test_presets_point_at_the_hub_cache_not_into_the_package(name):
    r = preset_dict(name)["runtime_config"]
    assert r["load"] == f"hf://sand-ai/MAGI-1/ckpt/magi/{name}"
    assert (r["vae_pretrained"], r["t5_pretrained"]) == ("hf://sand-ai/MAGI-1/ckpt/vae", "hf://sand-ai/MAGI-1/ckpt/t5")


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean '4.5B_base'"):
        load_config("4.5b_base")


# ----------------------------------------------------------------------------------------- strict reading
def test_unknown_key_names_it_and_the_closest_valid_key():
    data = preset_dict()
    data["model_config"]["hiden_size"] = data["model_config"].pop("hidden_size")
    with pytest.raises(ConfigError, match=r"unknown key 'hiden_size' in model_config; did you mean 'hidden_size'\?"):
        MagiConfig.from_dict(data)
    data = preset_dict()
    data["runtime_cfg"] = data.pop("runtime_config")
    with pytest.raises(ConfigError, match="'runtime_cfg'.*'runtime_config'"):
        MagiConfig.from_dict(data)


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("model_config", "hidden_size", "big", "model_config.hidden_size must be an integer"),
        ("model_config", "num_layers", 3.5, "must be an integer"),
        ("model_config", "gated_linear_unit", 1, "must be true or false"),
        ("runtime_config", "clean_t", "0.9", "runtime_config.clean_t must be a number"),
        ("runtime_config", "cfg_t_range", "0,1", "must be a list of numbers"),
        ("runtime_config", "text_scales", [1, "a", 2, 3, 4], "must be a list of numbers"),
        ("engine_config", "cp_strategy", 3, "must be a string"),
        ("model_config", "params_dtype", "torch.int8", "params_dtype"),
    ],
)
def test_wrong_types_are_reported_with_the_field(section, key, value, expected):
    data = preset_dict()
    data[section][key] = value
    with pytest.raises(ConfigError, match=expected):
        MagiConfig.from_dict(data)


def test_integral_floats_are_accepted_for_int_fields():
    data = preset_dict()
    data["runtime_config"]["video_size_h"] = 720.0
    assert MagiConfig.from_dict(data).runtime_config.video_size_h == 720


def test_missing_fields_and_sections():
    data = preset_dict()
    del data["runtime_config"]["window_size"]
    with pytest.raises(ConfigError, match="runtime_config is missing field.*window_size"):
        MagiConfig.from_dict(data)
    assert MagiConfig.from_dict(data, strict=False).runtime_config.window_size == 4  # default fills in
    data = preset_dict()
    del data["engine_config"]
    with pytest.raises(ConfigError, match="missing the section.*engine_config"):
        MagiConfig.from_dict(data)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        load_config(bad)
    data = preset_dict()
    data["model_config"]["hidden_sizee"] = 1
    bad.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="bad.json: unknown key 'hidden_sizee'"):
        load_config(bad)


# ----------------------------------------------------------------------------------------- impossible values
@pytest.mark.parametrize(
    "preset, overrides, expected",
    [
        ("4.5B_base", {"video_size_h": 712}, "video_size_h must be a positive multiple of 16"),
        ("4.5B_base", {"video_size_w": 0}, "video_size_w must be a positive multiple of 16"),
        ("4.5B_base", {"cfg_number": 1}, "cfg_number must be 3 for a base"),
        ("4.5B_distill", {"cfg_number": 3}, "cfg_number must be 1 when distill or fp8_quant"),
        ("4.5B_base", {"fp8_quant": True}, "cfg_number must be 1 when distill or fp8_quant"),
        ("4.5B_base", {"num_steps": 30}, r"num_steps \(30\) must be divisible by window_size \(4\)"),
        ("4.5B_base", {"window_size": 0}, "window_size must be positive"),
        ("4.5B_base", {"num_attention_heads": 7}, "must be a multiple of"),
        ("24B_base", {"pp_size": 5}, r"num_layers \(48\) must be divisible by pp_size \(5\)"),
        ("4.5B_base", {"cp_strategy": "ring"}, "cp_strategy must be"),
        ("4.5B_base", {"text_scales": [7.5]}, "one entry per cfg_t_range edge"),
    ],
)
def test_impossible_values(preset, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(preset).replace(**overrides)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config("4.5B_base").replace(video_size_h=700, num_steps=30)
    assert "video_size_h" in str(info.value) and "num_steps (30)" in str(info.value)


def test_window_larger_than_chunk_count():
    config = load_config("4.5B_base")
    with pytest.raises(ConfigError, match=r"window_size \(4\) is larger than the number of chunks \(2\)"):
        config.check_window(2)
    config.check_window(4)
    config.check_window(9)


# ----------------------------------------------------------------------------------------- overrides
def test_replace_from_code_returns_a_validated_copy():
    config = load_config("4.5B_base")
    before = copy.deepcopy(config)
    changed = config.replace(seed=7, **{"runtime_config.video_size_w": 1280, "engine_config.kv_offload": False})
    assert config == before  # the original is untouched
    assert (changed.runtime_config.seed, changed.runtime_config.video_size_w) == (7, 1280)
    assert changed.engine_config.kv_offload is False
    assert changed.source_dir == config.source_dir
    with pytest.raises(ConfigError, match="'num_stpes'.*'num_steps'"):
        config.replace(num_stpes=8)
    with pytest.raises(ConfigError, match="unknown key 'seeed' in runtime_config"):
        config.replace(**{"runtime_config.seeed": 1})
    with pytest.raises(ConfigError, match="unknown key 'runtime'"):
        config.replace(**{"runtime.seed": 1})


def test_command_line_overrides():
    config = load_config("4.5B_distill").with_overrides(
        ["runtime_config.num_steps=16", "seed=3", "t5_device=cpu", "cfg_t_range=[0, 0.5]",
         "prev_chunk_scales=[1, 1]", "text_scales=[2.0, 0]", "kv_offload=false", "load=null"]
    )
    r = config.runtime_config
    assert (r.num_steps, r.seed, r.t5_device, r.cfg_t_range, r.load) == (16, 3, "cpu", [0, 0.5], None)
    assert config.engine_config.kv_offload is False
    with pytest.raises(ConfigError, match="must look like key=value"):
        config.with_overrides(["seed"])
    with pytest.raises(ConfigError, match="must be an integer"):
        config.with_overrides(["seed=abc"])
    with pytest.raises(ConfigError, match="must be divisible by window_size"):
        config.with_overrides(["num_steps=6"])


def test_an_unknown_set_key_names_the_closest_keys_and_where_the_list_is():
    import subprocess
    import sys

    def generate_with(override: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "magi1.cli", "generate", "--config_file", "demo", "--prompt",
                               "a cat", "--set", override, "--output_path", "/nonexistent/never.mp4"],
                              capture_output=True, text=True, timeout=120)

    for override, expected in (
            ("num_step=3", "unknown key 'num_step' in config (closest: 'num_steps', 'num_layers', 'num_frames'; "
                           "`magi1 generate --set help` lists every key)"),
            ("foo=1", "unknown key 'foo' in config (`magi1 generate --set help` lists every key)"),
            ("=1", "override '=1' names no key: write KEY=VALUE, e.g. runtime_config.num_steps=8 "
                   "(`--set help` lists the keys)")):
        run = generate_with(override)
        assert run.returncode == 2 and run.stderr.splitlines() == [f"magi1 generate: error: {expected}"], run.stderr
    listed = generate_with("help")
    assert listed.returncode == 2 and "engine_config: distributed_backend, distributed_timeout_minutes, pp_size" \
        in listed.stderr and len(listed.stderr.splitlines()) == 1
