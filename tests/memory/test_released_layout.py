"""`slow_fast` with `layout=released` against the plain-Python statement of the released cache
(tests/memory/released_reference.py), pass by pass over 200-chunk rollouts.

Every pass of every layer checks what the layer attends (frames, the pass that wrote each one's K/V, in
order), at which positions, and where the chunk itself sits; the keys are synthetic (memory_harness's
encoding: frame, layer and pass id are readable from them) with mean keys chosen by the test, so noisy
passes can cross tau. Then a real tiny model: no promotion attends frames 0..14 plus the last 6, equals the
block-causal parallel forward while the cache fills, and the slots view equals the gather reference.
"""

from __future__ import annotations

import random

import pytest
import torch
from memory_harness import SCENES, C, D, H, T
from released_reference import COMMIT, ReleasedReference

from contextforcing.errors import UserError
from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.spec import make_spec

LAYERS, NOISY = 2, 2
TAGS = [0, 1, COMMIT]  # two denoising passes, then the commit pass


class ReleasedHarness:
    def __init__(self, direction, *, tau=0.95, batch=1, chunks=200, sizes=None):
        sizes = sizes or {}
        self.direction, self.batch, self.chunks = direction, batch, chunks
        self.ref = ReleasedReference(tau=tau, chunk=C, layers=LAYERS, **sizes)
        layout = MemoryLayout(num_layers=LAYERS, tokens_per_frame=T, num_heads=H, head_dim=D, chunk_frames=C)
        spec = make_spec("slow_fast", {"layout": "released", "tau": tau, **sizes})
        self.mem = ContextMemory(spec, layout, key_rotation=self._rotate, batch=batch)
        self.query = torch.randn(batch, C * T, H, D, generator=torch.Generator().manual_seed(0)) * 1e-2
        self.promoted_passes: list[object] = []

    @staticmethod
    def _rotate(keys, positions):
        """Marks each rotated frame with its position (x1000 on the last key component, which every scene
        direction leaves at 0), so the attended keys show where they were placed."""
        offset = torch.zeros_like(keys)
        offset[..., 3] = torch.tensor(positions, dtype=keys.dtype).view(1, -1, 1, 1) * 1000.0
        return (keys + offset).flatten(1, 2)

    def make_kv(self, chunk, start, tag, layer):
        """Token t of frame f: direction +- (f + 1, layer + 1, pass id, item + 1); mean key = direction."""
        pid = 100.0 if tag == COMMIT else float(tag + 1)
        sign = torch.tensor([1.0, -1.0])[:, None]
        k = torch.stack(
            [
                torch.stack(
                    [
                        torch.tensor(self.direction(chunk, tag, layer, b))
                        + sign * torch.tensor([f + 1.0, layer + 1.0, pid, b + 1.0])
                        for f in range(start, start + C)
                    ]
                )
                for b in range(self.batch)
            ]
        )  # [B, C, T, D]
        k = k.reshape(self.batch, C * T, H, D)
        return k, 3 * k

    @staticmethod
    def decode(keys, item=0):
        """(frame, pass tag, position) of each attended frame, from rotated keys [B, n*T, H, D] (batch `item`)."""
        k = keys[item].reshape(-1, T, H, D)[:, :, 0].double()
        half, mean = (k[:, 0] - k[:, 1]) / 2, (k[:, 0] + k[:, 1]) / 2
        out = []
        for frame, pid, pos in zip(
            half[:, 0].round().long().tolist(),
            half[:, 2].round().long().tolist(),
            (mean[:, 3] / 1000).round().long().tolist(),
        ):
            out.append((frame - 1, COMMIT if pid == 100 else pid - 1, pos))
        return out

    def step(self, chunk):
        start = chunk * C
        where = f"chunk {chunk}"
        plan = self.mem.begin_chunk(start, C)
        self.ref.begin_chunk(start)
        assert list(plan.current_positions) == self.ref.current_positions(), f"{where}: current positions"
        for tag in TAGS:
            step = self.mem.begin_pass(commit=tag == COMMIT)
            for layer in range(LAYERS):
                k, v = self.make_kv(chunk, start, tag, layer)
                self.ref.on_pass(layer, tag, k.double().flatten(2).tolist())  # decides before attention
                with torch.no_grad():
                    keys, values, mask = step.keys_values(layer, k, k, v)
                expected = self.ref.attended(layer)
                self.check(layer, keys, values, mask, k, v, expected, f"{where} pass {tag} layer {layer}")
        self.mem.commit()
        self.ref.commit()

    def check(self, layer, keys, values, mask, k, v, expected, where):
        view = self.mem.view(layer)
        for item in range(self.batch):  # every sample's keys at the slot positions (the released code: item 0 only)
            got = [] if view is None else self.decode(view[0], item)
            assert got == [(f, tag, p) for p, f, tag in expected], f"{where} item {item}: frames or positions differ"
        assert self.mem.group_of(layer).plan.positions == [p for p, _, _ in expected], f"{where}: plan positions"
        # What attention gets (slot range + mask) equals attention over the plan-order view plus the chunk.
        ref_k = k if view is None else torch.cat([view[0], k], 1)
        ref_v = v if view is None else torch.cat([view[1], v], 1)
        from contextforcing.model.attention import attention

        q = self.query
        assert torch.allclose(attention(q, keys, values, key_mask=mask), attention(q, ref_k, ref_v), atol=1e-4), where

    def run(self):
        for chunk in range(self.chunks):
            self.step(chunk)
        return self


