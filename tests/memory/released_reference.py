"""Plain-Python reference of the released Context Forcing cache, written from its four rules alone.

No code is shared with `contextforcing.memory`. The cache is modelled the way the official code keeps it:
per layer, an array of `cap = sink + slow + fast` slots and a fill pointer `end` (how many slots hold
frames), where a frame's RoPE position is its slot index.

1. Fill: chunk frames are written at slots [end, end + C); `end` grows until the cache is full. When a
   chunk does not fit, only the local region [sink + slow, cap) rolls left by the overflow; slots
   [sink, sink + slow) (the context region) and the sink never move.
2. Promotion inside the pass: the pass's first latent frame (its K/V as that pass computed them) is
   written, before that pass's attention, into slot sink + k for the k-th promotion of the layer while
   k < slow; after that the context region rolls left by one and the copy takes its last slot.
3. Every chunk starting at frame >= fast is eligible, once per chunk and layer, on any pass (noisy or
   commit), comparing with the previous call of that layer, whatever it was.
4. Similarity: per layer, the cosine of the token-mean pre-RoPE key with the previous call's, per batch
   item, averaged over the batch; promote when below tau.

0. Sizes: the official cache fills and rolls whole chunks, so these rules hold when cap is a whole number of
   chunks (C). Otherwise it never fills its last cap % C slots (and with fast == C its roll writes each new
   chunk over context slots); that is not stated here, and the layout refuses such sizes.

Contents are symbolic: (frame, tag) where tag is the pass that wrote the K/V (a noisy pass index, or
COMMIT). A chunk attends slots [0, end) at positions 0..end-1, and its own frames at end..end+C-1.
"""

from __future__ import annotations

import math

COMMIT = "commit"


def _mean(vectors):
    return [sum(col) / len(vectors) for col in zip(*vectors)]


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


class ReleasedReference:
    def __init__(self, *, sink=3, slow=12, fast=6, tau=0.95, chunk=3, layers=2):
        self.S, self.N, self.W, self.C, self.tau, self.layers = sink, slow, fast, chunk, tau, layers
        self.cap = sink + slow + fast
        if self.cap % chunk:
            raise ValueError(f"rule 0: cap {self.cap} is not a whole number of {chunk}-frame chunks")
        self.cache = [[None] * self.cap for _ in range(layers)]  # slot -> (frame, tag)
        self.end = 0
        self.count = [0] * layers
        self.prev = [None] * layers  # per layer: per batch item, the previous call's mean key
        self.promoted_now = [False] * layers
        self.start = 0
        self.promotions = [[] for _ in range(layers)]  # (start frame, tag) per layer
        self.sims = []  # (start, layer, tag, similarity)

    def begin_chunk(self, start: int) -> None:
        self.start = start
        self.promoted_now = [False] * self.layers
        overflow = self.end + self.C - self.cap
        if overflow > 0:
            local = self.S + self.N
            for cache in self.cache:
                cache[local:] = cache[local + overflow :] + [None] * overflow
            self.end -= overflow

    def attended(self, layer: int) -> list[tuple[int, int, object]]:
        """(position, frame, tag) of every cached frame the layer attends now, in slot order."""
        return [(slot, *self.cache[layer][slot]) for slot in range(self.end)]

    def current_positions(self) -> list[int]:
        return list(range(self.end, self.end + self.C))

    def on_pass(self, layer: int, tag, keys) -> None:
        """A pass hands over `layer`'s keys, keys[b][token] = flat vector; runs before its attention."""
        current = [_mean(tokens) for tokens in keys]
        previous, self.prev[layer] = self.prev[layer], current
        if previous is None or self.promoted_now[layer] or self.start < self.W:
            return
        sim = sum(_cos(a, b) for a, b in zip(current, previous)) / len(current)
        self.sims.append((self.start, layer, tag, sim))
        if sim >= self.tau:
            return
        cache, k = self.cache[layer], self.count[layer]
        if k < self.N:
            slot = self.S + k
        else:
            cache[self.S : self.S + self.N - 1] = cache[self.S + 1 : self.S + self.N]
            slot = self.S + self.N - 1
        cache[slot] = (self.start, tag)
        self.count[layer] += 1
        self.promoted_now[layer] = True
        self.promotions[layer].append((self.start, tag))

    def commit(self) -> None:
        for cache in self.cache:
            for i in range(self.C):
                cache[self.end + i] = (self.start + i, COMMIT)
        self.end += self.C
