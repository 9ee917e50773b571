"""ContextMemory: the preallocated K/V store of one stream, driven by a policy, read by the model per layer.

Lifecycle of one chunk (`VideoStream.step` drives it; the model only calls `begin_pass` and `layer`):

    plan = memory.begin_chunk(start, frames)         the policy plans what the chunk attends and where
    model(x, t, text, memory=memory)                 x4 denoising passes
    model(x0, 0, text, memory=memory, commit=True)   the clean pass, whose pre-RoPE K/V are stored
    update = memory.commit()                         the policy promotes / evicts / folds; storage follows

In every pass, each layer hands its chunk's keys (pre-RoPE and rotated) and values to
`memory.layer(i).keys_values(...)` and gets back what to attend: one read path and one write path.

Storage: pre-RoPE keys and values in per-layer slot tensors [B, S, T, H, D]; slots are recycled through a
free list, so nothing is shifted or cloned. Each layer also keeps a rotated-key buffer aligned with the
slots: `begin_chunk` rotates the planned slots into it once per chunk, at the positions the policy chose.
A pass writes the chunk's own rotated keys and values at the chunk's slots and attends over a slot range
in place, with a key mask only while some slot of the range is not attended (free while filling,
deduplicated, waiting to be folded). A bounded policy reads the same range (at least its capacity) from
the first chunk on, so every step of a stream has the same shapes (CUDA graphs, torch.compile without
recompiles). Keys that carry an autograd graph (training rollouts) get copies instead: a graph written
into buffers that later chunks overwrite would corrupt the backward pass.

tests/memory/gather_reference.py keeps the slow reference (a gathered, rotated copy per chunk); tests
check that both give the same outputs over long rollouts of every policy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from contextforcing.config import ModelConfig, VideoConfig
from contextforcing.errors import UserError
from contextforcing.memory.exit_grad import ExitGradients
from contextforcing.memory.plan import ChunkPlan, MemoryUpdate
from contextforcing.memory.policies import MemorySpec, check_recache, make_policy, tier_params
from contextforcing.memory.promotion import promotion_for

# (pre-RoPE keys [B, n, T, H, D], positions [n], and for a room-anchored model headings [B, n]) -> rotated keys
KeyRotation = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class MemoryLayout:
    """Sizes of what one latent frame stores per layer, all derived from the model and video configs."""

    num_layers: int
    tokens_per_frame: int
    num_heads: int
    head_dim: int
    chunk_frames: int

    @classmethod
    def for_model(cls, model: ModelConfig, video: VideoConfig) -> "MemoryLayout":
        return cls(model.num_layers, video.tokens_per_frame(model), model.num_heads, model.head_dim, video.chunk_frames)

    def frame_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of K plus V for one latent frame in one layer."""
        return 2 * self.tokens_per_frame * self.num_heads * self.head_dim * torch.finfo(dtype).bits // 8


class LayerView:
    """What one layer's self-attention reads and writes in the current pass (a handle on the memory)."""

    __slots__ = ("memory", "layer", "_context")

    def __init__(self, memory: "ContextMemory", layer: int):
        self.memory, self.layer = memory, layer
        self._context: ContextRead | None = None

    def keys_values(self, k: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor):
        """Hand over this pass's keys (pre-RoPE `k` and rotated `k_rot`) and values [B, frames*T, H, D];
        get the keys, values [B, Lk, H, D] and key mask [Lk] (None: every key) to attend.

        The memory takes the keys once per pass: a block that gradient checkpointing runs again reads the
        context the first run read and changes nothing twice."""
        if self._context is None:
            self._context = self.memory.exchange(self.layer, k, v, copy=k_rot.requires_grad or v.requires_grad)
        return self._context.with_chunk(k_rot, v)


@dataclass
class ContextRead:
    """What a layer attends besides the chunk's own keys and values.

    `tokens` None: `keys`/`values` [B, n*T, H, D] are a copy of the attended frames and the chunk is
    appended. Otherwise they are views of the memory's slot range (rotated keys, values): the chunk is
    written in place at `tokens` (its slots' token indices) and `mask` [L] (True = attend; None = every
    key) hides the slots this chunk does not see."""

    keys: torch.Tensor | None
    values: torch.Tensor | None
    mask: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    def with_chunk(self, k_rot: torch.Tensor, v: torch.Tensor):
        if self.tokens is None:
            if self.keys is None:
                return k_rot, v, None
            return torch.cat([self.keys, k_rot], 1), torch.cat([self.values, v], 1), None
        self.keys.index_copy_(1, self.tokens, k_rot)  # the store holds the model's dtype, as attention needs
        self.values.index_copy_(1, self.tokens, v)
        return self.keys, self.values, self.mask