def scenes(seed, change_prob=0.35):
    """Commit passes: one of three orthogonal scenes, changing at random chunks. Noisy passes: the chunk's
    scene, or another direction (a noisy pass that fires), or still the previous chunk's scene (so that a
    scene change can be first seen by the commit pass)."""
    rng = random.Random(seed)
    scene, table = 0, []
    for _ in range(400):
        if rng.random() < change_prob:
            scene = (scene + rng.choice([1, 2])) % 3
        table.append(scene)

    def direction(chunk, tag, layer, item):
        draw = random.Random(f"{seed}/{chunk}/{tag}/{layer}").random() if tag != COMMIT else 1.0
        if draw < 0.25:
            return SCENES[(table[chunk] + 1 + layer) % 3]
        if draw < 0.6 and chunk:
            return SCENES[table[chunk - 1]]
        return SCENES[table[chunk]]

    return direction


@pytest.mark.parametrize("seed", [1, 2])
def test_released_rollout_matches_the_reference_pass_by_pass(seed):
    h = ReleasedHarness(scenes(seed)).run()
    for layer in range(LAYERS):
        tags = {tag for _, tag in h.ref.promotions[layer]}
        assert COMMIT in tags and tags & {0, 1}, "the stream must promote on noisy and on commit passes"
        assert len(h.ref.promotions[layer]) > h.ref.N  # the context region rolled (FIFO) too
    assert h.ref.promotions[0] != h.ref.promotions[1]  # layers decide alone


def test_batch_similarity_is_the_mean_of_per_sample_cosines():
    """Item 0 keeps a large key, item 1 switches its small one every chunk: a batch-pooled key would barely
    move (cos > 0.99), the mean of per-sample cosines (released) is 0.5 < tau, so every eligible chunk is
    promoted."""

    def direction(chunk, tag, layer, item):
        return [100 * x for x in SCENES[0]] if item == 0 else SCENES[1 + chunk % 2]

    h = ReleasedHarness(direction, batch=2, chunks=12).run()
    assert [s for s, _ in h.ref.promotions[0]] == list(range(6, 36, 3))
    assert all(abs(sim - 0.5) < 1e-6 for start, *_, sim in h.ref.sims if start > 6)


def test_nothing_promoted_attends_frames_0_to_14_and_the_last_6():
    """tau = -1 never promotes: the cache keeps the frames it filled its context slots with."""
    h = ReleasedHarness(scenes(3), tau=-1.0, chunks=40).run()
    assert h.ref.promotions == [[], []]
    plan = h.mem.begin_chunk(120, C)
    assert [a.frame for a in plan.context] == list(range(15)) + [117, 118, 119]
    assert plan.positions == list(range(18)) and list(plan.current_positions) == [18, 19, 20]
    assert plan.tier("sink") == [0, 1, 2] and plan.tier("slow") == list(range(3, 15))


def test_promotion_is_attended_within_its_own_chunk():
    """Every noisy pass after the first crosses tau: the copy from pass 1 replaces slot 3 before pass 1
    attends, and the commit pass attends that copy (not a commit-pass copy)."""

    def direction(chunk, tag, layer, item):
        return SCENES[1] if tag == 1 and chunk == 2 else SCENES[0]

    h = ReleasedHarness(direction, chunks=3)
    h.step(0)
    h.step(1)
    plan = h.mem.begin_chunk(6, C)
    h.ref.begin_chunk(6)
    assert [a.frame for a in plan.context] == [0, 1, 2, 3, 4, 5]
    for tag in TAGS:
        step = h.mem.begin_pass(commit=tag == COMMIT)
        for layer in range(LAYERS):
            k, v = h.make_kv(2, 6, tag, layer)
            h.ref.on_pass(layer, tag, k.double().flatten(2).tolist())
            with torch.no_grad():
                step.keys_values(layer, k, k, v)
            attended = h.decode(h.mem.view(layer)[0])
            expected = [(f, COMMIT, f) for f in range(6)]
            if tag != 0:
                expected[3] = (6, 1, 3)  # frame 6 as pass 1 computed it, in slot 3 at position 3; frame 3 is gone
            assert attended == expected, (tag, layer)
    update = h.mem.commit()
    assert update.promoted == (6,) and update.evicted == (3,)


