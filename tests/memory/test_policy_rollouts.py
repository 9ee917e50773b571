"""200-chunk rollouts of every memory policy against the plain-Python reference (tests/memory/policy_reference.py).

Each chunk checks: the trace (tiers and positions), the positions the cached keys are rotated to, the
current chunk's positions, and the *contents* `view` returns (frames, order, K and V values, EMA folds),
on every pass; that attention over what `attend` hands the model equals attention over that view plus the
chunk; cached keys are rotated exactly once per layer per chunk that has context; storage never
overflows; bounded policies stay within [0, L-1]. Both view modes (slots, and the gather reference).
"""

from __future__ import annotations

import pytest
from memory_harness import Harness, noisy_random, scene_directions

CHUNKS = 200


# (policy, options, position bound L or None for absolute positions)
ROLLOUTS = [
    ("full", {}, None),
    ("rolling", {}, None),
    ("rolling", {"window": 3}, None),  # window == chunk: never any context
    ("sink", {}, None),
    ("sink", {"sink": 4, "window": 6}, None),  # sink not a multiple of the chunk
    ("relative", {}, 12),
    ("ema_sink", {}, 9),
    ("ema_sink", {"sink": 2, "alpha": 0.5}, 8),  # fold groups straddle chunks
    ("slow_fast", {}, 21),  # surprisal on random scene changes
    ("slow_fast", {"rule": "uniform", "interval": 1}, 21),
    ("slow_fast", {"rule": "uniform", "interval": 2}, 21),
    ("slow_fast", {"rule": "uniform", "interval": 2, "positions": "absolute"}, None),
    ("slow_fast", {"positions": "absolute"}, None),
    ("slow_fast", {"rule": "uniform", "interval": 1, "dedupe": False}, 21),
    ("slow_fast", {"dedupe": False, "interval": 1}, 21),
    ("slow_fast", {"rule": "uniform", "interval": 1, "sink": 1, "slow": 4, "fast": 3}, 8),
    ("slow_fast", {"promote_on": "any_pass", "promote_scope": "per_layer", "dedupe": False}, 21),  # released code
    ("slow_fast", {"promote_on": "any_pass"}, 21),
    ("slow_fast", {"promote_scope": "per_layer"}, 21),
    ("slow_fast", {"rule": "uniform", "promote_on": "any_pass"}, 21),
    # surprisal that promotes scene content: compare with the last checked chunk, keep the last frame, keys
    # of the first layer only (layered scenes: layers change at different chunks)
    ("slow_fast", {"compare": "checked"}, 21),
    ("slow_fast", {"keep": "last"}, 21),
    ("slow_fast", {"key_layers": "first"}, 21),
    ("slow_fast", {"compare": "checked", "keep": "last", "key_layers": "first", "slow": 6}, 15),
    ("slow_fast", {"compare": "checked", "interval": 1, "dedupe": False}, 21),
    ("slow_fast", {"rule": "uniform", "keep": "last", "interval": 1}, 21),
    ("slow_fast", {"keep": "last", "promote_on": "any_pass"}, 21),
    ("slow_fast", {"key_layers": "first", "compare": "checked", "promote_scope": "per_layer"}, 21),
]


def _id(case):
    policy, options, _ = case
    return policy + "".join(f"-{k}={v}" for k, v in options.items())


# The gather view mode is the model's reference path (tests/model/test_view_modes.py); it is checked here on
# one case per mechanism (growth, bounded positions, folds, surprisal, released-code promotion).
GATHER = [ROLLOUTS[i] for i in (0, 5, 6, 8, 16)]
CASES = [(c, "slots") for c in ROLLOUTS] + [(c, "gather") for c in GATHER]


@pytest.mark.parametrize("case, view_mode", CASES, ids=[f"{_id(c)}-{m}" for c, m in CASES])
def test_rollout_matches_reference(case, view_mode):
    policy, options, bound = case
    direction = scene_directions(layered="key_layers" in options) if policy == "slow_fast" else noisy_random
    h = Harness(policy, options, chunks=CHUNKS, direction=direction, view_mode=view_mode).run()  # overflow raises here

    # One rotation per layer per chunk with context, never one per pass.
    assert h.mem.rotations == h.context_views
    if policy != "rolling" or options.get("window", 12) > 3:
        assert h.context_views >= (CHUNKS - 1) * h.layers  # every chunk after the first has context

    positions = [p for t in h.traces for v in t["positions"].values() for p in (v if isinstance(v, list) else [v])]
    assert min(positions) >= 0
    if bound is None:
        assert h.max_position == CHUNKS * 3 - 1  # absolute positions grow with the video
    else:  # the range is reached and never exceeded: [0, 20] for slow_fast's defaults, whatever the length
        assert h.max_position == bound - 1, f"bounded range is [0, {bound - 1}]"


def test_slow_fast_rollouts_do_promote():
    """Sanity of the fixtures: the default slow_fast rollout actually fills and rolls its slow memory."""
    h = Harness("slow_fast", {}, chunks=CHUNKS, direction=scene_directions()).run()
    promotions = h.ref.promotions[0]
    assert len(promotions) > 12  # more than the slow memory holds, so FIFO eviction is exercised
    assert max(len(t["slow"]) for t in h.traces) == 12
    assert all(len(t["slow"]) <= 12 for t in h.traces)


def test_dedupe_off_attends_a_frame_twice():
    h = Harness("slow_fast", {"rule": "uniform", "interval": 2, "dedupe": False}, chunks=5).run()
    # chunk 2 (frames 6..8) promoted frame 6; chunk 3 still has 6 in its cached fast window.
    t = h.traces[3]
    assert t["slow"] == [6] and t["fast"] == [6, 7, 8, 9, 10, 11]
    assert t["positions"]["6"] == [5, 6]
    h2 = Harness("slow_fast", {"rule": "uniform", "interval": 2}, chunks=5).run()
    assert h2.traces[3]["slow"] == [] and h2.traces[3]["positions"]["6"] == 6
    assert h2.traces[4]["slow"] == [6]  # out of the fast window: attended as slow


def test_steady_state_layout_of_slow_fast():
    """Once full: sink 0-2, slow 3-14, fast 15-17, current 18-20 (Context Forcing Eq. 8)."""
    h = Harness("slow_fast", {"rule": "uniform", "interval": 2}, chunks=41).run()
    t = h.traces[-1]
    start = 40 * 3
    assert t["sink"] == [0, 1, 2]
    assert t["slow"] == [3 * c for c in range(16, 39, 2)]  # the 12 most recent promotions (even chunks)
    assert t["fast"] == list(range(start - 3, start + 3))
    pos = t["positions"]
    assert [pos[str(f)] for f in t["sink"]] == [0, 1, 2]
    assert [pos[str(f)] for f in t["slow"]] == list(range(3, 15))
    assert [pos[str(f)] for f in t["fast"]] == list(range(15, 21))
