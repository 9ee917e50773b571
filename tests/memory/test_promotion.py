"""slow_fast promotion: surprisal on constructed key similarities, commit-pass-only decisions, any_pass
(released code) copying the noisy pass, per-layer scope, and the pooled representation.

Every run below is also checked chunk by chunk against the reference (frames, positions, contents), by
the harness; the assertions here pin the promotion chunks to hand-computed expectations.
"""

from __future__ import annotations

import math

import pytest
from memory_harness import SCENES, Harness, noisy_random
from policy_reference import COMMIT

CHANGES = [1, 2, 3, 5, 8, 9, 12, 30, 31, 100, 150, 151, 199]  # chunks where the scene changes


def scenes_changing_at(changes, *, layer_changes=None):
    """Commit-pass keys: orthogonal directions per scene (cos 0 across a change, 1 within a scene)."""

    def scene(chunk, layer):
        points = changes if layer_changes is None else layer_changes[layer]
        return sum(1 for c in points if c <= chunk) % 3

    def direction(chunk, tag, layer, item):
        if tag != COMMIT:
            return noisy_random(chunk, tag, layer, item)
        return SCENES[scene(chunk, layer)]

    return direction


@pytest.mark.parametrize(
    "interval, expected",
    [
        (2, [2, 8, 12, 30, 100, 150]),  # changes at even chunks whose start 3k >= max(sink, fast) = 6
        (1, [2, 3, 5, 8, 9, 12, 30, 31, 100, 150, 151, 199]),  # every change from chunk 2 on
    ],
)
def test_surprisal_promotes_exactly_at_eligible_scene_changes(interval, expected):
    h = Harness("slow_fast", {"interval": interval}, direction=scenes_changing_at(CHANGES)).run()
    assert [c for c, _ in h.ref.promotions[0]] == expected
    assert h.promoted == [expected, expected]  # one decision for all layers
    # Only the chunk's first latent frame is copied, and the slow tier keeps the 12 most recent.
    assert h.mem.tiers()["slow"] == [3 * c for c in expected][-12:]


def test_surprisal_threshold():
    """Similarity 0.94 promotes, 0.96 does not (tau 0.95); with tau 0.97 both do."""
    below, above = {10, 20, 40}, {12, 22, 42}

    def angle(chunk):
        return sum(math.acos(0.94) if c in below else math.acos(0.96) for c in range(chunk + 1) if c in below | above)

    def direction(chunk, tag, layer, item):
        a = angle(chunk)
        return [10 * math.cos(a), 10 * math.sin(a), 0.0, 0.0]

    h = Harness("slow_fast", {}, chunks=50, direction=direction).run()
    assert h.promoted[0] == [10, 20, 40]
    assert [round(h.ref.sims[(c, 0)], 6) for c in (10, 12)] == [0.94, 0.96]
    h = Harness("slow_fast", {"tau": 0.97}, chunks=50, direction=direction).run()
    assert h.promoted[0] == [10, 12, 20, 22, 40, 42]


def _noisy_crosses(noisy_tags):
    """Commit passes always point the same way; the listed noisy passes point elsewhere (cos 0)."""

    def direction(chunk, tag, layer, item):
        return SCENES[1] if tag in noisy_tags else SCENES[0]

    return direction


def _slow_pass_ids(h, layer=0):
    """Pass id encoded in the keys of the slow entries of the last chunk's view."""
    keys, _ = h.mem.view(layer)
    trace = h.traces[-1]
    k = keys[0].reshape(-1, 2, 1, 4)
    first_slow = len(trace["sink"])
    slow = k[first_slow : first_slow + len(trace["slow"])]
    return ((slow[:, 0, 0, 2] - slow[:, 1, 0, 2]) / 2).round().long().tolist()


def test_commit_pass_decides_noisy_pass_never_promotes():
    h = Harness("slow_fast", {}, noisy_passes=2, direction=_noisy_crosses({0, 1})).run()
    assert h.promoted == [[], []]
    assert all(t["slow"] == [] for t in h.traces)
    assert h.mem.tiers()["slow"] == []


@pytest.mark.parametrize("noisy_tags, firing_pass", [({0, 1}, 0), ({1}, 1)])
def test_any_pass_promotes_from_the_noisy_pass(noisy_tags, firing_pass):
    """Released-code switch: the first pass that crosses tau promotes, and its K/V are the ones copied."""
    h = Harness("slow_fast", {"promote_on": "any_pass"}, noisy_passes=2, direction=_noisy_crosses(noisy_tags)).run()
    eligible = list(range(2, 200, 2))
    assert h.promoted == [eligible, eligible]
    for layer in range(2):
        ids = _slow_pass_ids(h, layer)
        # 12 in slow memory, the newest (frame 594) still in the fast window, so attended as fast.
        assert len(ids) == 11 and set(ids) == {h.pass_ids[firing_pass]}  # not the commit pass's K/V
        assert all(src == {(f, firing_pass): 1.0} for f, src in h.ref.slow[0])