def test_released_layout_fixes_its_switches():
    spec = make_spec("slow_fast", {"layout": "released"})
    o = spec.options
    assert (o.promote_on, o.promote_scope, o.interval, o.dedupe, o.positions) == (
        "any_pass",
        "per_layer",
        1,
        False,
        "bounded",
    )
    with pytest.raises(UserError, match="interval=2"):
        make_spec("slow_fast", {"layout": "released", "interval": 2})
    with pytest.raises(UserError, match="sink < fast"):
        ContextMemory(
            make_spec("slow_fast", {"layout": "released", "sink": 6, "fast": 6}),
            MemoryLayout(1, T, H, D, C),
            key_rotation=lambda k, p: k.flatten(1, 2),
        )


@pytest.mark.parametrize(
    "sizes",
    [
        dict(sink=2, slow=7, fast=6),
        dict(sink=1, slow=5, fast=3),
        dict(sink=3, slow=6, fast=9),
        dict(sink=2, slow=8, fast=6),
        dict(sink=3, slow=8, fast=6),
    ],
)
def test_other_sizes_match_the_reference_pass_by_pass(sizes):
    """Sizes other than 3/12/6: a sink that is not a whole chunk, a fast window of exactly one chunk, a fast
    window longer than the slow memory, and totals that are not whole chunks (16, and the embedded model's 17:
    slots left unfilled, positions past them)."""
    h = ReleasedHarness(scenes(4), sizes=sizes, chunks=60).run()
    assert all(len(p) > sizes["slow"] for p in h.ref.promotions)  # promotions filled and rolled the context


def test_a_total_that_is_not_whole_chunks_leaves_the_last_slots_unfilled():
    """3 + 8 + 6 = 17 slots: the cache holds 15 frames, so its local region holds 4 (the chunk and one cached
    frame, where whole chunks would give three), and positions run up to 16 past the two unfilled slots: sink
    0..2, the rest 5..13, the chunk at 14..16."""
    h = ReleasedHarness(scenes(3), tau=-1.0, sizes=dict(sink=3, slow=8, fast=6), chunks=40).run()
    plan = h.mem.begin_chunk(120, C)
    assert [a.frame for a in plan.context] == list(range(11)) + [119]
    assert plan.positions == [0, 1, 2] + list(range(5, 14)) and list(plan.current_positions) == [14, 15, 16]
    assert plan.tier("slow") == list(range(3, 11)) and plan.tier("fast") == [119]


def test_a_fast_window_that_would_write_chunks_over_context_slots_is_refused_with_one_line():
    sizes = dict(sink=1, slow=4, fast=3)  # 8 slots: the chunk would take slots 3..5, two of them context slots
    spec = make_spec("slow_fast", {"layout": "released", **sizes})
    with pytest.raises(UserError) as err:
        ContextMemory(spec, MemoryLayout(LAYERS, T, H, D, C), key_rotation=lambda k, p: k.flatten(1, 2))
    message = str(err.value)
    assert "\n" not in message and "= 8" in message and "fast >= 5" in message
    for fits in ({**sizes, "fast": 5}, {**sizes, "slow": 4 - 8 % C}):  # the suggested sizes are accepted
        make_spec("slow_fast", {"layout": "released", **fits}, chunk_frames=C)
    with pytest.raises(UserError, match="over its last context slots"):
        make_spec("slow_fast", {"layout": "released", **sizes}, chunk_frames=C)  # checked before any work too
    with pytest.raises(ValueError, match="rule 0"):
        ReleasedReference(**sizes)
    make_spec("slow_fast", {"layout": "tiered", **sizes}, chunk_frames=C)  # our layout takes any size


def test_a_batch_of_two_rotates_every_samples_keys_at_the_slot_positions():
    """Batch 2 over 60 chunks: both samples attend the reference's frames at its positions. The released code
    rotates only sample 0's cached keys correctly (it sets the frame count of `grid_sizes[0]` alone); this is
    the release with that line fixed, as the README says."""
    h = ReleasedHarness(scenes(5), batch=2, chunks=60).run()
    assert all(h.ref.promotions)
