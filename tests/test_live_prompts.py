"""Prompts changed while the run goes: the schedule object, the sampler's hook, and the pipeline end to end."""

from __future__ import annotations

import threading

import pytest
import torch

from magi1.sampling.live_prompts import LivePrompts, PromptChange, blend


# ---------------------------------------------------------------------------------------------- the schedule
def test_a_change_takes_the_next_chunk_asked_for_and_holds_after_it():
    applied = []
    live = LivePrompts(on_applied=lambda change, chunk: applied.append((change.prompt, chunk)))
    assert live.caption_for(0, "red").mixture == (("red", 1.0),)
    change = live.change("blue")
    assert live.applied_chunk(change.event_id) is None  # nothing has asked since
    first = live.caption_for(1, "red")
    assert first.mixture == (("blue", 1.0),) and first.started == (change.event_id,)
    assert first.completed == (change.event_id,)
    later = live.caption_for(2, "a planned scene change")  # a live change replaces the planned captions too
    assert later.mixture == (("blue", 1.0),) and later.started == () and later.active == ()
    assert applied == [("blue", 1)] and live.applied_chunk(change.event_id) == 1
    assert live.caption_of(1) == first


def test_a_transition_reaches_the_new_prompt_in_its_nth_chunk():
    live = LivePrompts()
    live.caption_for(0, "red")
    change = live.change("blue", transition_chunks=3)
    captions = [live.caption_for(chunk, "red") for chunk in (1, 2, 3, 4)]
    weights = [dict(c.mixture).get("blue", 0.0) for c in captions]
    assert weights == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert [c.active for c in captions] == [(change.event_id,)] * 3 + [()]
    assert [c.completed for c in captions] == [(), (), (change.event_id,), ()]
    assert captions[0].prompt == "red" and captions[1].prompt == "blue"


def test_a_newer_change_supersedes_a_waiting_one_and_starts_from_the_blend_reached():
    live = LivePrompts()
    live.caption_for(0, "red")
    old = live.change("green")
    new = live.change("blue", transition_chunks=2)
    assert live.superseded() == [old]
    live.caption_for(1, "red")                        # red -> blue, half way
    third = live.change("white", transition_chunks=2)  # interrupts at the blend it reached
    caption = live.caption_for(2, "red")
    expected = blend(blend((("red", 1.0),), "blue", 1.0), "white", 0.5)  # blue complete at chunk 2, then halfway
    assert dict(caption.mixture) == pytest.approx(dict(expected))
    assert live.applied_chunk(new.event_id) == 1 and live.applied_chunk(third.event_id) == 2
    late = live.change("too late")
    assert live.close() == [late]
    with pytest.raises(ValueError, match="ended"):
        live.change("after the end")


def test_bad_changes_are_refused():
    with pytest.raises(ValueError):
        PromptChange("  ")
    with pytest.raises(ValueError):
        PromptChange("x", transition_chunks=-1)
    with pytest.raises(ValueError):
        PromptChange("x", transition_chunks=True)


# ---------------------------------------------------------------------------------------------- the sampler hook
def test_sampler_asks_for_each_chunk_once_in_order_before_it_enters_the_window(tiny_pipeline, monkeypatch):
    import magi1.sampling.sampler as sampler

    asked, entered = [], []
    real_velocity = sampler._velocity

    def watch_velocity(model, call, cache, config, scale):
        cw = config.runtime_config.chunk_width
        entered.append(call.slice_point + call.x.shape[2] // cw)  # one past the newest chunk of the call
        return real_velocity(model, call, cache, config, scale)

    monkeypatch.setattr(sampler, "_velocity", watch_velocity)
    live = LivePrompts()
    original = live.caption_for
    live.caption_for = lambda chunk, planned: (asked.append((chunk, max(entered, default=0))), original(chunk, planned))[1]
    list(tiny_pipeline.stream("a red ball", num_frames=96, output_type="latent", live_prompts=live))
    assert [chunk for chunk, _ in asked] == [0, 1, 2, 3]
    # When chunk k is asked for, no model call has included it yet.
    assert all(seen <= chunk for chunk, seen in asked)


# ---------------------------------------------------------------------------------------------- end to end
def test_a_live_change_gives_the_video_of_chunk_prompts_from_the_chunk_it_reports(tiny_pipeline):
    plain = tiny_pipeline("a red ball", num_frames=96, seed=5, output_type="latent").latents
    untouched = tiny_pipeline("a red ball", num_frames=96, seed=5, output_type="latent",
                              live_prompts=LivePrompts()).latents
    assert torch.equal(plain, untouched)

    live = LivePrompts()
    chunks, change = [], None
    for chunk in tiny_pipeline.stream("a red ball", num_frames=96, seed=5, output_type="latent", live_prompts=live):
        chunks.append(chunk.latents)
        if chunk.index == 0:  # from another thread, as the server does
            worker = threading.Thread(target=lambda: setattr(worker, "change", live.change("a blue square falls")))
            worker.start()
            worker.join()
            change = worker.change
    first = live.applied_chunk(change.event_id)
    assert first is not None and 1 <= first < 4
    expected = tiny_pipeline(chunk_prompts={0: "a red ball", first: "a blue square falls"}, num_frames=96, seed=5,
                             output_type="latent").latents
    assert torch.equal(torch.cat(chunks, dim=2), expected)
    assert not torch.equal(expected, plain)
    assert [live.caption_of(k).prompt for k in range(4)] == ["a red ball"] * first + ["a blue square falls"] * (4 - first)


def test_a_transition_blends_between_the_hard_switches(tiny_pipeline):
    def run(transition_chunks):
        live = LivePrompts()
        live.change("a blue square falls", transition_chunks=transition_chunks)  # before chunk 0: applies there
        return tiny_pipeline("a red ball", num_frames=96, seed=5, output_type="latent", live_prompts=live).latents

    hard, smooth = run(0), run(3)
    blue = tiny_pipeline("a blue square falls", num_frames=96, seed=5, output_type="latent").latents
    assert torch.equal(hard, blue)
    assert not torch.equal(smooth, blue)
    # The transition's last chunk and after are the new prompt, but they attend to blended chunks before them.
    assert not torch.equal(smooth[:, :, :6], blue[:, :, :6])


def test_live_prompts_need_text_prompts(tiny_pipeline):
    from magi1.errors import InputError

    emb, mask = tiny_pipeline.text_encoder.encode("a ball")
    with pytest.raises(InputError, match="text prompts"):
        list(tiny_pipeline.stream(prompt_embeds=emb, prompt_attention_mask=mask, num_frames=24,
                                  output_type="latent", live_prompts=LivePrompts()))
