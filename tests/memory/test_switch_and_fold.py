"""Memory-level prompt-switch semantics (recache, flush) and the EMA sink fold, by hand and in rollouts."""

from __future__ import annotations

import pytest
import torch
from memory_harness import Harness, noisy_random, scene_directions

from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.spec import make_spec

LAYOUT = MemoryLayout(num_layers=2, tokens_per_frame=2, num_heads=1, head_dim=4, chunk_frames=3)


def simple_memory(policy, options=None, positions=None):
    def rotate(keys, pos):
        if positions is not None:
            positions.append(list(pos))
        return keys.flatten(1, 2)

    return ContextMemory(make_spec(policy, options), LAYOUT, key_rotation=rotate, max_frames=600)


def filled(frames, value=lambda f: float(f)):
    """K or V [1, len(frames)*T, H, D] whose frame f is filled with value(f)."""
    return torch.cat([torch.full((1, 2, 1, 4), value(f)) for f in frames], dim=1)


def commit_chunk(mem, chunk, kval=lambda f: float(f), vval=lambda f: -float(f), before=None):
    """One chunk with only its commit pass; `before(mem)` runs after planning, before the pass."""
    frames = list(range(3 * chunk, 3 * chunk + 3))
    plan = mem.begin_chunk(3 * chunk, 3)
    if before is not None:
        before(mem)
    commit_pass(mem, frames, kval, vval)
    mem.commit()
    return plan.to_json()


def commit_pass(mem, frames, kval, vval, layers=2):
    """A commit pass as the model runs it: each layer hands over its keys and values (identity rotation)."""
    step = mem.begin_pass(commit=True)
    for layer in range(layers):
        k = filled(frames, kval)
        step.keys_values(layer, k, k, filled(frames, vval))


def frame_values(view):
    """One value per attended frame, from a view [1, n*T, H, D] filled per frame."""
    return view[0].reshape(-1, 2, 1, 4)[:, 0, 0, 0].tolist()


# -- recache -----------------------------------------------------------------------------------------
def test_recache_rewrites_exactly_the_fast_window():
    positions = []
    mem = simple_memory("relative", positions=positions)
    for c in range(10):
        commit_chunk(mem, c)
    tiers = [mem.tiers(layer) for layer in range(2)]
    before = [t.clone() for t in mem.k + mem.v]

    frames = mem.begin_recache(30)  # the next chunk starts at 30 and sees window - chunk = 6 cached frames
    assert frames == [24, 25, 26, 27, 28, 29]
    assert list(mem.plan.current_positions) == [
        3,
        4,
        5,
        6,
        7,
        8,
    ]  # where chunk 30 will place them (sink 0-2, current 9-11)
    keys, values = mem.view(0)  # the recache pass attends the sink, at its positions
    assert positions[-1] == [0, 1, 2] and frame_values(keys) == [0, 1, 2] and frame_values(values) == [0, -1, -2]
    commit_pass(mem, frames, lambda f: 1000.0 + f, lambda f: -1000.0 - f)
    mem.commit()

    assert [mem.tiers(layer) for layer in range(2)] == tiers  # tiers unchanged
    after = mem.k + mem.v
    changed = [
        sorted({int(s) for s in (b != a).any(-1).any(-1).any(-1).any(0).nonzero().flatten()})
        for b, a in zip(before, after)
    ]
    window_slots = sorted(mem.groups[0].slots.slot[("main", f)] for f in frames)
    assert all(c == window_slots for c in changed)  # exactly the window's slots, K and V, every layer

    entry = mem.begin_chunk(30, 3).to_json()
    assert entry["fast"] == list(range(24, 33)) and entry["sink"] == [0, 1, 2]
    keys, values = mem.view(1)
    assert frame_values(keys) == [0, 1, 2] + [1000.0 + f for f in frames]
    assert frame_values(values) == [0, -1, -2] + [-1000.0 - f for f in frames]
    assert positions[-1] == list(range(9))


def test_recache_with_nothing_cached():
    mem = simple_memory("rolling", {"window": 3})
    for c in range(4):
        commit_chunk(mem, c)
    assert mem.begin_recache(12) == []
    mem.commit()
    mem.begin_chunk(12, 3)
    assert mem.view(0) is None


