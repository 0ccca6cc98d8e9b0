"""What made a video, written into its mp4: the settings of a `magi1 generate` run (or a server job, with the
server's model id as its config) as container tags.

A video found later says how to make it again: `ffprobe out.mp4` (or any player's media info) shows the prompt
as `description` and the run's settings as JSON in `comment`, under the key `magi1_run`, beside the
enhanced captions (`magi1`, see `prompting.prompts`) when the run had them:

    comment = {"magi1_run": {"magi1": "0.1.0", "config": "demo", "mode": "t2v", "prompt": "a red ball bounces",
                             "seed": 0, "steps": 32, "num_frames": 96, "width": 64, "height": 64, "fps": 24}}

Only what the run was given in words is kept: the config's name (a preset, or the JSON file's name) and the
names of LoRA folders, never a full path of the user's machine. The tags are the same on every run of the same
settings, so a resumed run still writes the bytes of an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

RUN_TAG = "magi1_run"


def run_settings(config, *, config_name: str, mode: str, prompt: str, chunk_prompts: Mapping[int, str] | None,
                 loras: list[str] | None = None) -> dict:
    """The settings of one run (config: the effective MagiConfig, after every override)."""
    from . import __version__

    r = config.runtime_config
    settings = {"magi1": __version__, "config": Path(config_name).name, "mode": mode}
    if chunk_prompts:
        settings["chunk_prompts"] = {str(k): v for k, v in sorted(chunk_prompts.items())}
    else:
        settings["prompt"] = prompt
    settings.update(seed=r.seed, steps=r.num_steps, num_frames=r.num_frames, width=r.video_size_w,
                    height=r.video_size_h, fps=r.fps)
    if loras:
        settings["lora"] = [_lora_name(spec) for spec in loras]
    return settings


def _lora_name(spec: str) -> str:
    """'/data/loras/cyan:0.8' -> 'cyan:0.8' (the folder's name and the scale)."""
    from .lora.pipeline_api import parse_lora_spec

    folder, scale = parse_lora_spec(spec)
    return f"{Path(folder).name}:{scale:g}"


def with_run_settings(tags: Mapping[str, str] | None, settings: dict) -> dict[str, str]:
    """Container tags with the run's settings added to `comment` (kept as JSON beside what it already holds)."""
    tags = dict(tags or {})
    comment = json.loads(tags["comment"]) if tags.get("comment") else {}
    comment[RUN_TAG] = settings
    tags["comment"] = json.dumps(comment, ensure_ascii=False)
    tags.setdefault("description", settings.get("prompt") or next(iter(settings.get("chunk_prompts", {}).values()), ""))
    return tags


def read_run_settings(path: str | Path) -> dict | None:
    """The settings a `magi1 generate` run recorded in its mp4, or None when it holds none."""
    import av

    with av.open(str(path)) as container:
        comment = container.metadata.get("comment")
    try:
        return json.loads(comment)[RUN_TAG] if comment else None
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


# The flag of `magi1 generate` that sets each recorded setting (for saying what a resumed run changed).
SETTING_FLAGS = {"config": "--config_file", "mode": "--mode", "prompt": "--prompt", "chunk_prompts": "--chunk_prompt",
                 "seed": "--seed", "steps": "--steps", "num_frames": "--num_frames", "width": "--width",
                 "height": "--height", "fps": "--set runtime_config.fps", "lora": "--lora"}


def changed_settings(recorded: Mapping, wanted: Mapping, *, skip: tuple[str, ...] = ()) -> list[str]:
    """'--steps 16 (now 8)' for each setting a run records that differs between the two (magi1's version aside)."""
    changes = []
    for key, flag in SETTING_FLAGS.items():
        if key in skip or recorded.get(key) == wanted.get(key):
            continue
        was, now = recorded.get(key), wanted.get(key)
        changes.append(f"{flag} {_shown(was)} (now {_shown(now)})")
    return changes


def _shown(value) -> str:
    if value is None:
        return "not given"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
