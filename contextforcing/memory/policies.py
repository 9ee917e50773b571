"""Memory policies: which stored latent frames a chunk attends, in which tier, at which position.

A policy is host-side bookkeeping in Python ints; it never touches tensors. `ContextMemory` asks it for a
plan (`memory.plan.ChunkPlan`) before each chunk and tells it about each commit; the policy answers with
the frames to evict, promote and fold. Every scheme of the field is one configuration of one of two
layouts:

`tiered` (every policy; Context Forcing as the paper describes it)
  tier   what it holds                                        used by
  sink   the first `sink` committed frames, pinned             sink, relative, ema_sink, slow_fast
  slow   copies of promoted keyframes, FIFO of size `slow`     slow_fast
  fast   the most recent frames; `window` counts the current   all (full: unbounded)
         chunk too, so a chunk sees window - chunk cached ones

`released` (slow_fast only: the official Context Forcing code's cache, `released.ReleasedCache`)
  one plain cache of sink + slow + fast slots that fills in frame order, a chunk at a time (slots past the
  last whole chunk stay empty); once full only the local region after the context slots rolls, and a
  promoted keyframe overwrites context slot sink + k (k-th promotion; FIFO once the context slots hold
  promotions only). See `ReleasedCache` for the four rules.

Positions: `absolute` gives each frame its own index (grows with the video); `bounded` puts the sink at
0..S-1 and every other attended frame contiguously, ending at min(t, capacity - 1) where t is the
current chunk's last frame, with the current chunk on the last slots (Context Forcing Eq. 8; equal to
Infinity-RoPE / LongLive-infinite relative positions once the memory is full).

What a user sets (each policy's options, `MemorySpec`, their translation into `TierParams`) is in `spec.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contextforcing.errors import UserError
from contextforcing.memory.plan import Attended, ChunkPlan, CommitChanges, RecachePlan
from contextforcing.memory.spec import TierParams


def bounded_positions(
    sink: int, others: int, frames: int, start: int, capacity: int | None
) -> tuple[list[int], list[int]]:
    """Bounded RoPE positions: the sink at 0..sink-1, then `others` attended frames and the current chunk
    contiguously, ending at min(start + frames - 1, capacity - 1). Returns (context positions, current)."""
    anchor = start + frames - 1 if capacity is None else min(start + frames - 1, capacity - 1)
    first = anchor - (others + frames) + 1
    return list(range(sink)) + list(range(first, first + others)), list(range(anchor - frames + 1, anchor + 1))


def window_recache(policy, chunk: int, next_start: int) -> RecachePlan:
    """Our recache: the recent frames the next chunk attends, re-encoded attending everything else it
    attends (sink, slow) at the positions it will give them."""
    upcoming = policy.plan(chunk, next_start, policy.chunk_frames)
    frames = policy.recent_frames(next_start)
    own = {a.frame: a.position for a in upcoming.context if not a.copy and a.frame in frames}
    context = tuple(a for a in upcoming.context if a.frame not in own)
    return RecachePlan(frames, [own[f] for f in frames], context, list(frames))


class TieredPolicy:
    """Tier bookkeeping for one memory (one per layer when promotion is decided per layer)."""

    def __init__(self, params: TierParams, chunk_frames: int):
        self.p, self.chunk_frames = params, chunk_frames
        self.per_layer = params.per_layer  # each layer decides its promotions alone (and so holds its own tiers)
        self.fold_alpha = params.ema_alpha  # EMA sink: evicted frames folded into the sink with this weight
        self.sink: list[int] = []
        self.slow: list[int] = []
        self.fast: list[int] = []  # committed recent frames, oldest first
        self._pending_fold: list[int] = []
        self._sink_open = params.sink > 0  # still accepting frames into the sink

    def promotion(self, num_layers: int, tokens_per_frame: int) -> Promotion:
        """The strategy that decides this memory's promotions (below)."""
        p = self.p
        strategy = Promotion if not p.surprisal else PassSurprisal if p.promote_on == "any_pass" else CommitSurprisal
        return strategy(p, num_layers, tokens_per_frame)

    def store_slots(self, max_frames: int | None) -> int:
        """Slots of a store for this memory: the most frames it holds at once (`full`: the video's length)."""
        p = self.p
        if p.capacity is None:
            if max_frames is None:
                raise UserError("an unbounded memory policy ('full') needs the video length (max_frames)")
            return max_frames
        # EMA folding keeps up to a sink's worth of evicted frames until their group is complete; a copy
        # promoted on a noisy pass waits in a staging slot until the commit evicts the oldest slow frame.
        staged = p.surprisal and p.promote_on == "any_pass"
        waiting = p.slow - p.attend_slow if p.attend_slow is not None else 0  # a bank's frames not attended
        return p.capacity + waiting + (p.sink if p.ema_alpha is not None else 0) + (1 if staged else 0)

    def kept_frame(self, start: int, frames: int) -> int:
        return self.p.kept_frame(start, frames)

    # -- planning --------------------------------------------------------------------------------
    def plan(self, chunk: int, start: int, frames: int) -> ChunkPlan:
        fast = self._cached_fast(start, frames)
        slow = self._attended_slow([f for f in self.slow if not (self.p.dedupe and f in fast)], start)
        entries = [("sink", f, False) for f in self.sink] + [("slow", f, True) for f in slow]
        entries += [("fast", f, False) for f in fast]
        if self.p.bounded:
            positions, current = bounded_positions(
                len(self.sink), len(entries) - len(self.sink), frames, start, self.p.capacity
            )
        else:
            positions, current = [f for _, f, _ in entries], list(range(start, start + frames))
        context = tuple(Attended(t, f, p, c) for (t, f, c), p in zip(entries, positions))
        return ChunkPlan(chunk, start, frames, context, tuple(current))

    def _attended_slow(self, candidates: list[int], start: int) -> list[int]:
        """The slow frames the chunk at `start` attends (tiered: every one)."""
        return candidates

    def _cached_fast(self, start: int, frames: int) -> list[int]:
        if self.p.window is None:
            return list(self.fast)
        oldest = start - (self.p.window - frames)
        return [f for f in self.fast if f >= oldest]

    def recent_frames(self, next_start: int) -> list[int]:
        """The cached fast frames the chunk at `next_start` will attend (a prompt switch re-encodes them)."""
        return self._cached_fast(next_start, self.chunk_frames)

    # -- prompt switch -----------------------------------------------------------------------------
    def recache_frames(self, next_start: int, mode: str) -> list[int]:
        """Frames whose clean latents a prompt switch before `next_start` re-encodes (the stream keeps them)."""
        if mode == "window":
            return self.recent_frames(next_start)
        return list(range(max(0, next_start - self.p.capacity), next_start))

    def recache(self, chunk: int, next_start: int, mode: str, clear: bool = False) -> RecachePlan:
        """The recache of a prompt switch before chunk `chunk` at `next_start`.

        window (ours): the cached fast frames the next chunk attends, attending what else it attends (sink,
          slow) at the positions it will give them (`window_recache`; a flush is done before, by the memory).
        longlive (LongLive 1.0's recache, `sink` policy): its cache holds the sink and the last `window`
          frames; a switch at t re-encodes the last min(capacity, t) frames in one unmasked pass at their
          frame indices. With its global sink kept and t > capacity, the first `sink` of those would land on
          the protected sink and are discarded, so the last `window` frames are re-encoded attending the old
          sink; with t <= capacity the sink frames are re-encoded too (LongLive's code does so, against its
          own comment). `clear` is its `global_sink: false`: the cache is cleared and the first `sink`
          recached frames become the new sink.
        """
        if mode == "window":
            return window_recache(self, chunk, next_start)
        count = min(self.p.capacity, next_start)
        stored = set(self.sink) | set(self.recent_frames(next_start))
        if clear:
            frames = list(range(next_start - count, next_start))
            new_sink = frames[: self.p.sink]
            return RecachePlan(frames, frames, (), [f for f in frames if f in stored or f in new_sink], new_sink)
        if next_start > self.p.capacity:  # the protected sink: attended, not rewritten
            frames = list(range(next_start - self.p.window, next_start))
            context = tuple(Attended("sink", f, f) for f in self.sink)
        else:
            frames, context = list(range(next_start)), ()
        return RecachePlan(frames, frames, context, [f for f in frames if f in stored])

    def adopt_sink(self, new_sink: list[int], next_start: int) -> list[tuple[str, int]]:
        """Make `new_sink` the sink (LongLive's cleared cache); returns the storage entries no longer needed."""
        before = [("main", f) for f in self.sink + self.fast]
        self.sink = list(new_sink)
        self._sink_open = len(self.sink) < self.p.sink
        self.fast = [f for f in self.fast if f not in self.sink]
        self.fast = self._cached_fast(next_start, self.chunk_frames)
        kept = {("main", f) for f in self.sink + self.fast}
        return [e for e in before if e not in kept]

    # -- promotion -------------------------------------------------------------------------------
    def promotion_check(self, chunk: int, start: int) -> str:
        """'no', 'yes', or 'ask' (needs the surprisal signal) for the chunk that starts at `start`."""
        if self.p.slow == 0 or self.p.rule == "none":
            return "no"
        # A chunk that (re)fills the sink is never also promoted: it would be attended twice.
        eligible = (
            not self._sink_open and start >= max(self.p.sink, self.p.window or 0) and chunk % self.p.interval == 0
        )
        if not eligible:
            return "no"
        return "yes" if self.p.rule == "uniform" else "ask"

    # -- commit ----------------------------------------------------------------------------------
    def commit(self, start: int, frames: int, promote: bool) -> CommitChanges:
        """The chunk [start, start+frames) was committed; update tiers and say what storage must do."""
        changes = CommitChanges()
        for f in range(start, start + frames):
            if self._sink_open and len(self.sink) < self.p.sink:
                self.sink.append(f)
            else:
                self.fast.append(f)
        self._sink_open = self._sink_open and len(self.sink) < self.p.sink
        if promote:
            kept = self.p.kept_frame(start, frames)
            self.slow.append(kept)
            changes.promoted.append(kept)
            while len(self.slow) > self.p.slow:
                changes.slow_evicted.append(self.slow.pop(0))
        if self.p.window is not None:
            # The next chunk sees window - chunk_frames cached frames; older ones go.
            keep_from = start + frames - (self.p.window - self.chunk_frames)
            gone = [f for f in self.fast if f < keep_from]
            self.fast = [f for f in self.fast if f >= keep_from]
            if self.p.ema_alpha is None:
                changes.evicted.extend(gone)
            else:
                # Frames waiting to be folded keep their storage until their group is complete.
                waiting = self._pending_fold + gone
                changes.folded.extend(self._fold(gone))
                changes.evicted.extend(f for f in waiting if f not in self._pending_fold)
        return changes

    def _fold(self, gone: list[int]) -> list[tuple[int, int]]:
        """Group evicted frames by sink size; each full group is folded into the sink frame by frame."""
        self._pending_fold.extend(gone)
        pairs = []
        n = len(self.sink)
        while n and len(self._pending_fold) >= n:
            group, self._pending_fold = self._pending_fold[:n], self._pending_fold[n:]
            pairs.extend(zip(self.sink, group))
        return pairs

    def flush(self) -> list[tuple[str, int]]:
        """Prompt switch with flush: drop sink and slow; the sink refills from the next commits. Returns the
        dropped storage entries ('main' sink frames, 'slow' copies)."""
        dropped = [("main", f) for f in self.sink] + [("slow", f) for f in self.slow]
        self.sink, self.slow = [], []
        self._sink_open = self.p.sink > 0
        return dropped

    def tiers(self) -> dict[str, list[int]]:
        return {"sink": list(self.sink), "slow": list(self.slow), "fast": list(self.fast)}


