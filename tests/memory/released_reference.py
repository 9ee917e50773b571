"""Plain-Python reference of the released Context Forcing cache, written from its four rules alone.

No code is shared with `contextforcing.memory`. The cache is modelled the way the official code keeps it:
per layer, an array of `cap = sink + slow + fast` slots and a fill pointer `end` (how many slots hold
frames), where a frame's RoPE position is its slot index.

1. Fill: chunk frames are written at slots [end, end + C); `end` grows a chunk at a time while the chunk
   fits. When it does not (end + C > cap), the local region rolls left by a whole chunk, as the code moves
   slots [cap - fast + C, cap) to [cap - fast, cap - C) (slots never filled roll in empty), and the chunk
   takes slots [end - C, end); slots [sink, sink + slow) (the context region) and the sink never move. So
   when cap is not whole chunks its last cap % C slots are never filled.
2. Promotion inside the pass: the pass's first latent frame (its K/V as that pass computed them) is
   written, before that pass's attention, into slot sink + k for the k-th promotion of the layer while
   k < slow; after that the context region rolls left by one and the copy takes its last slot.
3. Every chunk starting at frame >= fast is eligible, once per chunk and layer, on any pass (noisy or
   commit), comparing with the previous call of that layer, whatever it was.
4. Similarity: per layer, the cosine of the token-mean pre-RoPE key with the previous call's, per batch
   item, averaged over the batch; promote when below tau.

0. Sizes: with fast < C + cap % C the chunk's slots [end - C, end) reach into the context region, so each
   chunk overwrites context slots; that is not stated here, and the layout refuses such sizes.

Contents are symbolic: (frame, tag) where tag is the pass that wrote the K/V (a noisy pass index, or
COMMIT). A chunk attends slots [0, end); positions (the code re-rotates the stored keys every call): the sink
slots 0..sink-1, every other slot and then the chunk contiguous up to min(t, cap - 1), t the chunk's last
frame (so, with cap whole chunks, slot indices).
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
        if fast < chunk + self.cap % chunk:
            raise ValueError(f"rule 0: fast {fast} < chunk {chunk} + cap % chunk {self.cap % chunk}")
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
        if self.end + self.C > self.cap:
            first = self.cap - self.W
            for cache in self.cache:
                cache[first : self.cap - self.C] = cache[first + self.C : self.cap]
                cache[self.cap - self.C :] = [None] * self.C
            self.end -= self.C

    def _anchor(self) -> int:
        return min(self.start + self.C - 1, self.cap - 1)

    def attended(self, layer: int) -> list[tuple[int, int, object]]:
        """(position, frame, tag) of every cached frame the layer attends now, in slot order."""
        sink = min(self.S, self.end)
        first = self._anchor() - self.C - (self.end - sink) + 1
        positions = list(range(sink)) + list(range(first, first + self.end - sink))
        return [(p, *self.cache[layer][slot]) for slot, p in zip(range(self.end), positions)]

    def current_positions(self) -> list[int]:
        return list(range(self._anchor() - self.C + 1, self._anchor() + 1))

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
