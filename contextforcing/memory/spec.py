"""What a user sets for a context memory: each policy's typed options, `MemorySpec` (a policy and its options,
`contextforcing.Memory`), `make_spec` from strings, and `TierParams`, the options translated into the tiered
mechanism with their sizes checked (`tier_params`). The bookkeeping that follows them is in `policies.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from contextforcing.config import from_dict
from contextforcing.errors import UserError, option


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
    # view: overlap with the current view (camera headings) | keys: like the last chunk's keys | text: made under a
    # prompt like the current one | auto: view for a room-anchored model (it has headings), keys for any other
    score: str = "auto"


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
    "score": ("auto", "view", "keys", "text"),
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
    # most frames attended by one chunk (current included): the bounded position range; None: unbounded. Derived
    # once here (the host plan reads it every chunk).
    capacity: int | None = field(init=False)

    def __post_init__(self):
        attended_slow = self.slow if self.attend_slow is None else self.attend_slow
        object.__setattr__(self, "capacity", None if self.window is None else self.sink + attended_slow + self.window)

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
        p = _retrieve_params(o)
    else:
        p = _slow_fast_params(o)
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
        raise UserError(released_size_error(p.sink, p.slow, p.window, chunk_frames))
    return p


RECACHE_MODES = ("window", "longlive")


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


def _retrieve_params(o: RetrieveOptions) -> TierParams:
    """A uniform slow tier as the bank, of which `top_k` are attended, chosen by `score`."""
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
    return p


def _slow_fast_params(o: SlowFastOptions) -> TierParams:
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
    return p


def released_size_error(sink: int, slow: int, fast: int, chunk_frames: int) -> str:
    """Why the released cache is not reproduced at these sizes, and the sizes that are.

    The official cache writes whole chunks: the last (sink + slow + fast) % chunk slots are never filled and
    each new chunk goes to the last filled slots. With fast < chunk + that remainder those slots reach into
    the context region, so every chunk overwrites context slots (and the promotions made into them)."""
    capacity = sink + slow + fast
    short = capacity % chunk_frames
    return (
        f"layout=released with sink + slow + fast = {sink} + {slow} + {fast} = {capacity} (not whole "
        f"{chunk_frames}-frame chunks) and fast={fast}: the released cache writes each new chunk over its last "
        f"context slots there, which is not reproduced; use fast >= {chunk_frames + short} or whole chunks "
        f"(e.g. slow={slow - short})"
    )
