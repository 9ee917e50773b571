"""ContextMemory: preallocated per-layer K/V storage driven by a memory policy.

Lifecycle of one chunk (the sampler drives it; the model only calls `view` and `write`):

    memory.begin_chunk(start, frames)     policy plans what this chunk attends and where
    model(x, t, text, memory=memory)      x4 denoising passes: view(layer) -> rotated context
    model(x0, 0, text, memory=memory, commit=True)   clean pass: write(layer, k, v) stores pre-RoPE K/V
    memory.commit()                       policy promotes / evicts / folds; storage follows

Keys are stored before RoPE; `view` gathers the planned frames and rotates them with the positions the
policy chose, once per chunk per layer, and reuses the result for every pass of the chunk.
Storage slots are recycled through a free list, so nothing is shifted or cloned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from contextforcing.config import ModelConfig, VideoConfig
from contextforcing.errors import UserError
from contextforcing.memory.policies import Plan, PolicySpec, TieredPolicy, tier_params

KeyRotation = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]


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


class _SlotMap:
    """Which storage slot holds which (kind, frame); kind is 'main' (sink/fast) or 'slow' (a copy)."""

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
    """Layers that share one tier layout (all layers, or one layer when promotion is per layer)."""

    def __init__(self, policy: TieredPolicy, slots: int, layers: list[int]):
        self.policy, self.slots, self.layers = policy, _SlotMap(slots), layers
        self.plan: Plan | None = None
        self.view_index: torch.Tensor | None = None
        self.current_slots: torch.Tensor | None = None
        self.promoted_this_chunk = False
        self.staged: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recache_frames: list[int] = []


class ContextMemory:
    def __init__(
        self,
        spec: PolicySpec,
        layout: MemoryLayout,
        *,
        key_rotation: KeyRotation,
        batch: int = 1,
        device=None,
        dtype: torch.dtype = torch.float32,
        max_frames: int | None = None,
    ):
        self.spec, self.layout, self.rotate_keys = spec, layout, key_rotation
        params = tier_params(spec, layout.chunk_frames)
        slots = self._slot_count(params, max_frames)
        opts = spec.options
        self.promote_any_pass = getattr(opts, "promote_on", "commit") == "any_pass"
        per_layer = getattr(opts, "promote_scope", "global") == "per_layer"
        layer_sets = [[i] for i in range(layout.num_layers)] if per_layer else [list(range(layout.num_layers))]
        self.groups = [_Group(TieredPolicy(params, layout.chunk_frames), slots, ls) for ls in layer_sets]
        self._group_of = {i: g for g in self.groups for i in g.layers}
        self.tau, self.ema_alpha = params.tau, params.ema_alpha
        shape = (batch, slots, layout.tokens_per_frame, layout.num_heads, layout.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layout.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layout.num_layers)]
        self._views: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layout.num_layers
        self._repr: list[torch.Tensor | None] = [None] * layout.num_layers  # this chunk's mean key per layer
        self._prev_repr: list[torch.Tensor | None] = [None] * layout.num_layers  # previous chunk's (or pass's)
        self.chunk_index = -1
        self.start = self.frames = 0
        self.current_positions: list[int] = []
        self.trace: list[dict] = []
        self.rotations = 0  # number of context rotations, for tests and benchmarks
        self._recaching = False

    @staticmethod
    def _slot_count(params, max_frames: int | None) -> int:
        if params.capacity is None:
            if max_frames is None:
                raise UserError("an unbounded memory policy ('full') needs the video length (max_frames)")
            return max_frames
        # EMA folding keeps up to a sink's worth of evicted frames until their group is complete;
        # promotion on a noisy pass stages its copy before the commit evicts the oldest slow frame.
        return params.capacity + (params.sink if params.ema_alpha is not None else 0) + (1 if params.slow else 0)

    @property
    def slots(self) -> int:
        return self.groups[0].slots.size

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    # -- chunk lifecycle ---------------------------------------------------------------------------
    def begin_chunk(self, start: int, frames: int) -> Plan:
        """Plan chunk [start, start+frames): allocate its slots and invalidate last chunk's views."""
        self.chunk_index += 1
        self.start, self.frames, self._recaching = start, frames, False
        for g in self.groups:
            g.plan = g.policy.plan(start, frames)
            slots = [g.slots.allocate(("main", f)) for f in range(start, start + frames)]
            self._prepare_group(g, slots)
        self._after_plan()
        entry = self.groups[0].plan.trace(self.chunk_index)
        if len(self.groups) > 1:
            entry["slow_per_layer"] = [g.plan.tier("slow") for g in self.groups]
        self.trace.append(entry)
        return self.groups[0].plan

    def begin_recache(self, next_start: int) -> list[int]:
        """Re-encode the fast window before chunk `next_start` (prompt switch): returns its frames.

        The window frames become the 'current' frames of one commit pass that overwrites their K/V in
        place; they attend to the sink and slow memory at the positions the next chunk will give them.
        """
        self._recaching = True
        for g in self.groups:
            upcoming = g.policy.plan(next_start, self.layout.chunk_frames)
            window = [i for i, (tier, _) in enumerate(upcoming.entries) if tier == "fast"]
            frames = [upcoming.entries[i][1] for i in window]
            context = [i for i, (tier, f) in enumerate(upcoming.entries) if tier != "fast" and f not in frames]
            g.plan = Plan(
                next_start, len(frames), [upcoming.entries[i] for i in context],
                [upcoming.positions[i] for i in context], [upcoming.positions[i] for i in window],
            )
            g.recache_frames = frames
            self._prepare_group(g, [g.slots.slot[("main", f)] for f in frames])
        self._after_plan()
        return self.groups[0].recache_frames

    def flush(self) -> None:
        """Drop sink and slow memory (prompt switch with flush); the sink refills from the next commits."""
        for g in self.groups:
            sink = list(g.policy.sink)
            slow = list(g.policy.slow)
            g.policy.flush()
            for f in sink:
                g.slots.release(("main", f))
            for f in slow:
                g.slots.release(("slow", f))

    def _prepare_group(self, g: _Group, current_slots: list[int]) -> None:
        device = self.k[0].device
        slots = [g.slots.slot[("slow" if tier == "slow" else "main", f)] for tier, f in g.plan.entries]
        g.view_index = torch.tensor(slots, dtype=torch.long, device=device) if slots else None
        g.current_slots = torch.tensor(current_slots, dtype=torch.long, device=device)
        g.promoted_this_chunk = False

    def _after_plan(self) -> None:
        positions = {tuple(g.plan.current_positions) for g in self.groups}
        assert len(positions) == 1, "all layers must place the current chunk identically"
        self.current_positions = list(self.groups[0].plan.current_positions)
        self._views = [None] * self.layout.num_layers
        self._repr = [None] * self.layout.num_layers

    # -- what the model calls ----------------------------------------------------------------------
    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotated keys and values [B, n*T, H, D] of the frames this chunk attends in `layer`."""
        if self._views[layer] is None:
            g = self._group_of[layer]
            if g.view_index is None:
                return None
            keys = self.k[layer].index_select(1, g.view_index)
            values = self.v[layer].index_select(1, g.view_index).flatten(1, 2)
            self._views[layer] = (self.rotate_keys(keys, g.plan.positions), values)
            self.rotations += 1
        return self._views[layer]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, *, commit: bool) -> None:
        """Receive this pass's pre-RoPE keys and values [B, frames*T, H, D] for `layer`."""
        g = self._group_of[layer]
        if commit:
            shape = (k.shape[0], -1, self.layout.tokens_per_frame, *k.shape[2:])
            self.k[layer].index_copy_(1, g.current_slots, k.detach().reshape(shape).to(self.k[layer].dtype))
            self.v[layer].index_copy_(1, g.current_slots, v.detach().reshape(shape).to(self.v[layer].dtype))
        if self._recaching or self.groups[0].policy.p.rule != "surprisal":
            return
        chunk_key = k.detach().float().mean(dim=1).flatten(1)  # [B, H*D]: mean pre-RoPE key of the chunk
        if self.promote_any_pass:
            self._promote_from_pass(layer, chunk_key, k, v)
        elif commit:
            self._repr[layer] = chunk_key

    # -- promotion ---------------------------------------------------------------------------------
    def _similarity(self, layers: list[int]) -> torch.Tensor | None:
        """cos(this chunk's pooled mean key, the previous one's) -- one scalar.

        The pooled representation is the chunk's mean key [H*D] averaged over `layers` and the batch:
        one representation, one cosine (not a mean of per-layer cosines).
        """
        if any(self._prev_repr[i] is None or self._repr[i] is None for i in layers):
            return None
        current = torch.stack([self._repr[i] for i in layers]).mean(dim=(0, 1))  # [L, B, H*D] -> [H*D]
        previous = torch.stack([self._prev_repr[i] for i in layers]).mean(dim=(0, 1))
        return torch.cosine_similarity(current, previous, dim=0)

    def _decide(self, g: _Group) -> bool:
        check = g.policy.promotion_check(self.chunk_index, self.start)
        if check != "ask":
            return check == "yes"
        sim = self._similarity(g.layers)
        # One host read per checked chunk: the tier layout is host bookkeeping and depends on it.
        return sim is not None and float(sim) < self.tau

    def _promote_from_pass(self, layer: int, chunk_key: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Released-code behaviour: decide on every pass (noisy ones too) against the previous call.

        The first call that crosses tau promotes, copying the chunk's first frame from *that* pass.
        With per-layer scope each layer decides alone; with global scope the decision waits for the
        last layer of the pass and uses the representation pooled over layers (see `_similarity`).
        """
        g = self._group_of[layer]
        self._repr[layer] = chunk_key
        frame_tokens = self.layout.tokens_per_frame
        g.staged[layer] = (k[:, :frame_tokens].detach(), v[:, :frame_tokens].detach())
        if layer == g.layers[-1]:
            if not g.promoted_this_chunk and self._decide(g):
                slot = g.slots.allocate(("slow", self.start))
                for i in g.layers:
                    ks, vs = g.staged[i]
                    self.k[i][:, slot] = ks.reshape(self.k[i][:, slot].shape)
                    self.v[i][:, slot] = vs.reshape(self.v[i][:, slot].shape)
                g.promoted_this_chunk = True
            g.staged = {}
            for i in g.layers:
                self._prev_repr[i] = self._repr[i]

    def commit(self) -> None:
        """After the commit pass: let each group's policy update its tiers, and make storage follow."""
        if self._recaching:
            self._recaching = False
            return
        # any_pass only changes *when* a surprisal decision is taken; a uniform rule still promotes here.
        per_pass = self.promote_any_pass and self.groups[0].policy.p.rule == "surprisal"
        for g in self.groups:
            promote = g.promoted_this_chunk if per_pass else self._decide(g)
            changes = g.policy.commit(self.start, self.frames, promote)
            for f in changes.slow_evicted:  # free first, so a full slow memory has room for the new copy
                g.slots.release(("slow", f))
            for f in changes.promoted:
                if ("slow", f) not in g.slots.slot:  # any_pass mode copied it during the pass
                    self._copy_slot(g, g.slots.slot[("main", f)], g.slots.allocate(("slow", f)))
            for sink_frame, gone in changes.folded:
                self._fold(g, g.slots.slot[("main", sink_frame)], g.slots.slot[("main", gone)])
            for f in changes.evicted:
                g.slots.release(("main", f))
        if not self.promote_any_pass:
            self._prev_repr = list(self._repr)

    def _copy_slot(self, g: _Group, src: int, dst: int) -> None:
        for i in g.layers:
            self.k[i][:, dst] = self.k[i][:, src]
            self.v[i][:, dst] = self.v[i][:, src]

    def _fold(self, g: _Group, sink_slot: int, gone_slot: int) -> None:
        """Reward Forcing's EMA sink: sink <- alpha * sink + (1 - alpha) * evicted, keys and values."""
        a = self.ema_alpha
        for i in g.layers:
            for store in (self.k[i], self.v[i]):
                store[:, sink_slot].mul_(a).add_(store[:, gone_slot], alpha=1 - a)

    # -- introspection -----------------------------------------------------------------------------
    def tiers(self, layer: int = 0) -> dict[str, list[int]]:
        """Frames currently held in each tier (for the layer's group)."""
        p = self._group_of[layer].policy
        return {"sink": list(p.sink), "slow": list(p.slow), "fast": list(p.fast)}
