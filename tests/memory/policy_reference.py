"""Plain-Python reference of the context-memory policies, written from the specification alone.

It is deliberately independent of `contextforcing.memory`: no shared code, no incremental tier lists
copied from the library. Each policy is described by what a chunk that starts at frame `s` must attend:

* sink   -- the first `sink` frames committed since the start (or the last flush), pinned;
* slow   -- (slow_fast) a FIFO of promoted keyframes, one latent frame per promotion (the chunk's first, or its
            last with keep=last); surprisal compares a chunk's pooled key with the previous chunk's, or with the
            last chunk that was checked (compare=checked), pooled over all layers or the first (key_layers=first);
* fast   -- the committed non-sink frames inside the window [s - (window - C), s); the window counts
            the current chunk too, so a chunk sees `window - C` cached frames; `full` has no window.

Positions are either the frame index (absolute) or bounded: sink at 0..len(sink)-1 and every other
attended frame (slow, cached fast, current) contiguous, ending at min(s + C - 1, L - 1), with the current
chunk on the last C positions; L = sink + slow + window.

Stored *content* is tracked symbolically, so tests can rebuild the exact tensors the memory must return:
a content is a dict {source: weight}, where a source is (frame, pass-tag) -- the tensors the test wrote
for that frame on that pass. Plain frames have weight 1; the EMA sink mixes several sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULTS = {
    "full": {},
    "rolling": {"window": 12},
    "sink": {"sink": 3, "window": 9},
    "relative": {"sink": 3, "window": 9},
    "ema_sink": {"sink": 3, "window": 6, "alpha": 0.999},
    "slow_fast": {
        "sink": 3,
        "slow": 12,
        "fast": 6,
        "rule": "surprisal",
        "tau": 0.95,
        "interval": 2,
        "positions": "bounded",
        "promote_on": "commit",
        "promote_scope": "global",
        "dedupe": True,
        "compare": "previous",
        "keep": "first",
        "key_layers": "all",
    },
}

COMMIT = "commit"


@dataclass
class RefPlan:
    """What one layer attends for a chunk starting at `start`."""

    start: int
    entries: list  # (tier, frame, content) in attention order: sink, slow, cached fast
    positions: list  # one per entry
    current: list  # positions of the chunk's own frames

    def frames(self, tier=None):
        return [f for t, f, _ in self.entries if tier is None or t == tier]


def _mean(vectors):
    n = len(vectors)
    return [sum(v[i] for v in vectors) / n for i in range(len(vectors[0]))]


def _cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


class Reference:
    def __init__(self, policy: str, options: dict | None = None, *, layers: int = 2, chunk: int = 3):
        o = dict(DEFAULTS[policy])
        o.update(options or {})
        self.policy, self.o, self.C, self.layers = policy, o, chunk, layers
        self.S = o.get("sink", 0)
        self.W = o.get("fast") if policy == "slow_fast" else o.get("window")  # None: unbounded (full)
        self.N = o.get("slow", 0) if policy == "slow_fast" else 0
        if policy in ("relative", "ema_sink"):
            self.bounded = True
        elif policy == "slow_fast":
            self.bounded = o["positions"] == "bounded"
        else:
            self.bounded = False
        self.L = self.S + self.N + self.W if self.bounded else None
        per_layer = policy == "slow_fast" and o["promote_scope"] == "per_layer"
        # Layers that decide promotion together.
        self.groups = [[i] for i in range(layers)] if per_layer else [list(range(layers))]

        self.sinks: list[int] = []  # sink frames since the start / last flush, in commit order
        self.non_sink: list[int] = []  # every committed frame that did not go to the sink
        self.content: dict[int, dict] = {}  # frame -> its main (sink/fast) stored content
        self.slow = [[] for _ in self.groups]  # per group: [(frame, content)], oldest first
        self.evicted: set[int] = set()  # (ema) fast frames already evicted from the window
        self.pending: list[int] = []  # (ema) evicted frames waiting for a complete group
        self.prev_key = [None for _ in self.groups]  # last compared mean key per group
        self.chunk_key = [None for _ in self.groups]  # this chunk's commit-pass mean key per group
        self.promoted_now = [None for _ in self.groups]  # any_pass: source promoted during this chunk
        self.promotions = [[] for _ in self.groups]  # (chunk, frame) log, for tests
        self.sims: dict = {}  # (chunk, group) -> similarity used for the commit decision

    # -- helpers -----------------------------------------------------------------------------------
    def group_of(self, layer: int) -> int:
        return next(i for i, g in enumerate(self.groups) if layer in g)

    def cached_fast(self, start: int) -> list[int]:
        if self.W is None:
            return [f for f in self.non_sink if f < start]
        lo = start - (self.W - self.C)
        return [f for f in self.non_sink if lo <= f < start]

    def eligible(self, chunk: int, start: int) -> bool:
        if self.policy != "slow_fast" or self.N == 0:
            return False
        # A chunk whose frames (re)fill the sink, e.g. right after a flush, is not promoted as well.
        sink_full_without_it = len(self.sinks) >= self.S and start not in self.sinks
        return sink_full_without_it and start >= max(self.S, self.W) and chunk % self.o["interval"] == 0

    # -- planning ----------------------------------------------------------------------------------
    def plan(self, start: int, layer: int = 0) -> RefPlan:
        g = self.group_of(layer)
        window = self.cached_fast(start)
        sink = [("sink", f, self.content[f]) for f in self.sinks]
        slow = [("slow", f, c) for f, c in self.slow[g] if not (self.o.get("dedupe", True) and f in window)]
        fast = [("fast", f, self.content[f]) for f in window]
        entries = sink + slow + fast
        if not self.bounded:
            positions = [f for _, f, _ in entries]
            current = list(range(start, start + self.C))
        else:
            anchor = min(start + self.C - 1, self.L - 1)
            others = len(slow) + len(fast) + self.C
            lowest = anchor - others + 1
            positions = list(range(len(sink))) + list(range(lowest, lowest + len(slow) + len(fast)))
            current = list(range(anchor - self.C + 1, anchor + 1))
        return RefPlan(start, entries, positions, current)

    def trace(self, chunk: int, start: int) -> dict:
        plan = self.plan(start, 0)
        current = list(range(start, start + self.C))
        positions: dict = {}
        for (_, f, _), p in zip(plan.entries, plan.positions):
            key = str(f)
            positions[key] = [positions[key], p] if key in positions else p
        for f, p in zip(current, plan.current):
            positions[str(f)] = p
        out = {
            "chunk": chunk,
            "sink": plan.frames("sink"),
            "slow": plan.frames("slow"),
            "fast": plan.frames("fast") + current,
            "current": current,
            "positions": positions,
        }
        if len(self.groups) > 1:
            out["slow_per_layer"] = [self.plan(start, g[0]).frames("slow") for g in self.groups]
        return out

    # -- passes and commits ------------------------------------------------------------------------
    def begin_chunk(self):
        self.chunk_key = [None for _ in self.groups]
        self.promoted_now = [None for _ in self.groups]

    def kept(self, start: int) -> int:
        """The frame of the chunk starting at `start` that a promotion copies."""
        return start + self.C - 1 if self.o["keep"] == "last" else start

    def signal_layers(self, group: list[int]) -> list[int]:
        """The layers whose keys the commit-pass rule pools: all of the group's, or (key_layers=first, one
        decision for all layers) only layer 0. Noisy-pass promotion always uses the whole group."""
        o = self.o
        if o["promote_on"] == "commit" and o["key_layers"] == "first" and o["promote_scope"] == "global":
            return [0]
        return group

    def pooled_key(self, layer_keys: dict, group: list[int]) -> list[float]:
        """One representation for a group: per layer and batch item the mean key over the chunk's tokens
        (flattened over heads), then averaged over the group's layers and the batch."""
        vectors = []
        for layer in group:
            for item in layer_keys[layer]:  # item: list of tokens, each a flat list over heads*dim
                vectors.append(_mean(item))
        return _mean(vectors)

    def on_pass(self, chunk: int, start: int, tag, layer_keys: dict) -> None:
        """A pass wrote keys: layer -> [batch][token][heads*dim] (plain floats). tag: COMMIT or noisy id."""
        if self.policy != "slow_fast" or self.o["rule"] != "surprisal":
            return
        for gi, group in enumerate(self.groups):
            if self.o["promote_on"] == "commit":
                key = self.pooled_key(layer_keys, self.signal_layers(group))
                if tag == COMMIT:
                    self.chunk_key[gi] = key
                continue
            # any_pass: compare with the previous call, whatever it was; the first crossing promotes.
            key = self.pooled_key(layer_keys, group)
            prev, self.prev_key[gi] = self.prev_key[gi], key
            if prev is None or self.promoted_now[gi] is not None or not self.eligible(chunk, start):
                continue
            if _cosine(key, prev) < self.o["tau"]:
                self.promoted_now[gi] = {(self.kept(start), tag): 1.0}

    def commit(self, chunk: int, start: int) -> None:
        frames = list(range(start, start + self.C))
        for f in frames:
            self.content[f] = {(f, COMMIT): 1.0}
            if len(self.sinks) < self.S:
                self.sinks.append(f)
            else:
                self.non_sink.append(f)
        if self.policy == "slow_fast":
            for gi in range(len(self.groups)):
                promote = self._decide(chunk, start, gi)
                if promote is not None:
                    self.slow[gi].append((self.kept(start), promote))
                    self.promotions[gi].append((chunk, self.kept(start)))
                    while len(self.slow[gi]) > self.N:
                        self.slow[gi].pop(0)
        if self.policy == "ema_sink":
            keep_from = start + self.C - (self.W - self.C)
            gone = [f for f in self.non_sink if f < keep_from and f not in self.evicted]
            self.evicted.update(gone)
            self.pending += gone
            a = self.o["alpha"]
            while len(self.sinks) == self.S and len(self.pending) >= self.S:
                group, self.pending = self.pending[: self.S], self.pending[self.S :]
                for sink_frame, g in zip(self.sinks, group):
                    mixed = {src: a * w for src, w in self.content[sink_frame].items()}
                    for src, w in self.content[g].items():
                        mixed[src] = mixed.get(src, 0.0) + (1 - a) * w
                    self.content[sink_frame] = mixed

    def _decide(self, chunk: int, start: int, gi: int):
        """The content to promote into group gi's slow memory at this commit, or None."""
        o = self.o
        if not self.eligible(chunk, start):
            decision = None
        elif o["rule"] == "uniform":
            decision = {(self.kept(start), COMMIT): 1.0}
        elif o["promote_on"] == "any_pass":
            decision = self.promoted_now[gi]
        else:
            prev, cur = self.prev_key[gi], self.chunk_key[gi]
            decision = None
            if prev is not None and cur is not None:
                sim = _cosine(cur, prev)
                self.sims[(chunk, gi)] = sim
                if sim < o["tau"]:
                    decision = {(self.kept(start), COMMIT): 1.0}
        # compare=previous: every chunk becomes the next one's reference; compare=checked: only checked chunks.
        checked = self.eligible(chunk, start)
        if o["rule"] == "surprisal" and o["promote_on"] == "commit" and (o["compare"] == "previous" or checked):
            self.prev_key[gi] = self.chunk_key[gi]
        return decision

    # -- prompt switch -----------------------------------------------------------------------------
    def recache(self, next_start: int, tag):
        """Frames re-encoded before the chunk at `next_start`, their positions there, and the context
        (sink and slow frames outside the window) they attend, per layer."""
        plans = [self.plan(next_start, layer) for layer in range(self.layers)]
        frames = plans[0].frames("fast")
        out = []
        for plan in plans:
            ctx = [(e, p) for e, p in zip(plan.entries, plan.positions) if e[0] != "fast" and e[1] not in frames]
            pos = [p for e, p in zip(plan.entries, plan.positions) if e[0] == "fast"]
            out.append(([e for e, _ in ctx], [p for _, p in ctx], pos))
        return frames, out

    def recached(self, frames, tag) -> None:
        for f in frames:
            self.content[f] = {(f, tag): 1.0}

    def flush(self) -> None:
        self.sinks = []
        self.slow = [[] for _ in self.groups]
