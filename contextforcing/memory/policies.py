"""Memory policies: which stored latent frames a chunk attends, in which tier, at which position.

A policy is host-side bookkeeping in Python ints; it never touches tensors. `ContextMemory` asks it for a
plan before each chunk and tells it about each commit; the policy answers with the frames to evict,
promote and fold. Every scheme of the field is one configuration of the same tiered mechanism:

  tier   what it holds                                        used by
  sink   the first `sink` committed frames, pinned             sink, relative, ema_sink, slow_fast
  slow   copies of promoted keyframes, FIFO of size `slow`     slow_fast
  fast   the most recent frames; `window` counts the current   all (full: unbounded)
         chunk too, so a chunk sees window - chunk cached ones

Positions: `absolute` gives each frame its own index (grows with the video); `bounded` puts the sink at
0..S-1 and every other attended frame contiguously, ending at min(t, capacity - 1) where t is the
current chunk's last frame, with the current chunk on the last slots (Context Forcing Eq. 8; equal to
Infinity-RoPE / LongLive-infinite relative positions once the memory is full).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from contextforcing.config import from_dict
from contextforcing.errors import UserError

TIERS = ("sink", "slow", "fast")


@dataclass(frozen=True)
class FullOptions:
    """Every past frame at its absolute position (CausVid / Self-Forcing as trained)."""


@dataclass(frozen=True)
class RollingOptions:
    """Last `window` latent frames (current chunk included) at absolute positions (Self-Forcing local)."""

    window: int = 12


@dataclass(frozen=True)
class SinkOptions:
    """First `sink` frames plus the last `window` (current chunk included); LongLive 1.0 is 3 + 9 = 12."""

    sink: int = 3
    window: int = 9


@dataclass(frozen=True)
class EmaSinkOptions:
    """Reward Forcing: sink + window, evicted frames folded into the sink by EMA (3 + 6 = 9 frames)."""

    sink: int = 3
    window: int = 6
    alpha: float = 0.999


@dataclass(frozen=True)
class SlowFastOptions:
    """Context Forcing: sink N_s, slow memory N_c of promoted keyframes, fast memory N_l (current included)."""

    sink: int = 3
    slow: int = 12
    fast: int = 6
    rule: str = "surprisal"  # surprisal | uniform
    tau: float = 0.95  # promote when cos(mean key of this chunk, of the previous chunk) < tau
    interval: int = 2  # surprisal: check every `interval` chunks; uniform: promote every `interval` chunks
    positions: str = "bounded"  # bounded | absolute (the "w/o bounded PE" ablation)
    promote_on: str = "commit"  # commit: decide on the clean commit pass; any_pass: released code, noisy passes too
    promote_scope: str = "global"  # global: one decision for all layers; per_layer: released code
    dedupe: bool = True  # never attend a frame twice (slow copy and fast original)


POLICY_OPTIONS = {
    "full": FullOptions,
    "rolling": RollingOptions,
    "sink": SinkOptions,
    "relative": SinkOptions,
    "ema_sink": EmaSinkOptions,
    "slow_fast": SlowFastOptions,
}

_CHOICES = {
    "rule": ("surprisal", "uniform"),
    "positions": ("bounded", "absolute"),
    "promote_on": ("commit", "any_pass"),
    "promote_scope": ("global", "per_layer"),
}


@dataclass(frozen=True)
class PolicySpec:
    """A resolved policy: its name and its typed options."""

    name: str
    options: object

    def to_dict(self) -> dict:
        return {"policy": self.name, **dataclasses.asdict(self.options)}


def make_spec(name: str, overrides: dict | None = None) -> PolicySpec:
    if name not in POLICY_OPTIONS:
        raise UserError(f"unknown memory policy {name!r}; choose one of {', '.join(POLICY_OPTIONS)}")
    options = from_dict(POLICY_OPTIONS[name], overrides or {}, where=f"memory policy {name!r}")
    for key, allowed in _CHOICES.items():
        value = getattr(options, key, None)
        if value is not None and value not in allowed:
            raise UserError(f"memory option {key}={value!r} is not one of {', '.join(allowed)}")
    return PolicySpec(name, options)


@dataclass
class TierParams:
    sink: int = 0
    slow: int = 0
    window: int | None = None  # None: unbounded
    bounded: bool = False
    ema_alpha: float | None = None
    rule: str = "none"  # none | surprisal | uniform
    tau: float = 0.95
    interval: int = 1
    dedupe: bool = True

    @property
    def capacity(self) -> int | None:
        """Most frames attended by one chunk (current included): the bounded position range."""
        return None if self.window is None else self.sink + self.slow + self.window


def tier_params(spec: PolicySpec, chunk_frames: int) -> TierParams:
    """Translate named options into the tiered mechanism, validating sizes."""
    o, name = spec.options, spec.name
    if name == "full":
        p = TierParams()
    elif name == "rolling":
        p = TierParams(window=o.window)
    elif name in ("sink", "relative"):
        p = TierParams(sink=o.sink, window=o.window, bounded=name == "relative")
    elif name == "ema_sink":
        p = TierParams(sink=o.sink, window=o.window, bounded=True, ema_alpha=o.alpha)
        if o.sink < 1:
            raise UserError("ema_sink needs a sink of at least 1 frame to fold evicted frames into")
        if not 0.0 <= o.alpha <= 1.0:
            raise UserError(f"ema_sink alpha must be in [0, 1], got {o.alpha}")
    else:
        p = TierParams(sink=o.sink, slow=o.slow, window=o.fast, bounded=o.positions == "bounded",
                       rule=o.rule, tau=o.tau, interval=o.interval, dedupe=o.dedupe)
        if o.slow > 0 and o.sink < 1:
            raise UserError("slow_fast with a slow memory needs a sink of at least 1 frame (sink=0 given)")
        if o.interval < 1:
            raise UserError(f"slow_fast interval must be at least 1 chunk, got {o.interval}")
        if not -1.0 <= o.tau <= 1.0:  # a cosine similarity: outside [-1, 1] it would always or never promote
            raise UserError(f"slow_fast tau is a cosine similarity threshold in [-1, 1], got {o.tau}")
    for what in ("sink", "slow"):
        if getattr(p, what) < 0:
            raise UserError(f"memory size {what}={getattr(p, what)} must not be negative")
    if p.window is not None and p.window < chunk_frames:
        raise UserError(
            f"memory window of {p.window} latent frames cannot hold the current chunk of {chunk_frames} frames"
        )
    return p


@dataclass
class Plan:
    """What one chunk attends: ordered (tier, frame) entries of stored frames, and every position."""

    start: int
    frames: int
    entries: list[tuple[str, int]]  # stored frames attended, in order: sink, slow, fast
    positions: list[int]  # position of each entry
    current_positions: list[int]  # positions of the chunk's own frames

    def tier(self, name: str) -> list[int]:
        return [f for t, f in self.entries if t == name]

    def trace(self, chunk: int) -> dict:
        current = list(range(self.start, self.start + self.frames))
        pos: dict[str, object] = {}
        for (tier, frame), p in zip(self.entries, self.positions):
            key = str(frame)
            pos[key] = [pos[key], p] if key in pos else p  # a frame attended twice lists both positions
        for frame, p in zip(current, self.current_positions):
            pos[str(frame)] = p
        return {
            "chunk": chunk,
            "sink": self.tier("sink"),
            "slow": self.tier("slow"),
            "fast": self.tier("fast") + current,
            "current": current,
            "positions": pos,
        }


@dataclass
class CommitChanges:
    """Storage work a commit asks for; frames are absolute latent frame indices."""

    evicted: list[int] = field(default_factory=list)  # stored frames (sink/fast) no longer needed
    promoted: list[int] = field(default_factory=list)  # frames copied into the slow tier
    slow_evicted: list[int] = field(default_factory=list)  # slow copies dropped
    folded: list[tuple[int, int]] = field(default_factory=list)  # (sink frame, evicted frame) EMA pairs


class TieredPolicy:
    """Tier bookkeeping for one memory (one per layer when promotion is decided per layer)."""

    def __init__(self, params: TierParams, chunk_frames: int):
        self.p, self.chunk_frames = params, chunk_frames
        self.sink: list[int] = []
        self.slow: list[int] = []
        self.fast: list[int] = []  # committed recent frames, oldest first
        self._pending_fold: list[int] = []
        self._sink_open = params.sink > 0  # still accepting frames into the sink

    # -- planning --------------------------------------------------------------------------------
    def plan(self, start: int, frames: int) -> Plan:
        fast = self._cached_fast(start, frames)
        slow = [f for f in self.slow if not (self.p.dedupe and f in fast)]
        entries = [("sink", f) for f in self.sink] + [("slow", f) for f in slow] + [("fast", f) for f in fast]
        if not self.p.bounded:
            positions = [f for _, f in entries]
            current = list(range(start, start + frames))
        else:
            anchor = start + frames - 1
            if self.p.capacity is not None:
                anchor = min(anchor, self.p.capacity - 1)
            rest = len(entries) - len(self.sink) + frames
            first = anchor - rest + 1
            positions = list(range(len(self.sink))) + list(range(first, first + rest - frames))
            current = list(range(anchor - frames + 1, anchor + 1))
        return Plan(start, frames, entries, positions, current)

    def _cached_fast(self, start: int, frames: int) -> list[int]:
        if self.p.window is None:
            return list(self.fast)
        oldest = start - (self.p.window - frames)
        return [f for f in self.fast if f >= oldest]

    # -- promotion -------------------------------------------------------------------------------
    def promotion_check(self, chunk: int, start: int) -> str:
        """'no', 'yes', or 'ask' (needs the surprisal signal) for the chunk that starts at `start`."""
        if self.p.slow == 0 or self.p.rule == "none":
            return "no"
        # A chunk that (re)fills the sink is never also promoted: it would be attended twice.
        eligible = (not self._sink_open and start >= max(self.p.sink, self.p.window or 0)
                    and chunk % self.p.interval == 0)
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
            self.slow.append(start)
            changes.promoted.append(start)
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

    def flush(self) -> list[int]:
        """Prompt switch with flush: drop sink and slow; the sink refills from the next commits."""
        dropped = self.sink + self.slow
        self.sink, self.slow = [], []
        self._sink_open = self.p.sink > 0
        return dropped

    @property
    def pending_fold(self) -> list[int]:
        return list(self._pending_fold)
