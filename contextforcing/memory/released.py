"""The official Context Forcing inference cache, exactly (`slow_fast` with `layout=released`): one object, its slot
layout (`ReleasedCache`, four rules below) and its promotion rule (`ReleasedSurprisal`: per layer, every pass, the
copy made and attended inside the deciding pass). tests/memory/released_reference.py states the same rules in plain
Python; tests/memory/test_released_layout.py checks every pass of long rollouts against it.
"""

from __future__ import annotations

import torch

from contextforcing.errors import UserError, option
from contextforcing.memory.plan import Attended, ChunkPlan, CommitChanges, RecachePlan
from contextforcing.memory.policies import Copy, Promotion, bounded_positions, mean_key, window_recache
from contextforcing.memory.spec import TierParams


class ReleasedCache:
    """The official Context Forcing inference cache (slow_fast with `layout=released`), as four rules:

    1. It fills like a plain cache of `capacity` = sink + slow + fast slots, a chunk at a time: frame f lands
       in slot f, so until the cache is full a chunk attends every past frame. Slots [sink, sink + slow) are
       the context (slow) region, the rest the local region; once full, only the local region rolls, by a
       chunk, and the new chunk takes the last filled slots. When the capacity is not whole chunks, its last
       capacity % chunk slots are never filled (`usable`) and the local region holds that many frames less.
    2. A promotion happens inside the pass that decides it (`promote`), before that pass's attention: the
       chunk's first frame, as that pass computed it, is copied into context slot sink + k for the k-th
       promotion (k < slow; the frame there is dropped), later into the last context slot after the
       context region rolls by one (FIFO). The chunk attends the copy from that pass on.
    3. Every chunk whose first frame is at least `fast` is checked (no interval), on every pass.
    4. Similarity is decided per layer, averaging per-sample cosines over the batch (`ReleasedSurprisal`).
    Positions: sink 0..sink-1, everything else contiguous up to min(t, capacity - 1), the chunk last (the slot
    indices when the capacity is whole chunks; past the unfilled slots' worth otherwise).
    """

    per_layer = True  # rule 4: each layer decides alone, so each holds its own slots
    fold_alpha = None

    def __init__(self, params: TierParams, chunk_frames: int):
        self.p, self.chunk_frames = params, chunk_frames
        self.capacity = params.capacity
        self.usable = params.capacity - params.capacity % chunk_frames  # slots that ever hold a frame
        self.slots: list[tuple[str, int]] = []  # cached entries in slot order: ('main', frame) or ('slow', frame)
        self.promotions = 0
        self._chunk: ChunkPlan | None = None

    def promotion(self, num_layers: int, tokens_per_frame: int) -> "ReleasedSurprisal":
        return ReleasedSurprisal(self.p, num_layers, tokens_per_frame)

    def store_slots(self, max_frames: int | None) -> int:
        """The capacity: a promoted copy replaces the entry it displaces."""
        return self.capacity

    def kept_frame(self, start: int, frames: int) -> int:
        return start  # rule 2: the chunk's first frame

    def _tier(self, slot: int) -> str:
        if slot < self.p.sink:
            return "sink"
        return "slow" if slot < self.p.sink + self.p.slow else "fast"

    def plan(self, chunk: int, start: int, frames: int) -> ChunkPlan:
        sink = min(self.p.sink, len(self.slots))
        positions, current = bounded_positions(sink, len(self.slots) - sink, frames, start, self.capacity)
        context = tuple(
            Attended(self._tier(i), f, p, kind == "slow") for i, ((kind, f), p) in enumerate(zip(self.slots, positions))
        )
        self._chunk = ChunkPlan(chunk, start, frames, context, tuple(current))
        return self._chunk

    def recent_frames(self, next_start: int) -> list[int]:
        """Frames of the last `fast - chunk` (less the unfilled slots) still cached as themselves, outside the sink."""
        oldest = next_start - (self.p.window - (self.capacity - self.usable) - self.chunk_frames)
        return [f for i, (kind, f) in enumerate(self.slots) if kind == "main" and i >= self.p.sink and f >= oldest]

    def recache_frames(self, next_start: int, mode: str) -> list[int]:
        return self.recent_frames(next_start)

    def recache(self, chunk: int, next_start: int, mode: str, clear: bool = False) -> RecachePlan:
        """The recent frames, attending the rest of what the next chunk attends (the released code has no
        prompt switch; this is our window recache on its layout)."""
        return window_recache(self, chunk, next_start)

    def promotion_check(self, chunk: int, start: int) -> str:
        return "ask" if self.p.slow and start >= self.p.window else "no"

    def promote(self, start: int) -> tuple[ChunkPlan, tuple[str, int]]:
        """Copy the current chunk's first frame into the context region now; returns the chunk's new plan
        and the entry it displaced."""
        s, n = self.p.sink, self.p.slow
        if self.promotions < n:
            dropped, self.slots[s + self.promotions] = self.slots[s + self.promotions], ("slow", start)
        else:
            dropped = self.slots.pop(s)
            self.slots.insert(s + n - 1, ("slow", start))
        self.promotions += 1
        c = self._chunk
        return self.plan(c.chunk, c.start, c.frames), dropped

    def commit(self, start: int, frames: int, promote: bool) -> CommitChanges:
        """Append the chunk; then roll the local region so that the next chunk fits."""
        assert not promote, "the released cache promotes inside the pass (promote), never at commit"
        changes = CommitChanges()
        self.slots += [("main", f) for f in range(start, start + frames)]
        local = self.p.sink + self.p.slow
        while len(self.slots) + self.chunk_frames > self.usable:
            kind, frame = self.slots.pop(local)
            changes.evicted.append(frame)
        return changes

    def flush(self) -> list[tuple[str, int]]:
        raise UserError(
            f"the released Context Forcing cache has no flush; switch prompts without {option('flush_on_switch')} "
            "or use layout=tiered"
        )

    def tiers(self) -> dict[str, list[int]]:
        out = {"sink": [], "slow": [], "fast": []}
        for i, (_, f) in enumerate(self.slots):
            out[self._tier(i)].append(f)
        return out


class ReleasedSurprisal(Promotion):
    def __init__(self, params: TierParams, num_layers: int, tokens_per_frame: int):
        super().__init__(params, num_layers, tokens_per_frame)
        self.previous: list[torch.Tensor | None] = [None] * num_layers
        self.promoted: set[int] = set()

    def begin_chunk(self):
        super().begin_chunk()
        self.promoted.clear()

    def observe(self, layer, group, k, v, commit):  # one layer per group
        current, previous = mean_key(k), self.previous[layer]
        self.previous[layer] = current  # always the last call's, whatever it decided (as released)
        if previous is None or layer in self.promoted or group.check != "ask":
            return None
        sim = float(torch.cosine_similarity(current, previous, dim=1).mean())  # per sample, then the batch mean
        self._record(group, sim)
        if sim >= self.tau:
            return None
        self.promoted.add(layer)
        return Copy({layer: self._kept_frame(k, v)}, now=True)

    def at_commit(self, group):
        return False  # done inside the pass
