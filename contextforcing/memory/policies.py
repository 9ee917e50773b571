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

`released` (slow_fast only: the official Context Forcing code's cache, `ReleasedPolicy`)
  one plain cache of sink + slow + fast slots that fills in frame order, a chunk at a time (slots past the
  last whole chunk stay empty); once full only the local region after the context slots rolls, and a
  promoted keyframe overwrites context slot sink + k (k-th promotion; FIFO once the context slots hold
  promotions only). See `ReleasedPolicy` for the four rules.

Positions: `absolute` gives each frame its own index (grows with the video); `bounded` puts the sink at
0..S-1 and every other attended frame contiguously, ending at min(t, capacity - 1) where t is the
current chunk's last frame, with the current chunk on the last slots (Context Forcing Eq. 8; equal to
Infinity-RoPE / LongLive-infinite relative positions once the memory is full).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from contextforcing.config import from_dict
from contextforcing.errors import UserError, option
from contextforcing.memory.plan import Attended, ChunkPlan, CommitChanges, RecachePlan
from contextforcing.memory.promotion import CommitSurprisal, PassSurprisal, Promotion


# -- options: what a user sets --------------------------------------------------------------------------
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
    tau: float = 0.95  # promote when cos(mean key of this chunk, of the chunk it is compared with) < tau
    interval: int = 2  # surprisal: check every `interval` chunks; uniform: promote every `interval` chunks
    compare: str = "previous"  # surprisal: compare with the previous chunk (paper) | the last checked chunk
    keep: str = "first"  # which latent frame of a promoted chunk is copied: first (paper) | last
    key_layers: str = "all"  # surprisal, global scope: keys pooled over all layers (paper) | the first layer only
    positions: str = "bounded"  # bounded | absolute (the "w/o bounded PE" ablation)
    promote_on: str = "commit"  # commit: decide on the clean commit pass; any_pass: noisy passes too (released)
    promote_scope: str = "global"  # global: one decision for all layers; per_layer: released code
    dedupe: bool = True  # never attend a frame twice (slow copy and fast original)
    layout: str = "tiered"  # tiered | released: the official code's cache, exactly (sets the four switches above)


@dataclass(frozen=True)
class RetrieveOptions:
    """Retrieval memory: sink + the `top_k` keyframes of a bounded bank most relevant to the chunk + fast window."""

    sink: int = 3
    bank: int = 32  # keyframes kept (FIFO): the chunk's last frame every `interval` chunks
    top_k: int = 8  # of them attended per chunk, chosen by `score`
    fast: int = 6
    interval: int = 2
    score: str = "view"  # view: overlap with the current view (camera headings) | keys: like the last chunk's keys


POLICY_OPTIONS = {
    "full": FullOptions,
    "rolling": RollingOptions,
    "sink": SinkOptions,
    "relative": SinkOptions,
    "ema_sink": EmaSinkOptions,
    "slow_fast": SlowFastOptions,
    "retrieve": RetrieveOptions,
}

OPTION_CHOICES = {
    "rule": ("surprisal", "uniform"),
    "positions": ("bounded", "absolute"),
    "promote_on": ("commit", "any_pass"),
    "promote_scope": ("global", "per_layer"),
    "layout": ("tiered", "released"),
    "compare": ("previous", "checked"),
    "keep": ("first", "last"),
    "key_layers": ("all", "first"),
    "score": ("view", "keys"),
}

# What `layout=released` fixes: the released code decides on every pass (noisy ones too), per layer,
# every chunk, attends a promoted frame's copy beside the frame itself, with bounded positions.
RELEASED_SWITCHES = {
    "rule": "surprisal",
    "promote_on": "any_pass",
    "promote_scope": "per_layer",
    "interval": 1,
    "dedupe": False,
    "positions": "bounded",
}
# Options of the tiered layout's own rule that the released cache has no place for: it compares every pass
# with the previous pass of its layer and copies the chunk's first frame. They take those values whatever a
# trained memory set (so `layout=released` can be asked for on top of any trained memory).
TIERED_RULE_OPTIONS = {"compare": "previous", "key_layers": "all", "keep": "first"}