# -- flush -------------------------------------------------------------------------------------------
def test_flush_empties_sink_and_slow_then_the_sink_refills():
    mem = simple_memory("slow_fast", {"rule": "uniform", "interval": 2})
    for c in range(21):
        commit_chunk(mem, c)
    assert mem.tiers()["sink"] == [0, 1, 2] and len(mem.tiers()["slow"]) == 10
    mem.flush()
    assert mem.tiers()["sink"] == [] and mem.tiers()["slow"] == []
    t = commit_chunk(mem, 21)  # frames 63-65 refill the sink (odd chunk: not promoted)
    assert (t["sink"], t["slow"], t["fast"]) == ([], [], [60, 61, 62, 63, 64, 65])
    assert t["positions"] == {str(f): p for f, p in zip(range(60, 66), range(15, 21))}
    assert mem.tiers()["sink"] == [63, 64, 65]
    t = commit_chunk(mem, 22)
    assert (t["sink"], t["slow"], t["fast"]) == ([63, 64, 65], [], [66, 67, 68])
    assert [t["positions"][str(f)] for f in range(63, 69)] == [0, 1, 2, 18, 19, 20]
    assert commit_chunk(mem, 23)["slow"] == [] and mem.tiers()["slow"] == [66]  # promotion resumes (chunk 22)
    keys, _ = mem.view(0)
    assert frame_values(keys) == [63, 64, 65, 66, 67, 68]  # what chunk 23 attended


# -- prompt switches in long rollouts ----------------------------------------------------------------
EVENTS = {20: ["recache"], 51: ["flush"], 80: ["flush", "recache"], 121: ["recache"], 150: ["recache"]}
SWITCH_ROLLOUTS = [
    ("full", {}),
    ("rolling", {}),
    ("sink", {}),
    ("relative", {}),
    ("slow_fast", {}),
    ("slow_fast", {"rule": "uniform", "interval": 1}),
    ("slow_fast", {"promote_scope": "per_layer"}),
    ("slow_fast", {"promote_on": "any_pass"}),
    ("slow_fast", {"rule": "uniform", "interval": 2, "positions": "absolute"}),
]


@pytest.mark.parametrize("policy, options", SWITCH_ROLLOUTS, ids=[f"{p}-{o}" for p, o in SWITCH_ROLLOUTS])
def test_rollout_with_prompt_switches_matches_reference(policy, options):
    direction = scene_directions() if policy == "slow_fast" else noisy_random
    h = Harness(policy, options, chunks=170, direction=direction).run(events=EVENTS)
    assert h.mem.rotations == h.context_views
    assert h.traces[51]["sink"] == [] and h.traces[51]["slow"] == []  # right after the flush
    if policy not in ("full", "rolling"):
        assert h.traces[52]["sink"] == [153, 154, 155]  # refilled by the first commit after it


def test_ema_sink_rollout_with_recache():
    h = Harness("ema_sink", {}, chunks=100, direction=noisy_random).run(events={20: ["recache"], 57: ["recache"]})
    assert h.mem.rotations == h.context_views


# -- EMA sink fold -------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.999, 0.5])
def test_ema_sink_fold_by_hand(alpha):
    """K of frame f is filled with f, V with -f: the sink holds alpha*sink + (1-alpha)*evicted, in order."""
    positions = []
    mem = simple_memory("ema_sink", {"alpha": alpha}, positions=positions)
    sink_k = [0.0, 1.0, 2.0]

    def check(c):
        def attended(mem):  # chunk c sees the sink after the folds of commits 2..c-1, then chunk c-1
            keys, values = mem.view(c % 2)
            got_k, got_v = frame_values(keys), frame_values(values)
            assert got_k[:3] == pytest.approx(sink_k, rel=1e-5, abs=1e-4)
            assert got_v[:3] == pytest.approx([-s for s in sink_k], rel=1e-5, abs=1e-4)
            assert got_k[3:] == [3 * c - 3, 3 * c - 2, 3 * c - 1]
            assert positions[-1] == [0, 1, 2, 3, 4, 5] and list(mem.plan.current_positions) == [6, 7, 8]

        return attended

    for c in range(40):
        commit_chunk(mem, c, before=check(c) if c >= 3 else None)
        if c >= 2:  # window 6 = 3 cached + current: the commit of chunk c evicts chunk c-1's frames
            sink_k = [alpha * s + (1 - alpha) * (3 * (c - 1) + i) for i, s in enumerate(sink_k)]
    assert mem.tiers()["sink"] == [0, 1, 2]


def test_chunk_refilling_the_sink_after_flush_is_not_also_promoted():
    """After a flush the next chunk refills the sink; promoting it too would attend its first frame twice."""

    from contextforcing.memory.context import ContextMemory, MemoryLayout
    from contextforcing.memory.spec import make_spec

    layout = MemoryLayout(num_layers=1, tokens_per_frame=2, num_heads=1, head_dim=4, chunk_frames=3)
    mem = ContextMemory(
        make_spec("slow_fast", {"rule": "uniform", "interval": 1}), layout, key_rotation=lambda k, pos: k.flatten(1, 2)
    )
    for chunk in range(40):
        if chunk == 20:
            mem.flush()
        entry = mem.begin_chunk(chunk * 3, 3).to_json()
        commit_pass(mem, range(chunk * 3, chunk * 3 + 3), lambda f: 1.0, lambda f: 1.0, layers=1)
        mem.commit()
        assert not any(isinstance(p, list) for p in entry["positions"].values()), entry
    assert mem.tiers()["sink"] == [60, 61, 62] and 60 not in mem.tiers()["slow"]