class _SlotMap:
    """Which storage slot holds which (kind, frame); kind is 'main' (the frame) or 'slow' (a promoted copy)."""

    def __init__(self, size: int):
        self.size = size
        self.slot: dict[tuple[str, int], int] = {}
        self.free = list(range(size - 1, -1, -1))

    def allocate(self, key: tuple[str, int]) -> int:
        if key not in self.slot:
            if not self.free:
                raise RuntimeError(f"context memory is full ({self.size} frames); policy capacity is wrong")
            self.slot[key] = self.free.pop()
        return self.slot[key]

    def release(self, key: tuple[str, int]) -> None:
        self.free.append(self.slot.pop(key))


class _Group:
    """Layers that share one policy (all layers, or one layer when promotion is per layer)."""

    def __init__(self, policy, slots: int, layers: list[int]):
        self.policy, self.slots, self.layers = policy, _SlotMap(slots), layers
        self.plan: ChunkPlan | None = None
        self.view_index: torch.Tensor | None = None  # slots of the planned frames, in plan order
        self.current: list[int] = []  # slots of the chunk's own frames
        self.current_slots: torch.Tensor | None = None  # the same, as a tensor
        self.current_tokens: torch.Tensor | None = None  # token indices of the current slots
        self.extent = policy.p.capacity or 0  # attention reads slots [0, extent); see _slot_mask
        self.key_mask: torch.Tensor | None = None  # [extent * T], True where a key is attended
        self.within_chunk: list[tuple[int, tuple[str, int]]] = []  # (promoted frame, displaced entry) this chunk
        self.check = "no"  # what the policy allows the current chunk: 'no', 'yes' or 'ask' (the signal decides)

    def storage_key(self, attended) -> tuple[str, int]:
        return ("slow" if attended.copy else "main", attended.frame)