@dataclass(frozen=True)
class MemorySpec:
    """A resolved memory: a policy name and its typed options. `contextforcing.Memory` is this class.

    Build one with a named constructor (`MemorySpec.slow_fast(slow=6)`) or, from strings, `make_spec`. A named
    constructor remembers which options it was given (`given`): a pipeline whose model was trained with the
    same policy changes only those and keeps its trained values for the rest (`Pipeline.memory_for`);
    `.exact()` takes every other option from the policy's defaults instead. `given` is None for a spec that
    is complete as it stands (`make_spec`, a resolved memory)."""

    name: str
    options: object
    given: frozenset[str] | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return {"policy": self.name, **dataclasses.asdict(self.options)}

    def overrides(self) -> dict:
        """The options given to a named constructor, by name (all of them for a complete spec)."""
        values = dataclasses.asdict(self.options)
        return values if self.given is None else {k: values[k] for k in sorted(self.given)}

    def exact(self) -> "MemorySpec":
        """This memory as it stands: options not given keep the policy's defaults, not a trained memory's."""
        return dataclasses.replace(self, given=None)

    def params(self, chunk_frames: int) -> "TierParams":
        return tier_params(self, chunk_frames)

    @classmethod
    def _given(cls, name: str, options: dict) -> "MemorySpec":
        return dataclasses.replace(make_spec(name, options), given=frozenset(options))

    @classmethod
    def full(cls) -> "MemorySpec":
        return cls._given("full", {})

    @classmethod
    def rolling(cls, **options) -> "MemorySpec":
        return cls._given("rolling", options)

    @classmethod
    def sink(cls, **options) -> "MemorySpec":
        return cls._given("sink", options)

    @classmethod
    def relative(cls, **options) -> "MemorySpec":
        return cls._given("relative", options)

    @classmethod
    def ema_sink(cls, **options) -> "MemorySpec":
        return cls._given("ema_sink", options)

    @classmethod
    def slow_fast(cls, **options) -> "MemorySpec":
        return cls._given("slow_fast", options)

    @classmethod
    def retrieve(cls, **options) -> "MemorySpec":
        return cls._given("retrieve", options)


def make_spec(name: str, overrides: dict | None = None, chunk_frames: int | None = None) -> MemorySpec:
    """A policy by name with `overrides` (as parsed from `--memory-opt key=value`) over its defaults; with
    `chunk_frames`, its sizes are checked too (before any work is done)."""
    if name not in POLICY_OPTIONS:
        raise UserError(f"unknown memory policy {name!r}; choose one of {', '.join(POLICY_OPTIONS)}")
    values = dict(overrides or {})
    if name == "slow_fast" and values.get("layout") == "released":
        values = _released(values)
    options = from_dict(POLICY_OPTIONS[name], values, where=f"memory policy {name!r}")
    for key, allowed in OPTION_CHOICES.items():
        value = getattr(options, key, None)
        if value is not None and value not in allowed:
            raise UserError(f"memory option {key}={value!r} is not one of {', '.join(allowed)}")
    spec = MemorySpec(name, options)
    if chunk_frames is not None:
        tier_params(spec, chunk_frames)
    return spec


def _released(values: dict) -> dict:
    """`layout=released` sets every released switch; giving one of them another value is a contradiction."""
    clashes = [f"{k}={values[k]}" for k, v in RELEASED_SWITCHES.items() if k in values and values[k] != v]
    if clashes:
        raise UserError(
            f"memory option layout=released fixes {', '.join(f'{k}={v}' for k, v in RELEASED_SWITCHES.items())}; "
            f"drop {', '.join(clashes)}"
        )
    return {**values, **RELEASED_SWITCHES, **TIERED_RULE_OPTIONS}


# -- the mechanism: what the options mean ----------------------------------------------------------------
@dataclass(frozen=True)
class TierParams:
    """A policy's options translated into the tiered mechanism (or the released cache)."""

    sink: int = 0
    slow: int = 0
    window: int | None = None  # None: unbounded
    bounded: bool = False
    ema_alpha: float | None = None
    rule: str = "none"  # none | surprisal | uniform
    tau: float = 0.95
    interval: int = 1
    dedupe: bool = True
    promote_on: str = "commit"  # commit | any_pass
    per_layer: bool = False  # promotion decided per layer
    layout: str = "tiered"  # tiered | released
    compare: str = "previous"  # commit-pass surprisal: previous | checked
    keep_last: bool = False  # a promotion copies the chunk's last latent frame (else its first)
    first_layer_keys: bool = False  # commit-pass surprisal, global scope: the first layer's keys only
    attend_slow: int | None = None  # retrieval: slow frames a chunk attends (the others wait in the bank)
    score: str | None = None  # retrieval: what chooses them (view | keys); None: every slow frame is attended

    @property
    def capacity(self) -> int | None:
        """Most frames attended by one chunk (current included): the bounded position range."""
        attended_slow = self.slow if self.attend_slow is None else self.attend_slow
        return None if self.window is None else self.sink + attended_slow + self.window

    @property
    def surprisal(self) -> bool:
        return self.slow > 0 and self.rule == "surprisal"

    def kept_frame(self, start: int, frames: int) -> int:
        """The latent frame of the chunk [start, start + frames) that a promotion copies."""
        return start + frames - 1 if self.keep_last else start