# -- promotion: when a keyframe is promoted ----------------------------------------------------------------------
# When a slow_fast memory promotes a keyframe: one small strategy per rule, chosen once from the options.
#
# A strategy sees every pass's pre-RoPE keys of every layer before that layer attends (`observe`) and is
# asked at each commit whether the committed chunk is promoted (`at_commit`). It knows nothing of storage:
# `observe` returns a `Copy` for the memory to store (the chunk's kept frame as this pass computed it). A
# `group` is any object with `layers` (the layers that decide together) and `check` (what the policy allows
# for the current chunk: 'no', 'yes' or 'ask', fixed when the chunk is planned); strategies read `check`
# only when they need it, so a compiled forward of a rule without a signal never depends on it.
#
#   Promotion        promotion by position alone (uniform rule), or never
#   CommitSurprisal  ours: one decision per chunk on the clean commit pass, cos of pooled mean keys < tau,
#                    against the previous chunk (`compare=previous`, the paper) or the last checked chunk
#                    (`compare=checked`), keys pooled over every layer or the first layer's only (`key_layers`)
#   PassSurprisal    the released code's timing in the tiered layout (`promote_on=any_pass`): every pass is
#                    compared with the previous pass; the first crossing copies that pass's first frame,
#                    attended from the next chunk
# The released cache's rule (per layer, every pass, the copy attended within the deciding pass) lives with its
# layout in `released.py`; each policy object names its strategy (`TieredPolicy.promotion`).


