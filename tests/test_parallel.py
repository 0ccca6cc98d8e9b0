"""magi1.parallel without launching processes: layout checks, shards, stages, the one-process fallbacks.

The multi-process comparisons are in test_parallel_multiproc.py.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest
import torch

from magi1.config import load_config
from magi1.models.dit import shard_chunk_ranges
from magi1.parallel import (
    LayoutError,
    ParallelContext,
    broadcast_text,
    check_layout,
    is_output_rank,
    parallelize_dit,
    setup_from_env,
    share_from_source,
    split_sizes,
)
from magi1.parallel.context import overlap_groups
from magi1.parallel.pipeline_stages import keep_stage_layers
from magi1.parallel.ulysses import heads_for_rank, shard_bounds

sys.path.insert(0, str(Path(__file__).resolve().parent / "parallel_workers"))
import cases  # noqa: E402

torch.set_num_threads(1)


def fake_context(cp: int = 1, pp: int = 1, rank: int = 0, overlap: int = 1) -> ParallelContext:
    """A context that is never used to communicate (only grid arithmetic and one-process paths)."""
    return ParallelContext(rank=rank, world_size=cp * pp, local_rank=rank, cp_size=cp, pp_size=pp,
                           cp_strategy="cp_ulysses" if cp > 1 else "none", ulysses_overlap_degree=overlap,
                           device=torch.device("cpu"), backend="gloo", timeout=datetime.timedelta(seconds=5))


# ------------------------------------------------------------------------------------------ shards
def test_split_sizes_follow_the_official_rule():
    assert split_sizes(10, 4) == [3, 3, 2, 2]
    assert split_sizes(8, 4) == [2, 2, 2, 2]
    assert split_sizes(5, 1) == [5]
    assert [shard_bounds(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_cross_attention_query_ranges_partition_every_chunk(cp):
    batch, chunks, ctn = 2, 3, 5
    seq = chunks * ctn
    full = shard_chunk_ranges(batch, chunks, ctn, 0, seq)
    assert full == [(i * ctn, (i + 1) * ctn) for i in range(batch * chunks)]
    covered = [0] * (batch * chunks)
    for rank in range(cp):
        lo, hi = shard_bounds(seq, cp, rank)
        ranges = shard_chunk_ranges(batch, chunks, ctn, lo, hi)
        local_tokens = 0
        for row, (start, end) in enumerate(ranges):
            b, r = divmod(row, chunks)
            assert b * (hi - lo) <= start <= end <= (b + 1) * (hi - lo)
            # every token of the range belongs to chunk r
            for token in range(start - b * (hi - lo) + lo, end - b * (hi - lo) + lo):
                assert token // ctn == r
            covered[row] += end - start
            local_tokens += end - start
        assert local_tokens == batch * (hi - lo)
    assert covered == [ctn] * (batch * chunks)


def test_kv_groups_are_repeated_when_cp_exceeds_them():
    kv = torch.arange(2, dtype=torch.float32).view(1, 1, 2, 1).expand(1, 3, 2, 4)
    assert heads_for_rank(kv, 2) is kv
    repeated = heads_for_rank(kv, 4)
    assert repeated[0, 0, :, 0].tolist() == [0, 0, 1, 1]  # rank c gets group c // (cp / ng)


def test_overlap_groups():
    assert overlap_groups(6, 1, 1) == 1
    assert overlap_groups(6, 1, 3) == 3
    assert overlap_groups(6, 2, -1) == 2
    with pytest.raises(ValueError):
        overlap_groups(6, 1, 4)
    with pytest.raises(ValueError):
        overlap_groups(6, 3, 4)  # 4 does not divide 6 heads
    with pytest.raises(ValueError, match="cut across KV heads"):
        overlap_groups(6, 2, 3)  # groups of 2 query heads over KV heads of 3
    assert overlap_groups(8, 4, 2) == 2


# ------------------------------------------------------------------------------------------ layout
def test_official_layouts_are_possible():
    check_layout(load_config("24B_base").model_config, load_config("24B_base").engine_config, 8)
    check_layout(load_config("4.5B_base").model_config, load_config("4.5B_base").engine_config, 1)
    config = load_config("24B_base")
    layout = config.engine_config.__class__(**{**vars(config.engine_config), "cp_size": 4, "pp_size": 2})
    check_layout(config.model_config, layout, 8)
    layout16 = config.engine_config.__class__(**{**vars(config.engine_config), "cp_size": 16})
    check_layout(config.model_config, layout16, 16)  # 8 KV groups, cp 16: each rank gets a repeated group


@pytest.mark.parametrize(
    "cp, pp, world, strategy, overlap, message",
    [
        (2, 2, 2, "cp_ulysses", 1, "cp_size (2) x pp_size (2) = 4 processes, but WORLD_SIZE is 2"),
        (2, 1, 1, "cp_ulysses", 1, "torchrun --nproc_per_node 2"),
        (3, 1, 3, "cp_ulysses", 1, "num_attention_heads (4) is not divisible by engine_config.cp_size (3)"),
        (1, 3, 3, "none", 1, "num_layers (2) is not divisible by engine_config.pp_size (3)"),
        (2, 1, 2, "none", 1, "cp_strategy is 'none'"),
        (2, 1, 2, "ring", 1, "cp_strategy must be one of"),
        (2, 1, 2, "cp_ulysses", 3, "ulysses_overlap_degree"),
    ],
)
def test_impossible_layouts_fail_with_a_clear_message(cp, pp, world, strategy, overlap, message):
    config = cases.make_config()
    layout = config.engine_config.__class__(**{**vars(config.engine_config), "cp_size": cp, "pp_size": pp,
                                               "cp_strategy": strategy, "ulysses_overlap_degree": overlap})
    with pytest.raises(LayoutError, match="impossible parallel layout") as err:
        check_layout(config.model_config, layout, world)
    assert message in str(err.value)


def test_kv_groups_must_divide_or_be_divided_by_cp():
    config = load_config("24B_base")  # 48 heads, 8 KV groups
    layout = config.engine_config.__class__(**{**vars(config.engine_config), "cp_size": 12})
    with pytest.raises(LayoutError, match=r"num_query_groups \(8 KV heads\) and engine_config.cp_size \(12\)"):
        check_layout(config.model_config, layout, 12)


def test_setup_from_env_alone(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert setup_from_env(cases.make_config()) is None
    with pytest.raises(LayoutError, match="runs alone"):
        setup_from_env(cases.make_config(cp=2))
    assert setup_from_env(cases.make_config(cp=2), single_process_fallback=True) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(LayoutError, match="MASTER_ADDR"):
        setup_from_env(cases.make_config(cp=2))


# ------------------------------------------------------------------------------------------ stages
def test_keep_stage_layers_cuts_a_whole_model_and_checks_a_loaded_stage():
    config = cases.make_config(pp=2)
    model = cases.tiny_dit(config)
    keep_stage_layers(model, fake_context(pp=2, rank=1))
    assert [layer.layer_number for layer in model.videodit_blocks.layers] == [1]
    keep_stage_layers(model, fake_context(pp=2, rank=1))  # already this stage: unchanged
    with pytest.raises(LayoutError, match="pp_rank=0"):
        keep_stage_layers(model, fake_context(pp=2, rank=0))


def test_one_process_plan_equals_the_plain_model():
    """The model's parallel hooks (token slice, stage runner) with cp = pp = 1 change nothing."""
    config = cases.make_config()
    plain = cases.dit_forward(cases.tiny_dit(config))
    model = parallelize_dit(cases.tiny_dit(config), fake_context())
    assert model.parallel is not None and model.parallel.attention_core is None
    planned = cases.dit_forward(model)
    for key in plain:
        torch.testing.assert_close(planned[key], plain[key], rtol=0, atol=0)
    with pytest.raises(LayoutError, match="already parallelized"):
        parallelize_dit(model, fake_context())


def test_one_process_fallbacks():
    model = cases.tiny_dit(cases.make_config())
    assert parallelize_dit(model, None) is model and model.parallel is None
    assert is_output_rank(None)
    assert not is_output_rank(fake_context(cp=2, rank=1)) and is_output_rank(fake_context(cp=2, rank=0))
    payload = {"seed": 3, "emb": [torch.ones(2)]}
    assert share_from_source(None, payload) is payload
    emb, mask = torch.zeros(1, 1, 4, 2), torch.ones(1, 4)
    assert broadcast_text(emb, mask, None) == (emb, mask)


def test_watchdog_ends_a_process_stuck_in_a_collective():
    import subprocess

    code = ("import time\nfrom magi1.parallel.context import Watchdog\n"
            "w = Watchdog(0.5, rank=3)\nw.disarm(w.arm('a finished all-reduce'))\nw.arm('the stuck all-to-all')\n"
            "time.sleep(60)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 75
    assert "magi1 rank 3: error: the stuck all-to-all has waited more than" in done.stderr