def tier_params(spec: MemorySpec, chunk_frames: int) -> TierParams:
    """Translate named options into the mechanism, validating sizes."""
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
    elif name == "retrieve":
        p = TierParams(
            sink=o.sink,
            slow=o.bank,
            window=o.fast,
            bounded=True,
            rule="uniform",
            interval=o.interval,
            keep_last=True,
            attend_slow=o.top_k,
            score=o.score,
        )
        if not 0 <= o.top_k <= o.bank or (o.bank > 0 and o.sink < 1) or o.interval < 1:
            raise UserError(
                f"retrieve needs 0 <= top_k <= bank, a sink of at least 1 frame and interval >= 1 (got top_k="
                f"{o.top_k}, bank={o.bank}, sink={o.sink}, interval={o.interval})"
            )
    else:
        commit_rule = o.promote_on == "commit" and o.layout == "tiered"  # compare and key_layers apply to it only
        p = TierParams(
            sink=o.sink,
            slow=o.slow,
            window=o.fast,
            bounded=o.positions == "bounded",
            rule=o.rule,
            tau=o.tau,
            interval=o.interval,
            dedupe=o.dedupe,
            promote_on=o.promote_on,
            per_layer=o.promote_scope == "per_layer",
            layout=o.layout,
            compare=o.compare if commit_rule else "previous",
            keep_last=o.keep == "last",
            first_layer_keys=commit_rule and o.key_layers == "first" and o.promote_scope == "global",
        )
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
    if p.layout == "released" and p.sink >= p.window:
        # The k-th promotion overwrites context slot sink + k, which must hold an already cached frame.
        raise UserError(f"layout=released needs sink < fast (got sink={p.sink}, fast={p.window})")
    if p.layout == "released" and p.window < chunk_frames + p.capacity % chunk_frames:
        from contextforcing.memory.released import released_size_error

        raise UserError(released_size_error(p.sink, p.slow, p.window, chunk_frames))
    return p


def bounded_positions(
    sink: int, others: int, frames: int, start: int, capacity: int | None
) -> tuple[list[int], list[int]]:
    """Bounded RoPE positions: the sink at 0..sink-1, then `others` attended frames and the current chunk
    contiguously, ending at min(start + frames - 1, capacity - 1). Returns (context positions, current)."""
    anchor = start + frames - 1 if capacity is None else min(start + frames - 1, capacity - 1)
    first = anchor - (others + frames) + 1
    return list(range(sink)) + list(range(first, first + others)), list(range(anchor - frames + 1, anchor + 1))


RECACHE_MODES = ("window", "longlive")


def window_recache(policy, chunk: int, next_start: int) -> RecachePlan:
    """Our recache: the recent frames the next chunk attends, re-encoded attending everything else it
    attends (sink, slow) at the positions it will give them."""
    upcoming = policy.plan(chunk, next_start, policy.chunk_frames)
    frames = policy.recent_frames(next_start)
    own = {a.frame: a.position for a in upcoming.context if not a.copy and a.frame in frames}
    context = tuple(a for a in upcoming.context if a.frame not in own)
    return RecachePlan(frames, [own[f] for f in frames], context, list(frames))


def check_recache(spec: MemorySpec, mode: str, flush: bool = False) -> None:
    """A prompt-switch recache mode (and flush) this memory can run, checked before any work is done."""
    if flush and spec.name == "slow_fast" and spec.options.layout == "released":
        raise UserError(
            "the released Context Forcing cache has no flush; switch prompts without flushing or use layout=tiered"
        )
    if mode not in RECACHE_MODES:
        raise UserError(f"unknown recache mode {mode!r}; choose one of {', '.join(RECACHE_MODES)}")
    if mode == "longlive" and spec.name != "sink":
        raise UserError(
            f"recache=longlive reproduces LongLive 1.0, whose cache is the sink policy "
            f"({option('memory')} sink); not {spec.name!r}"
        )


class TieredPolicy:
    """Tier bookkeeping for one memory (one per layer when promotion is decided per layer)."""

    promotes_within_chunk = False

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
        """The strategy that decides this memory's promotions (`promotion.py`)."""
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


def make_policy(params: TierParams, chunk_frames: int):
    """The policy object of resolved parameters: the released cache (`released.py`), a retrieval memory
    (`retrieve.py`) or the tiered one."""
    if params.layout == "released":
        from contextforcing.memory.released import ReleasedCache

        return ReleasedCache(params, chunk_frames)
    if params.score is not None:
        from contextforcing.memory.retrieve import RetrievePolicy

        return RetrievePolicy(params, chunk_frames)
    return TieredPolicy(params, chunk_frames)