@dataclass(frozen=True)
class Copy:
    """A promotion taken during a pass: store these K/V [B, T, H, D] per layer as the chunk's slow copy, either
    attended from the next chunk (`now` False) or at once, in this very pass (`now` True)."""

    layers: dict[int, tuple[torch.Tensor, torch.Tensor]]
    now: bool


def mean_key(k: torch.Tensor) -> torch.Tensor:
    """A chunk's representation in one layer: its pre-RoPE keys [B, L, H, D] averaged over tokens, [B, H*D]."""
    return k.detach().float().mean(dim=1).flatten(1)


def pooled_key(keys: list[torch.Tensor]) -> torch.Tensor:
    """One chunk's representation from its mean keys of some layers ([B, H*D] each): averaged over the layers and
    the batch ([H*D]; one representation, one cosine, not a mean of per-layer cosines)."""
    return torch.stack(keys).mean(dim=(0, 1))


def pooled_cosine(current: list[torch.Tensor], previous: list[torch.Tensor]) -> torch.Tensor:
    """cos between two pooled representations (`pooled_key`)."""
    return torch.cosine_similarity(pooled_key(current), pooled_key(previous), dim=0)


class SurprisalTrack:
    """The commit-pass surprisal rule on a sequence of chunk representations, in plain host logic: what a chunk
    is compared with, and whether it is promoted. `CommitSurprisal` runs it on the keys the commit passes see;
    training replays it on keys computed for a whole clip at once (`key_layers=first`, `training.stages.common`)."""

    def __init__(self, tau: float, compare: str):
        self.tau, self.compare = tau, compare
        self.previous: torch.Tensor | None = None

    def decide(self, current: torch.Tensor | None, check: str) -> tuple[bool, float | None]:
        """`check` is the policy's answer for the chunk ('no', 'ask'); returns (promote, similarity or None)."""
        checked = check == "ask"
        promote, sim = False, None
        if checked and current is not None and self.previous is not None:
            sim = float(torch.cosine_similarity(current, self.previous, dim=0))  # one host read per checked chunk
            promote = sim < self.tau
        if current is not None and (checked or self.compare == "previous"):
            self.previous = current
        return promote, sim


