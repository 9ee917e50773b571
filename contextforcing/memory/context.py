"""ContextMemory: preallocated per-layer K/V storage driven by a memory policy.

Lifecycle of one chunk (the sampler drives it; the model only calls `attend` and `write`):

    memory.begin_chunk(start, frames)     policy plans what this chunk attends and where
    model(x, t, text, memory=memory)      x4 denoising passes: attend(layer) -> rotated context
    model(x0, 0, text, memory=memory, commit=True)   clean pass: write(layer, k, v) stores pre-RoPE K/V
    memory.commit()                       policy promotes / evicts / folds; storage follows

Keys are stored before RoPE, values as they are, in preallocated per-layer slot tensors [B, S, T, H, D];
slots are recycled through a free list, so nothing is shifted or cloned. The planned keys are rotated
with the positions the policy chose once per chunk per layer. How attention reads them (`view_mode`):

  slots   (default) each layer has a rotated-key buffer aligned with the slots; `begin_chunk` rotates the
          planned slots into it. Every pass writes the chunk's own rotated keys and values into the
          chunk's slots and attends over a slot range in place, with a key mask only while some slot of
          the range is not attended (free while filling, deduplicated, waiting to be folded). Nothing is
          copied per pass or kept per chunk, and a bounded policy reads the same range (at least its
          capacity) from the first chunk on, so the steps of a stream have the same shapes (CUDA graphs,
          torch.compile without recompiles).
  gather  (reference) per layer and chunk a gathered, rotated copy of the planned keys and a gathered
          copy of their values, kept for every pass; the chunk's own keys and values are appended.

Attention without a mask does not depend on the order of its keys, so both modes give the same output up
to float rounding; tests/model/test_view_modes.py checks it over long rollouts of every policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from contextforcing.config import ModelConfig, VideoConfig
from contextforcing.errors import UserError
from contextforcing.memory.policies import Plan, PolicySpec, TieredPolicy, tier_params

KeyRotation = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]
VIEW_MODES = ("slots", "gather")


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


@dataclass
class ContextView:
    """What one layer's self-attention reads besides the chunk's own keys and values [B, L, H, D].

    `tokens` None: `keys`/`values` are a copy of the attended frames, and the chunk is appended. Otherwise
    they are views of the memory's slot tensors (rotated keys, values): the chunk is written in place at
    `tokens` (its slots' token indices), and `mask` [L] (True = attend; None = every key) hides the slots
    this chunk does not see.
    """

    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    def with_chunk(self, k_rot: torch.Tensor, v: torch.Tensor):
        """Keys, values [B, Lk, H, D] and key mask [Lk] (or None), given the chunk's rotated keys and values
        [B, frames*T, H, D]."""
        if self.tokens is None:
            return torch.cat([self.keys, k_rot], 1), torch.cat([self.values, v], 1), None
        self.keys.index_copy_(1, self.tokens, k_rot)  # the memory holds the model's dtype, as attention needs
        self.values.index_copy_(1, self.tokens, v)
        return self.keys, self.values, self.mask


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
        self.view_index: torch.Tensor | None = None  # slots of the planned frames, in plan order
        self.current_slots: torch.Tensor | None = None
        self.current_tokens: torch.Tensor | None = None  # slots mode: token indices of the current slots
        self.extent = policy.p.capacity or 0  # slots mode: attention reads slots [0, extent); see _slot_mask
        self.key_mask: torch.Tensor | None = None  # slots mode: [extent * T], True where a key is attended
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
        view_mode: str = "slots",
    ):
        if view_mode not in VIEW_MODES:
            raise ValueError(f"unknown view_mode {view_mode!r}; choose one of {VIEW_MODES}")
        self.spec, self.layout, self.rotate_keys, self.view_mode = spec, layout, key_rotation, view_mode
        params = tier_params(spec, layout.chunk_frames)
        self.bounded = params.capacity is not None
        slots = self.slot_count(spec, layout.chunk_frames, max_frames)
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
        # slots mode: rotated keys aligned with the slots (what the gather mode copies every chunk)
        self.k_rot = ([torch.zeros(shape, device=device, dtype=dtype) for _ in range(layout.num_layers)]
                      if view_mode == "slots" else [])
        self._views: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layout.num_layers  # gather mode
        self._contexts: list[ContextView | None] = [None] * layout.num_layers  # slots mode, set per plan
        self._repr: list[torch.Tensor | None] = [None] * layout.num_layers  # this chunk's mean key per layer
        self._prev_repr: list[torch.Tensor | None] = [None] * layout.num_layers  # previous chunk's (or pass's)
        self.chunk_index = -1
        self.start = self.frames = 0
        self.current_positions: list[int] = []
        self.current_position_ids: torch.Tensor | None = None  # the same as a tensor, for the model
        self.trace: list[dict] = []
        self.rotations = 0  # number of context rotations, for tests and benchmarks
        self._recaching = False

    @staticmethod
    def slot_count(spec: PolicySpec, chunk_frames: int, max_frames: int | None = None) -> int:
        """Slots of a policy's store: the most frames it holds at once (the free list raises beyond)."""
        params = tier_params(spec, chunk_frames)
        if params.capacity is None:
            if max_frames is None:
                raise UserError("an unbounded memory policy ('full') needs the video length (max_frames)")
            return max_frames
        # EMA folding keeps up to a sink's worth of evicted frames until their group is complete.
        held = params.capacity + (params.sink if params.ema_alpha is not None else 0)
        # Promotion on a noisy pass stages its copy before the commit evicts the oldest slow frame, so it
        # needs one staging slot; a commit-time promotion frees the evicted copy first and needs none.
        staged = getattr(spec.options, "promote_on", "commit") == "any_pass" and params.rule == "surprisal"
        return held + (1 if staged and params.slow else 0)

    def fresh(self, view_mode: str | None = None) -> "ContextMemory":
        """A new, empty memory like this one (policy, sizes, rotation, device, dtype), in `view_mode`."""
        return ContextMemory(self.spec, self.layout, key_rotation=self.rotate_keys, batch=self.k[0].shape[0],
                             device=self.k[0].device, dtype=self.k[0].dtype,
                             max_frames=None if self.bounded else self.slots, view_mode=view_mode or self.view_mode)

    @property
    def slots(self) -> int:
        return self.groups[0].slots.size

    def nbytes(self) -> int:
        """Bytes of the K/V store (the slots)."""
        return _bytes(self.k + self.v)

    def view_nbytes(self) -> int:
        """Bytes held besides the store for reading it: the rotated-key buffers (slots mode, preallocated) or
        the copies kept for the current chunk (gather mode; their size follows what the chunk attends)."""
        return _bytes(self.k_rot + [t for kv in self._views if kv is not None for t in kv])

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
        if self.view_mode == "slots":
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
        positions = {tuple(g.plan.current_positions) for g in self.groups}
        assert len(positions) == 1, "all layers must place the current chunk identically"
        self.current_positions = list(self.groups[0].plan.current_positions)
        self.current_position_ids = torch.tensor(self.current_positions, dtype=torch.long, device=self.k[0].device)
        self._views = [None] * self.layout.num_layers
        self._repr = [None] * self.layout.num_layers
        if self.view_mode == "slots":
            self._rotate_planned()
            self._contexts = [self._slot_context(layer) for layer in range(self.layout.num_layers)]

    def _slot_context(self, layer: int) -> ContextView:
        """This plan's slots view of `layer`: its slot range of the rotated keys and values, flattened to
        tokens, where the chunk's own frames are written at their slots' tokens on every pass."""
        g, t = self._group_of[layer], self.layout.tokens_per_frame
        keys = self.k_rot[layer].flatten(1, 2)[:, : g.extent * t]
        values = self.v[layer].flatten(1, 2)[:, : g.extent * t]
        return ContextView(keys, values, g.key_mask, g.current_tokens)

    @torch.no_grad()
    def _rotate_planned(self) -> None:
        """Rotate every layer's planned slots into its rotated-key buffer at this plan's positions.

        Done for all planned slots on every plan, not only for changed ones: positions move every chunk
        under bounded positions, and folds, promotions, recaches and flushes change slot contents in
        between, so a full refresh is the one rule that cannot go stale.
        """
        for layer, rotated in enumerate(self.k_rot):
            g = self._group_of[layer]
            if g.view_index is None or not len(g.current_slots):  # nothing to rotate, or no pass will read it
                continue
            keys = self.rotate_keys(self.k[layer].index_select(1, g.view_index), g.plan.positions)
            rotated.index_copy_(1, g.view_index, keys.unflatten(1, (-1, self.layout.tokens_per_frame)))
            self.rotations += 1

    # -- what the model calls ----------------------------------------------------------------------
    def attend(self, layer: int) -> ContextView | None:
        """What `layer`'s self-attention reads this pass besides the chunk itself (None: nothing).

        With autograd recording, the slot tensors are not handed over: writing a tensor that carries a
        graph into a buffer that later chunks overwrite would corrupt the backward pass (and a block
        recomputed under gradient checkpointing would read the later contents). Copies are used instead.
        """
        if self.view_mode == "gather" or torch.is_grad_enabled():
            kv = self.view(layer)
            return None if kv is None else ContextView(*kv)
        return self._contexts[layer]

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotated keys and values [B, n*T, H, D] of the stored frames this chunk attends in `layer`, in plan
        order (None: none). Gather mode keeps them for the chunk; slots mode gathers a fresh copy."""
        g = self._group_of[layer]
        if g.view_index is None:
            return None
        if self.view_mode == "slots":
            return (self.k_rot[layer].index_select(1, g.view_index).flatten(1, 2),
                    self.v[layer].index_select(1, g.view_index).flatten(1, 2))
        if self._views[layer] is None:
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
        if not (commit or self.promote_any_pass):  # noisy passes only matter to the released-code rule
            return
        chunk_key = k.detach().float().mean(dim=1).flatten(1)  # [B, H*D]: mean pre-RoPE key of the chunk
        if self.promote_any_pass:
            self._promote_from_pass(layer, chunk_key, k, v)
        else:
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
    def key_frames(self, layer: int = 0) -> int:
        """Latent frames of keys each inference pass of this chunk computes attention over, the chunk
        itself included. Slots mode counts its masked slots (computed, then ignored), so on a bounded
        policy this is the same for every chunk; gather mode computes only what the chunk attends."""
        g = self._group_of[layer]
        if self.view_mode == "slots":
            return g.extent
        return (0 if g.view_index is None else len(g.view_index)) + len(g.current_slots)

    def tiers(self, layer: int = 0) -> dict[str, list[int]]:
        """Frames currently held in each tier (for the layer's group)."""
        p = self._group_of[layer].policy
        return {"sink": list(p.sink), "slow": list(p.slow), "fast": list(p.fast)}


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
