"""Plain-Python statement of LongLive 1.0's KV cache and its prompt-switch recache, for tests of ours.

Independent of `contextforcing.memory`: it tracks, slot by slot, which latent frame's K/V LongLive's
self-attention cache holds, at which RoPE position and under which prompt, through chunk generation and
prompt switches. Nothing here runs a model.

Sources, and what each pins
---------------------------
From the reference notes (peer_methods.md, LongLive 2.1) and a side-by-side trial against LongLive's code:
* The cache has `local_attn_size` slots (12) with the first `sink` (3) pinned; the rest roll. A chunk's
  K/V are written into the cache before its attention, and it attends the sink plus the most recent
  `local_attn_size - sink` slots, its own frames included.
* Keys are rotated when written, with the absolute frame index: a slot's position is its frame's index,
  for ever (the 1024-entry RoPE table caps LongLive at ~1024 latent frames; not modelled here).
* At a switch at frame counter t (the first frame of the next chunk): the cross-attention cache is reset;
  with `global_sink: false` the self-attention K/V are zeroed first; the last min(local_attn_size, t)
  generated frames are re-encoded in ONE pass at timestep 0 (`context_noise`) under the new prompt,
  attending the sink and those frames, and their cache entries are rewritten. t = 0 recaches nothing.
* `global_sink: true` (inference default) keeps the first prompt's sink and protects it during the
  recache; `global_sink: false` (long-video training default) writes the recached frames into every slot,
  so the first recached ones become the new sink.
* Issue 18 item 5: a switch "inside the first 12 latent frames" rewrites the sink slots even with
  `global_sink: true`, contrary to LongLive's own comment.

NOT pinned by the notes; taken from reading LongLive 1.0's code (facts only, the `v1.0` layout the notes
cite: `CausalWanSelfAttention.forward` with `sink_recache_after_switch`, `is_recompute`), and agreeing with
the issue's measurements. Each is a switch below only where it is cheap to vary:
1. Sink protection during the recache is decided by `is_recompute = current_end <= global_end and
   current_start > 0`, where the recache pass runs from current_start = t - min(L, t). So the sink is
   protected only when t > local_attn_size: the quirk boundary is t <= 12 INCLUDED (a switch at t = 12
   rewrites the sink too). `LongLiveSetup.sink_quirk=False` states the behaviour LongLive's comment intends
   (sink protected whenever global_sink), for comparison.
2. When the sink is protected, the first `sink` recached frames are computed but their K/V are written
   nowhere and attended by no one (`RecacheQuery.slot is None`): they influence nothing.
3. The recache pass applies NO causal mask: every re-encoded frame attends every key of the pass (the sink
   slots and all written recached frames, later ones included), and not itself when it is a dropped one.
   (LongLive builds a block-causal mask for that pass, but its cached attention path does not use it.)
   A different, later public revision of LongLive's file passes that mask to flex attention and decides
   protection from a `global_sink` flag on the cache instead; that variant is not modelled.
4. The recache does not move the cache's end indices: afterwards the next chunk continues as if no switch
   happened (it rolls normally from min(t, L) used slots).
5. `global_sink: false` zeroes K/V but not the indices; zeroed slots are attended only while fewer than
   `sink` slots are in use (a zero key and value, shown as None), which never happens with sink <= chunk.
6. A chunk's own frames are written at the tail before its attention; while fewer than `sink` slots are in
   use the sink part of the attention reads zero slots (None) too (again only if sink > chunk).
Not modelled: LongLive's "infinite" mode (un-rotated keys re-rotated by slot), batch > 1 (all samples
alike), the noisy denoising passes (they attend the same slots as the chunk's commit pass; only the
commit pass's K/V stay).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LongLiveSetup:
    """LongLive 1.0's inference settings (configs/longlive_inference.yaml): sink 3, 12 slots, chunks of 3."""

    sink: int = 3
    local_attn_size: int = 12  # cache slots, the sink included (our `sink` policy: sink + window)
    chunk: int = 3
    global_sink: bool = True
    sink_quirk: bool = True  # False: the sink is protected whenever global_sink (LongLive's comment, not its code)

    def __post_init__(self):
        if not 0 <= self.sink < self.local_attn_size or self.chunk < 1 or self.chunk > self.local_attn_size - self.sink:
            raise ValueError(f"impossible LongLive setup {self}")


@dataclass(frozen=True)
class Entry:
    """What a cache slot holds: one latent frame's K/V."""

    frame: int
    position: int  # RoPE position of its key (LongLive: the frame index)
    prompt: int  # prompt segment the K/V were computed under (0: the first prompt)


@dataclass(frozen=True)
class ChunkPass:
    """One generated chunk: its frames (= positions) and the keys it attends, in LongLive's order."""

    frames: tuple[int, ...]
    prompt: int
    keys: tuple[Entry | None, ...]  # sink slots then the local window, own frames last; None: a zero slot


@dataclass(frozen=True)
class RecacheQuery:
    frame: int
    position: int
    slot: int | None  # where its new K/V land; None: computed, then dropped (protected sink)