class ContextMemory:
    def __init__(
        self,
        spec: MemorySpec,
        layout: MemoryLayout,
        *,
        key_rotation: KeyRotation,
        batch: int = 1,
        device=None,
        dtype: torch.dtype = torch.float32,
        max_frames: int | None = None,
        headings: bool = False,
    ):
        """`headings`: the model's width positions follow a camera (room-anchored RoPE), so every stored frame
        keeps the heading it was made at and is rotated there whenever it is attended."""
        self.spec, self.layout, self.rotate_keys = spec, layout, key_rotation
        self.params = params = tier_params(spec, layout.chunk_frames)
        self.bounded = params.capacity is not None
        slots = self.slot_count(spec, layout.chunk_frames, max_frames)
        layer_sets = [[i] for i in range(layout.num_layers)] if params.per_layer else [list(range(layout.num_layers))]
        self.groups = [_Group(make_policy(params, layout.chunk_frames), slots, ls) for ls in layer_sets]
        self._group_of = {i: g for g in self.groups for i in g.layers}
        self.promotion = promotion_for(params, layout.num_layers, layout.tokens_per_frame)
        shape = (batch, slots, layout.tokens_per_frame, layout.num_heads, layout.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layout.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layout.num_layers)]
        self.k_rot = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layout.num_layers)]
        self.chunk_index = -1
        self.start = self.frames = 0
        self.current_position_ids: torch.Tensor | None = None  # the chunk's positions, as a tensor for the model
        self.batch = batch
        self.uses_headings = headings
        self.frame_headings: dict[int, tuple[float, ...]] = {}  # frame -> heading per sample (host floats)
        self.current_headings: torch.Tensor | None = None  # [B, frames] float64 for the model, or None
        self.rotations = 0  # number of context rotations, for tests and benchmarks
        self._recaching = False
        self._recache: list = []  # per group, the RecachePlan of a prompt switch in progress
        self._commit_pass = False
        self.exit_gradients: ExitGradients | None = None  # training only: Self-Forcing's gradient path

    def track_exit_gradients(self) -> None:
        """Training rollouts that reproduce Self-Forcing's in-place cache: later chunks back-propagate into the
        exit passes of the chunks they attend (memory/exit_grad.py)."""
        self.exit_gradients = ExitGradients(self.layout.tokens_per_frame, self._rotate_entries)

    def _rotate_entries(self, keys: torch.Tensor, attended) -> torch.Tensor:
        """Pre-RoPE keys [B, m, T, H, D] of attended entries, rotated where the plan places them (and, for a
        room-anchored model, at their camera headings)."""
        positions = [a.position for a in attended]
        if not self.uses_headings:
            return self.rotate_keys(keys, positions)
        return self.rotate_keys(keys, positions, self._headings_of([a.frame for a in attended]))

    @staticmethod
    def slot_count(spec: MemorySpec, chunk_frames: int, max_frames: int | None = None) -> int:
        """Slots of a policy's store: the most frames it holds at once (the free list raises beyond)."""
        params = tier_params(spec, chunk_frames)
        if params.capacity is None:
            if max_frames is None:
                raise UserError("an unbounded memory policy ('full') needs the video length (max_frames)")
            return max_frames
        # EMA folding keeps up to a sink's worth of evicted frames until their group is complete.
        held = params.capacity + (params.sink if params.ema_alpha is not None else 0)
        # A copy promoted on a noisy pass of the tiered layout is staged before the commit evicts the oldest
        # slow frame: one staging slot. Commit-time promotion frees the evicted copy first, and the released
        # cache's copy replaces the entry it displaces.
        staged = params.surprisal and params.promote_on == "any_pass" and params.layout == "tiered"
        return held + (1 if staged else 0)

    @property
    def slots(self) -> int:
        return self.groups[0].slots.size

    def nbytes(self) -> int:
        """Bytes of the K/V store (the slots)."""
        return _bytes(self.k + self.v)

    def view_nbytes(self) -> int:
        """Bytes held besides the store for reading it: the rotated-key buffers (preallocated)."""
        return _bytes(self.k_rot)

    @property
    def plan(self) -> ChunkPlan:
        """The current chunk's plan (layer group 0, with every layer's slow frames when they differ, and the
        headings of its frames when the memory keeps them)."""
        plan = self.groups[0].plan
        if len(self.groups) > 1:
            plan = dataclasses.replace(plan, slow_per_layer=tuple(tuple(g.plan.tier("slow")) for g in self.groups))
        if self.uses_headings:
            frames = plan.context_frames + plan.current_frames
            plan = dataclasses.replace(plan, headings={f: self.frame_headings[f][0] for f in frames})
        return plan

    def group_of(self, layer: int) -> _Group:
        return self._group_of[layer]

    # -- chunk lifecycle ---------------------------------------------------------------------------
    def begin_chunk(self, start: int, frames: int, headings=None) -> ChunkPlan:
        """Plan chunk [start, start+frames): allocate its slots, rotate what it attends. `headings`: the camera
        heading of each of its frames per sample ([B][frames] floats, tokens) for a memory that keeps them
        (None: 0, a camera that never turned)."""
        self.chunk_index += 1
        self.start, self.frames, self._recaching = start, frames, False
        self._set_headings(range(start, start + frames), headings)
        self.promotion.begin_chunk()
        for g in self.groups:
            g.plan = g.policy.plan(self.chunk_index, start, frames)
            g.check = g.policy.promotion_check(self.chunk_index, start)
            g.within_chunk = []
            current = [g.slots.allocate(("main", f)) for f in range(start, start + frames)]
            self._prepare_group(g, current)
        self._after_plan()
        return self.plan

    def recent_frames(self, next_start: int) -> list[int]:
        """Frames a prompt switch before chunk `next_start` re-encodes (the recent frames it will attend)."""
        return self.groups[0].policy.recent_frames(next_start)

    def recache_frames(self, next_start: int, mode: str = "window") -> list[int]:
        """Frames whose clean latents a `mode` recache before `next_start` needs (the stream keeps them)."""
        return self.groups[0].policy.recache_frames(next_start, mode)

    def begin_recache(self, next_start: int, mode: str = "window", flush: bool = False) -> list[int]:
        """Prompt switch before chunk `next_start`: plan the re-encode pass of `mode` (see
        `TieredPolicy.recache`) and return the frames it re-encodes, oldest first.

        They become the 'current' frames of one commit pass (no mask among them) that overwrites their
        stored K/V in place; frames no longer stored get scratch slots for the pass. `commit()` ends it."""
        check_recache(self.spec, mode, flush)
        if flush and mode == "window":
            self.flush()  # ours: sink and slow go; the sink refills from the next chunk
        self._recaching = True
        plans = []
        for g in self.groups:
            plan = g.policy.recache(self.chunk_index + 1, next_start, mode, clear=flush and mode == "longlive")
            for key in g.policy.adopt_sink(plan.new_sink, next_start) if plan.new_sink is not None else []:
                g.slots.release(key)
            frames = plan.frames
            first = frames[0] if frames else next_start
            assert frames == list(range(first, first + len(frames))), "recached frames must be contiguous"
            g.plan = ChunkPlan(self.chunk_index + 1, first, len(frames), plan.context, tuple(plan.positions))
            self._prepare_group(g, [g.slots.allocate(("main", f)) for f in frames])
            plans.append(plan)
        self._recache = plans
        self._set_headings(plans[0].frames, "stored")
        self._after_plan()
        return plans[0].frames

    def flush(self) -> None:
        """Drop sink and slow memory (prompt switch with flush); the sink refills from the next commits."""
        for g in self.groups:
            for key in g.policy.flush():
                g.slots.release(key)

    def begin_pass(self, commit: bool) -> torch.Tensor:
        """A model forward over the current chunk starts; returns the chunk's positions [frames]."""
        self._commit_pass = commit
        return self.current_position_ids

    def layer(self, i: int) -> LayerView:
        return LayerView(self, i)

    def commit(self) -> MemoryUpdate:
        """After the commit pass: let each group's policy update its tiers, and make storage follow."""
        if self._recaching:  # the end of a recache: scratch frames leave the store again
            self._recaching = False
            for g, plan in zip(self.groups, self._recache):
                for f in plan.scratch:
                    g.slots.release(("main", f))
            return MemoryUpdate()
        updates = []
        for g in self.groups:
            promote = self.promotion.at_commit(g)
            changes = g.policy.commit(self.start, self.frames, promote)
            for f in changes.slow_evicted:  # free first, so a full slow memory has room for the new copy
                g.slots.release(("slow", f))
            for f in changes.promoted:
                if ("slow", f) not in g.slots.slot:  # a pass-time promotion staged it already
                    self._copy_slot(g, g.slots.slot[("main", f)], g.slots.allocate(("slow", f)))
            for sink_frame, gone in changes.folded:
                self._fold(g, g.slots.slot[("main", sink_frame)], g.slots.slot[("main", gone)])
            for f in changes.evicted:
                g.slots.release(("main", f))
            updates.append(self._update(g, changes))
        self.promotion.end_commit()
        self._forget_headings()
        if self.exit_gradients is not None:
            self.exit_gradients.bind(self.start)
            self.exit_gradients.prune(lambda layer, f: ("main", f) in self._group_of[layer].slots.slot)
        return updates[0]

    def _update(self, g: _Group, changes) -> MemoryUpdate:
        displaced = [entry for _, entry in g.within_chunk]
        return MemoryUpdate(
            promoted=tuple([f for f, _ in g.within_chunk] + changes.promoted),
            slow_evicted=tuple([f for kind, f in displaced if kind == "slow"] + changes.slow_evicted),
            evicted=tuple([f for kind, f in displaced if kind == "main"] + changes.evicted),
            folded=tuple(changes.folded),
            similarity=self.promotion.similarity,
        )

    # -- planning into storage ---------------------------------------------------------------------
    def _prepare_group(self, g: _Group, current_slots: list[int]) -> None:
        device = self.k[0].device
        slots = [g.slots.slot[g.storage_key(a)] for a in g.plan.context]
        g.view_index = torch.tensor(slots, dtype=torch.long, device=device) if slots else None
        g.current = current_slots
        g.current_slots = torch.tensor(current_slots, dtype=torch.long, device=device)
        g.key_mask = self._slot_mask(g, slots + current_slots)
        t = self.layout.tokens_per_frame
        g.current_tokens = (g.current_slots[:, None] * t + torch.arange(t, device=device)).flatten()

    def _slot_mask(self, g: _Group, active: list[int]) -> torch.Tensor | None:
        """Set the slot range [0, extent) attention reads; return its key mask (None: every key).

        The range is at least the policy's capacity from the first chunk on, so a bounded policy's step
        has the same shapes while the memory fills as after; it widens only if the slots used so far
        reach beyond that (frames waiting for an EMA fold, a staged promotion), and never narrows. `full`
        starts empty and grows with the video. Slots of the range this chunk does not attend are masked;
        when it attends all of them (the steady state, except right after a deduplicated promotion)
        there is no mask, which keeps unmasked attention kernels (flash) available on GPU.
        """
        g.extent = max(g.extent, max(active, default=-1) + 1)
        if len(active) == g.extent:
            return None
        attended = [False] * g.extent
        for slot in active:
            attended[slot] = True
        mask = torch.tensor(attended, dtype=torch.bool, device=self.k[0].device)
        return mask.repeat_interleave(self.layout.tokens_per_frame)

    def _after_plan(self) -> None:
        positions = {g.plan.current_positions for g in self.groups}
        assert len(positions) == 1, "all layers must place the current chunk identically"
        current = self.groups[0].plan.current_positions
        self.current_position_ids = torch.tensor(current, dtype=torch.long, device=self.k[0].device)
        for g in self.groups:
            self._rotate_group(g)

    @torch.no_grad()
    def _rotate_group(self, g: _Group) -> None:
        """Rotate the group's planned slots into its layers' rotated-key buffers at the plan's positions.

        Done for all planned slots on every plan, not only for changed ones: positions move every chunk
        under bounded positions, and folds, promotions, recaches and flushes change slot contents in
        between, so a full refresh is the one rule that cannot go stale."""
        if g.view_index is None or not len(g.current_slots):  # nothing to rotate, or no pass will read it
            return
        # A room-anchored model rotates each stored frame at its own camera heading too.
        where = (
            (g.plan.positions,)
            if not self.uses_headings
            else (g.plan.positions, self._headings_of(g.plan.context_frames))
        )
        for layer in g.layers:
            keys = self.rotate_keys(self.k[layer].index_select(1, g.view_index), *where)
            self.k_rot[layer].index_copy_(1, g.view_index, keys.unflatten(1, (-1, self.layout.tokens_per_frame)))
            self.rotations += 1

    # -- camera headings (room-anchored models) ---------------------------------------------------------
    def _set_headings(self, frames, headings) -> None:
        """Record the headings of `frames` and make them the current pass's ("stored": a recache re-encodes
        frames at the headings they were made at)."""
        frames = list(frames)
        if not self.uses_headings:
            if headings is not None and headings != "stored":
                raise UserError("this model's width positions are screen columns: it takes no camera headings")
            return
        if headings is None:
            headings = [[0.0] * len(frames)] * self.batch
        if headings != "stored":
            if len(headings) != self.batch or any(len(h) != len(frames) for h in headings):
                raise ValueError(f"headings must be [{self.batch}][{len(frames)}] floats, one per sample and frame")
            for i, f in enumerate(frames):
                self.frame_headings[f] = tuple(float(h[i]) for h in headings)
        self.current_headings = self._headings_of(frames)

    def _headings_of(self, frames: list[int]) -> torch.Tensor | None:
        """[B, len(frames)] float64 headings of stored frames (None for a memory without headings)."""
        if not self.uses_headings:
            return None
        rows = [[self.frame_headings[f][b] for f in frames] for b in range(self.batch)]
        return torch.tensor(rows, dtype=torch.float64, device=self.k[0].device)

    def _forget_headings(self) -> None:
        """Keep the headings of the frames still stored and of the last `capacity` frames (a LongLive recache
        re-encodes those), no others: bounded like the store."""
        if not self.uses_headings:
            return
        stored = {f for g in self.groups for _, f in g.slots.slot}
        capacity = self.params.capacity
        recent = self.start + self.frames - (capacity if capacity is not None else self.start + self.frames)
        self.frame_headings = {f: h for f, h in self.frame_headings.items() if f in stored or f >= recent}

    # -- what the model calls ----------------------------------------------------------------------
    def exchange(self, layer: int, k: torch.Tensor, v: torch.Tensor, *, copy: bool) -> ContextRead:
        """This pass's pre-RoPE keys and values of `layer` arrive (stored on a commit pass, seen by the
        promotion rule); returns what the layer attends: `copy` for keys that carry an autograd graph."""
        if self._commit_pass:
            self._store(layer, k, v)
        elif copy and self.exit_gradients is not None:
            self.exit_gradients.record(layer, k, v)
        if not self._recaching:
            g = self._group_of[layer]
            taken = self.promotion.observe(layer, g, k, v, self._commit_pass)
            if taken is not None:
                (self._promote_now if taken.now else self._stage_copy)(g, taken.layers)
        return self.copy_read(layer) if copy else self.slot_read(layer)

    def slot_read(self, layer: int) -> ContextRead:
        g, t = self._group_of[layer], self.layout.tokens_per_frame
        keys = self.k_rot[layer].flatten(1, 2)[:, : g.extent * t]
        values = self.v[layer].flatten(1, 2)[:, : g.extent * t]
        return ContextRead(keys, values, g.key_mask, g.current_tokens)

    def copy_read(self, layer: int) -> ContextRead:
        view = self.view(layer)
        if view is not None and self.exit_gradients is not None:
            view = self.exit_gradients.add_to(layer, self._group_of[layer].plan.context, *view)
        return ContextRead(*(view or (None, None)))

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Copies of the rotated keys and values [B, n*T, H, D] of the stored frames this chunk attends in
        `layer`, in plan order (None: none)."""
        g = self._group_of[layer]
        if g.view_index is None:
            return None
        return (
            self.k_rot[layer].index_select(1, g.view_index).flatten(1, 2),
            self.v[layer].index_select(1, g.view_index).flatten(1, 2),
        )

    def _store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        g = self._group_of[layer]
        shape = (k.shape[0], -1, self.layout.tokens_per_frame, *k.shape[2:])
        self.k[layer].index_copy_(1, g.current_slots, k.detach().reshape(shape).to(self.k[layer].dtype))
        self.v[layer].index_copy_(1, g.current_slots, v.detach().reshape(shape).to(self.v[layer].dtype))

    # -- promotions taken during a pass ------------------------------------------------------------
    def _write_slot(self, layer: int, slot: int, kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        for store, x in zip((self.k[layer], self.v[layer]), kv):
            store[:, slot] = x.reshape(store[:, slot].shape).to(store.dtype)

    def _stage_copy(self, g: _Group, copies: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store a promotion's copy of the current chunk's kept frame now (attended from the next chunk)."""
        slot = g.slots.allocate(("slow", self.params.kept_frame(self.start, self.frames)))
        for layer, kv in copies.items():
            self._write_slot(layer, slot, kv)

    def _promote_now(self, g: _Group, copies: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Released cache: copy the chunk's first frame (this pass's K/V) into the context region and attend
        it from this pass on; the entry it displaces is gone."""
        plan, displaced = g.policy.promote(self.start)
        g.slots.release(displaced)
        self._stage_copy(g, copies)
        g.within_chunk.append((self.start, displaced))
        g.plan = plan
        self._prepare_group(g, g.current)
        self._rotate_group(g)

    def _copy_slot(self, g: _Group, src: int, dst: int) -> None:
        for i in g.layers:
            self.k[i][:, dst] = self.k[i][:, src]
            self.v[i][:, dst] = self.v[i][:, src]

    def _fold(self, g: _Group, sink_slot: int, gone_slot: int) -> None:
        """Reward Forcing's EMA sink: sink <- alpha * sink + (1 - alpha) * evicted, keys and values."""
        a = self.params.ema_alpha
        for i in g.layers:
            for store in (self.k[i], self.v[i]):
                store[:, sink_slot].mul_(a).add_(store[:, gone_slot], alpha=1 - a)

    # -- introspection -----------------------------------------------------------------------------
    def key_frames(self, layer: int = 0) -> int:
        """Latent frames of keys each inference pass of this chunk computes attention over, the chunk
        itself included, masked slots too: on a bounded policy the same for every chunk."""
        return self._group_of[layer].extent

    def tiers(self, layer: int = 0) -> dict[str, list[int]]:
        """Frames currently held in each tier (for the layer's group)."""
        return self._group_of[layer].policy.tiers()


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