class Promotion:
    """The interface; also the strategy for memories whose promotions need no signal.

    The signal of the group holding layer 0 is the one reported (`similarity`)."""

    def __init__(self, params: TierParams, num_layers: int, tokens_per_frame: int):
        self.tau, self.tokens_per_frame, self.keep_last = params.tau, tokens_per_frame, params.keep_last
        self.similarity: float | None = None  # the signal of group 0's decision in this chunk, if one was taken

    def begin_chunk(self) -> None:
        self.similarity = None

    def observe(self, layer: int, group, k: torch.Tensor, v: torch.Tensor, commit: bool) -> Copy | None:
        """This pass's pre-RoPE keys and values [B, L, H, D] of `layer`, before the layer attends."""
        return None

    def at_commit(self, group) -> bool:
        return group.check == "yes"

    def _kept_frame(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent frame of this pass's chunk keys and values [B, frames*T, H, D] that a promotion copies
        (`keep`: the first, or the last), detached."""
        t = self.tokens_per_frame
        first = k.shape[1] - t if self.keep_last else 0
        return k[:, first : first + t].detach(), v[:, first : first + t].detach()

    def _record(self, group, sim: float) -> None:
        if group.layers[0] == 0:
            self.similarity = sim if self.similarity is None else min(self.similarity, sim)


class CommitSurprisal(Promotion):
    def __init__(self, params: TierParams, num_layers: int, tokens_per_frame: int):
        super().__init__(params, num_layers, tokens_per_frame)
        self.first_layer, self.compare = params.first_layer_keys, params.compare
        self.current: list[torch.Tensor | None] = [None] * num_layers
        self.tracks: dict[int, SurprisalTrack] = {}  # per group (by its first layer)

    def observe(self, layer, group, k, v, commit):
        if commit and (not self.first_layer or layer == group.layers[0]):  # only the layers `at_commit` pools
            self.current[layer] = mean_key(k)
        return None

    def at_commit(self, group):
        layers = group.layers[:1] if self.first_layer else group.layers
        keys = [self.current[i] for i in layers]
        current = None if any(k is None for k in keys) else pooled_key(keys)
        if group.layers[0] not in self.tracks:  # the group's first commit
            self.tracks[group.layers[0]] = SurprisalTrack(self.tau, self.compare)
        promote, sim = self.tracks[group.layers[0]].decide(current, group.check)
        if sim is not None:
            self._record(group, sim)  # the tier layout depends on it
        return promote


class PassSurprisal(Promotion):
    def __init__(self, params: TierParams, num_layers: int, tokens_per_frame: int):
        super().__init__(params, num_layers, tokens_per_frame)
        self.current: list[torch.Tensor | None] = [None] * num_layers
        self.previous: list[torch.Tensor | None] = [None] * num_layers
        self.staged: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.promoted: set[int] = set()  # groups (by first layer) that promoted in this chunk

    def begin_chunk(self):
        super().begin_chunk()
        self.promoted.clear()

    def observe(self, layer, group, k, v, commit):
        self.current[layer] = mean_key(k)
        self.staged[layer] = self._kept_frame(k, v)
        layers = group.layers
        if layer != layers[-1]:  # a group decides once all its layers have their keys of this pass
            return None
        copy = None
        ready = all(self.previous[i] is not None for i in layers)
        if ready and layers[0] not in self.promoted and group.check == "ask":
            sim = float(pooled_cosine([self.current[i] for i in layers], [self.previous[i] for i in layers]))
            self._record(group, sim)
            if sim < self.tau:
                copy = Copy({i: self.staged[i] for i in layers}, now=False)
                self.promoted.add(layers[0])
        for i in layers:
            self.previous[i] = self.current[i]
        self.staged = {}
        return copy

    def at_commit(self, group):
        return group.layers[0] in self.promoted