@dataclass(frozen=True)
class RecachePass:
    """A prompt switch at frame counter `t`."""

    t: int
    prompt: int  # the new prompt segment
    cleared: bool  # global_sink false: every slot zeroed before the recache
    sink_rewritten: bool  # whether the recache wrote into the sink slots
    queries: tuple[RecacheQuery, ...]  # the re-encoded frames, oldest first (one pass)
    keys: tuple[Entry | None, ...]  # what EVERY query attends (no mask), in slot order
    slots_after: tuple[Entry | None, ...]  # the whole cache afterwards, index = slot

    @property
    def frames(self) -> tuple[int, ...]:
        return tuple(q.frame for q in self.queries)


@dataclass
class LongLiveCache:
    """LongLive's self-attention cache of one layer (all layers alike), driven chunk by chunk."""

    setup: LongLiveSetup = field(default_factory=LongLiveSetup)
    t: int = 0  # frames generated so far (global_end_index in frames)
    prompt: int = 0
    used: int = 0  # local_end_index in frames
    slots: list = field(default_factory=list)

    def __post_init__(self):
        self.slots = [None] * self.setup.local_attn_size

    def _attended(self, end: int) -> tuple[Entry | None, ...]:
        """The sink slots, then the last local_attn_size - sink slots before `end`."""
        s, size = self.setup.sink, self.setup.local_attn_size
        return tuple(self.slots[:s]) + tuple(self.slots[max(s, end - (size - s)) : end])

    def generate_chunk(self) -> ChunkPass:
        s, size, c = self.setup.sink, self.setup.local_attn_size, self.setup.chunk
        if self.used + c > size:  # roll: shift the non-sink slots left by the overflow
            evict = self.used + c - size
            self.slots[s : self.used - evict] = self.slots[s + evict : self.used]
            self.used -= evict
        frames = tuple(range(self.t, self.t + c))
        for i, frame in enumerate(frames):
            self.slots[self.used + i] = Entry(frame, frame, self.prompt)
        self.used += c
        self.t += c
        return ChunkPass(frames, self.prompt, self._attended(self.used))

    def switch(self) -> RecachePass:
        setup = self.setup
        self.prompt += 1
        cleared = not setup.global_sink
        if cleared:
            self.slots = [None] * setup.local_attn_size
        count = min(setup.local_attn_size, self.t)
        start = self.t - count  # the recache pass's first frame; its first slot is 0 (used == count)
        assert self.used == count
        protected = setup.global_sink and (start > 0 or not setup.sink_quirk)
        first_written = min(setup.sink, count) if protected else 0
        queries = []
        for slot, frame in enumerate(range(start, self.t)):
            written = slot >= first_written
            if written:
                self.slots[slot] = Entry(frame, frame, self.prompt)
            queries.append(RecacheQuery(frame, frame, slot if written else None))
        return RecachePass(
            self.t,
            self.prompt,
            cleared,
            first_written == 0 and count > 0,
            tuple(queries),
            self._attended(self.used) if count else (),
            tuple(self.slots),
        )


# -- the three questions for one switch, after plain generation from frame 0 --------------------------------
def _run_to(t: int, setup: LongLiveSetup) -> LongLiveCache:
    if t % setup.chunk:
        raise ValueError(f"switches happen on chunk boundaries; t={t} is not a multiple of {setup.chunk}")
    cache = LongLiveCache(setup)
    while cache.t < t:
        cache.generate_chunk()
    return cache


def recache_pass(t: int, setup: LongLiveSetup = LongLiveSetup()) -> RecachePass:
    """Everything about a switch at frame counter t (the only switch, first prompt before it)."""
    return _run_to(t, setup).switch()


def recached_frames(t: int, setup: LongLiveSetup = LongLiveSetup()) -> list[int]:
    """(a) The latent frames LongLive re-encodes at a switch at t: the last min(local_attn_size, t)."""
    return list(recache_pass(t, setup).frames)


def recache_attention(t: int, setup: LongLiveSetup = LongLiveSetup()) -> list[tuple[int, int, list]]:
    """(b) Per re-encoded frame: (frame, query position, [(key frame, key position, key prompt) or None]).
    Every frame attends the same keys (no mask in the pass); None is a zero slot."""
    done = recache_pass(t, setup)
    keys = [None if k is None else (k.frame, k.position, k.prompt) for k in done.keys]
    return [(q.frame, q.position, keys) for q in done.queries]


def cache_after_switch(t: int, setup: LongLiveSetup = LongLiveSetup()) -> list[tuple[int, int, int] | None]:
    """(c) The cache after the switch, slot by slot: (frame, position, prompt), None for a zero slot."""
    return [None if e is None else (e.frame, e.position, e.prompt) for e in recache_pass(t, setup).slots_after]


def switch_frame(switch_frame_index: int, chunk: int = 3) -> int:
    """LongLive's `switch_frame_indices` entry i takes effect at the first chunk start >= it (one segment
    advance per chunk at most)."""
    return -(-switch_frame_index // chunk) * chunk
