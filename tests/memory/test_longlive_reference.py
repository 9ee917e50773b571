"""Self-consistency of the plain-Python LongLive cache reference (longlive_reference.py): the facts it is
built from, restated as closed-form expectations, and agreement with the policy reference's `sink` policy
before any switch."""

from __future__ import annotations

import pytest
from longlive_reference import (
    Entry,
    LongLiveCache,
    LongLiveSetup,
    cache_after_switch,
    recache_attention,
    recache_pass,
    recached_frames,
    switch_frame,
)
from policy_reference import Reference

S, L, C = 3, 12, 3
SWITCHES = range(0, 120, C)


def _frames(entries) -> list:
    return [None if e is None else e.frame for e in entries]


@pytest.mark.parametrize("sink, size, chunk", [(3, 12, 3), (1, 7, 2), (0, 6, 3)])
def test_plain_generation_attends_the_sink_and_the_last_window(sink, size, chunk):
    cache = LongLiveCache(LongLiveSetup(sink=sink, local_attn_size=size, chunk=chunk))
    for _ in range(100):
        t = cache.t
        step = cache.generate_chunk()
        end = t + chunk
        sink_frames = list(range(min(sink, end)))
        window = list(range(max(sink, end - (size - sink)), end))
        assert _frames(step.keys) == sink_frames + window
        assert all(k.position == k.frame and k.prompt == 0 for k in step.keys)


def test_plain_generation_equals_the_sink_policy_reference():
    ours = LongLiveCache(LongLiveSetup())
    ref = Reference("sink", {"sink": S, "window": L - S}, chunk=C)
    for chunk in range(80):
        start = ours.t
        plan = ref.plan(start)
        expected = plan.frames() + list(range(start, start + C))
        step = ours.generate_chunk()
        assert _frames(step.keys) == expected
        assert [k.position for k in step.keys] == plan.positions + plan.current
        ref.commit(chunk, start)


def test_a_sink_wider_than_a_chunk_reads_zero_slots_until_filled():
    cache = LongLiveCache(LongLiveSetup(sink=6, local_attn_size=12, chunk=3))
    assert _frames(cache.generate_chunk().keys) == [0, 1, 2, None, None, None]
    assert _frames(cache.generate_chunk().keys) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("global_sink", [True, False])
def test_the_last_min_window_t_frames_are_reencoded_once(global_sink):
    setup = LongLiveSetup(global_sink=global_sink)
    for t in SWITCHES:
        assert recached_frames(t, setup) == list(range(max(0, t - L), t))
        assert [q.position for q in recache_pass(t, setup).queries] == recached_frames(t, setup)


def test_global_sink_keeps_the_first_prompts_sink_once_past_the_window():
    for t in range(L + C, 120, C):
        done = recache_pass(t)
        assert not done.cleared and not done.sink_rewritten
        # The first `sink` re-encoded frames land nowhere; the rest replace the rolling slots.
        assert [q.slot for q in done.queries] == [None] * S + list(range(S, L))
        assert done.slots_after[:S] == tuple(Entry(f, f, 0) for f in range(S))
        assert done.slots_after[S:] == tuple(Entry(f, f, 1) for f in range(t - (L - S), t))
        # One pass, no mask: every re-encoded frame attends the sink and all rewritten frames, later ones too.
        for frame, position, keys in recache_attention(t):
            assert position == frame
            assert keys == [(f, f, 0) for f in range(S)] + [(f, f, 1) for f in range(t - (L - S), t)]


@pytest.mark.parametrize("t", range(C, L + 1, C))
def test_a_switch_within_the_first_window_rewrites_the_sink_too(t):
    quirk = cache_after_switch(t)
    assert quirk[:t] == [(f, f, 1) for f in range(t)] and quirk[t:] == [None] * (L - t)
    assert recache_pass(t).sink_rewritten
    assert quirk == cache_after_switch(t, LongLiveSetup(global_sink=False))  # the same as clearing
    intended = cache_after_switch(t, LongLiveSetup(sink_quirk=False))
    assert intended[:S] == [(f, f, 0) for f in range(S)] and intended[S:t] == [(f, f, 1) for f in range(S, t)]


@pytest.mark.parametrize("t", [L, L + C, 60, 117])
def test_global_sink_false_makes_the_first_recached_frames_the_new_sink(t):
    setup = LongLiveSetup(global_sink=False)
    cache = LongLiveCache(setup)
    while cache.t < t:
        cache.generate_chunk()
    done = cache.switch()
    assert done.cleared and done.sink_rewritten
    assert done.slots_after == tuple(Entry(f, f, 1) for f in range(t - L, t))
    for _ in range(40):  # the new sink stays, at its own (absolute) positions
        step = cache.generate_chunk()
        assert step.keys[:S] == tuple(Entry(f, f, 1) for f in range(t - L, t - L + S))
        assert _frames(step.keys[S:]) == list(range(cache.t - (L - S), cache.t))


def test_generation_after_a_switch_rolls_on_with_the_new_prompt():
    cache = LongLiveCache(LongLiveSetup())
    while cache.t < 30:
        cache.generate_chunk()
    cache.switch()
    step = cache.generate_chunk()
    assert step.prompt == 1 and step.frames == (30, 31, 32)
    assert step.keys == (tuple(Entry(f, f, 0) for f in range(S)) + tuple(Entry(f, f, 1) for f in range(24, 33)))


def test_two_switches_a_quirky_first_one_keeps_its_sink():
    cache = LongLiveCache(LongLiveSetup())
    for target in (6, 30):
        while cache.t < target:
            cache.generate_chunk()
        done = cache.switch()
    assert done.prompt == 2
    assert done.slots_after[:S] == tuple(Entry(f, f, 1) for f in range(S))  # rewritten at t=6, kept at t=30
    assert done.slots_after[S:] == tuple(Entry(f, f, 2) for f in range(21, 30))


def test_switch_at_zero_and_switch_frames():
    assert recache_pass(0).queries == () and recache_pass(0).keys == ()
    assert recached_frames(0, LongLiveSetup(global_sink=False)) == []
    assert [switch_frame(i) for i in (40, 80, 120, 3, 0)] == [42, 81, 120, 3, 0]
    with pytest.raises(ValueError, match="chunk boundaries"):
        recache_pass(4)
    with pytest.raises(ValueError, match="impossible"):
        LongLiveSetup(sink=12)
