import pytest

from magi1.sampling.chunk_plan import plan_forward_steps, prefix_spans


def official_form(chunk_num, window, num_steps, offset):
    """The window schedule written the way the reference states it (t_start / t_end per stage)."""
    dsps = num_steps // window
    rows = []
    for stage_i in range(offset, chunk_num + window - 1):
        c0 = max(offset, stage_i - window + 1)
        c1 = min(chunk_num, stage_i + 1)
        t0 = max(0, stage_i - chunk_num + 1)
        t1 = min(window, stage_i - offset + 1) if stage_i - offset < window else window
        for idx in range(dsps):
            steps = [m * dsps + idx for m in range(t0, t1)][::-1]
            rows.append((c0, c1, tuple(steps), c0 > offset and idx == 0))
    return rows


# Worked example (t2v, 4 chunks, window 4, 64 steps): per stage at idx 0.
TABLE = [
    # (chunks, steps, extra, slice idx0, slice idx>0, spans at idx 0)
    ((0, 1), (0,), False, 0, 0, ((0, 1),)),
    ((0, 2), (16, 0), False, 0, 0, ((0, 1), (0, 2))),
    ((0, 3), (32, 16, 0), False, 0, 0, ((0, 1), (0, 2), (0, 3))),
    ((0, 4), (48, 32, 16, 0), False, 0, 0, ((0, 1), (0, 2), (0, 3), (0, 4))),
    ((1, 4), (48, 32, 16), True, 0, 1, ((0, 1), (0, 2), (0, 3), (0, 4))),
    ((2, 4), (48, 32), True, 1, 2, ((1, 2), (1, 3), (1, 4))),
    ((3, 4), (48,), True, 2, 3, ((2, 3), (2, 4))),
]


def test_worked_example_table():
    plan = plan_forward_steps(4, 4, 64, 0, [5, 4, 3, 2], 1)
    assert len(plan) == 112
    for stage, (chunks, steps, extra, sp0, sp1, spans) in enumerate(TABLE):
        first, second = plan[stage * 16], plan[stage * 16 + 1]
        assert (first.stage, first.substep) == (stage, 0)
        assert (first.chunk_start, first.chunk_end) == chunks
        assert first.chunk_steps == steps and first.extra_clean_chunk == extra
        assert (first.slice_point, second.slice_point) == (sp0, sp1)
        assert first.spans == spans
        assert not second.extra_clean_chunk
    stage4 = plan[4 * 16 + 1]
    assert stage4.chunk_steps == (49, 33, 17) and stage4.spans == ((0, 2), (0, 3), (0, 4))
    assert stage4.key_ranges(10) == [(0, 20), (0, 30), (0, 40)]


def test_emission_once_each_in_order():
    plan = plan_forward_steps(4, 4, 64, 0, [5, 4, 3, 2], 1)
    finished = [(s.index, s.finished_chunk) for s in plan if s.finished_chunk is not None]
    assert finished == [(63, 0), (79, 1), (95, 2), (111, 3)]


@pytest.mark.parametrize("chunks,window,steps,offset", [
    (4, 4, 64, 0), (5, 4, 16, 0), (6, 4, 8, 1), (8, 4, 8, 2), (2, 4, 4, 0), (8, 1, 3, 0), (3, 2, 12, 0),
])
def test_matches_official_form(chunks, window, steps, offset):
    plan = plan_forward_steps(chunks, window, steps, offset)
    rows = official_form(chunks, window, steps, offset)
    assert [(s.chunk_start, s.chunk_end, s.chunk_steps, s.extra_clean_chunk) for s in plan] == rows
    # every generated chunk gets steps 0..steps-1 once, and is emitted once, right after its last step
    seen = {}
    for s in plan:
        for c, k in zip(s.window_chunks, s.chunk_steps):
            seen.setdefault(c, []).append(k)
        if s.finished_chunk is not None:
            assert seen[s.finished_chunk] == list(range(steps))
    assert sorted(seen) == list(range(offset, chunks))
    assert [s.finished_chunk for s in plan if s.finished_chunk is not None] == list(range(offset, chunks))


def test_v2v_and_full_causal_spans():
    plan = plan_forward_steps(6, 4, 8, chunk_offset=1, noise2clean_kvrange=[5, 4, 3, 2], clean_chunk_kvrange=1)
    assert (plan[0].chunk_start, plan[0].slice_point, plan[0].spans) == (1, 1, ((0, 2),))
    # no extra clean chunk for the prefix chunk: its KV was cached before the first step
    assert not any(s.extra_clean_chunk and s.chunk_start == 1 for s in plan)
    assert prefix_spans(2, [5, 4, 3, 2], 1) == ((0, 1), (1, 2))
    assert prefix_spans(2, [5, 4, 3, 2], -1) == ((0, 1), (0, 2))
    assert prefix_spans(2, [], -1) == ((0, 1), (0, 2))
    causal = plan_forward_steps(4, 4, 8)
    assert all(start == 0 for s in causal for start, _ in s.spans)
    assert all(s.keep_from == 0 for s in causal[:-1])


def test_keep_from_never_above_a_later_span():
    plan = plan_forward_steps(8, 4, 16, 0, [5, 4, 3, 2], 1)
    for i, s in enumerate(plan[:-1]):
        assert s.keep_from == min(a for later in plan[i + 1:] for a, _ in later.spans)
    assert plan[-1].keep_from == 8


def test_rejects_bad_sizes():
    with pytest.raises(ValueError):
        plan_forward_steps(4, 3, 8)
    with pytest.raises(ValueError):
        plan_forward_steps(4, 4, 8, noise2clean_kvrange=[5, 4, 3])
    with pytest.raises(ValueError):
        plan_forward_steps(2, 4, 8, chunk_offset=2)