def test_per_layer_scope_keeps_different_keyframes():
    changes = {0: [4, 10, 20], 1: [6, 10, 30]}
    direction = scenes_changing_at(None, layer_changes=changes)
    h = Harness("slow_fast", {"promote_scope": "per_layer"}, chunks=40, direction=direction).run()
    assert h.promoted == [[4, 10, 20], [6, 10, 30]]
    t = h.traces[25]
    assert t["slow_per_layer"] == [[12, 30, 60], [18, 30]]
    assert t["slow"] == [12, 30, 60]
    # Global scope, same keys: one pooled decision, identical tiers in every layer.
    h = Harness("slow_fast", {}, chunks=40, direction=direction).run()
    assert h.promoted == [[4, 6, 10, 20, 30]] * 2
    assert "slow_per_layer" not in h.traces[25]


@pytest.mark.parametrize("axis", ["layer", "batch"])
def test_similarity_is_taken_on_the_pooled_mean_key(axis):
    """The representation is the mean key averaged over layers and batch, then one cosine; a small key
    that flips direction under a large constant one does not make the pooled key change."""

    def direction(chunk, tag, layer, item):
        small = SCENES[chunk % 2]
        which = layer if axis == "layer" else item
        return [x / 10 for x in small] if which == 0 else [100.0 * x for x in SCENES[2]]

    h = Harness("slow_fast", {"interval": 1}, chunks=30, batch=2 if axis == "batch" else 1, direction=direction).run()
    assert h.promoted == [[], []]
    assert all(s > 0.99 for s in h.ref.sims.values())


def _scene(chunk, changes):
    return sum(1 for c in changes if c <= chunk) % 3


def test_compare_checked_compares_with_the_last_checked_chunk():
    """interval 2: chunks 2, 4, 6, ... are checked. compare=previous sets chunk k against chunk k-1 (a change at
    an odd chunk is missed, one at k is caught); compare=checked sets it against chunk k-2 (every scene
    change since the last check is caught); the first checked chunk has nothing to compare with."""
    changes = [3, 7, 12, 20, 21, 40, 41, 42, 55]
    h = Harness("slow_fast", {"compare": "checked"}, chunks=60, direction=scenes_changing_at(changes)).run()
    expected = [k for k in range(4, 60, 2) if _scene(k, changes) != _scene(k - 2, changes)]
    assert [c for c, _ in h.ref.promotions[0]] == expected == [4, 8, 12, 20, 22, 40, 42, 56]
    assert h.promoted == [expected, expected]
    previous = Harness("slow_fast", {}, chunks=60, direction=scenes_changing_at(changes)).run()
    assert previous.promoted[0] == [k for k in range(2, 60, 2) if k in changes] == [12, 20, 40, 42]


def test_keep_last_copies_the_chunks_last_frame():
    h = Harness("slow_fast", {"rule": "uniform", "interval": 2, "keep": "last"}, chunks=41).run()
    t = h.traces[-1]
    assert t["slow"] == [3 * c + 2 for c in range(16, 39, 2)]  # frames 3k+2 of the promoted (even) chunks
    pos = t["positions"]
    assert [pos[str(f)] for f in t["slow"]] == list(range(3, 15))
    # keep=first on the same rollout: the chunks' first frames
    first = Harness("slow_fast", {"rule": "uniform", "interval": 2}, chunks=41).run()
    assert first.traces[-1]["slow"] == [3 * c for c in range(16, 39, 2)]


@pytest.mark.parametrize("key_layers, expected", [("all", [4, 6, 10, 20, 30]), ("first", [4, 10, 20])])
def test_key_layers_first_reads_the_first_layers_keys_only(key_layers, expected):
    """Layer 0 changes at 4, 10, 20 and layer 1 at 6, 10, 30: pooled over both, every change promotes; with
    key_layers=first only layer 0's do (one decision for every layer either way)."""
    direction = scenes_changing_at(None, layer_changes={0: [4, 10, 20], 1: [6, 10, 30]})
    h = Harness("slow_fast", {"key_layers": key_layers}, chunks=40, direction=direction).run()
    assert h.promoted == [expected, expected]
