"""ContextMemory: the driver of one stream's context memory. A policy plans what each chunk attends (`policies.py`;
the released cache, `released.py`), its promotion rule decides what the slow tier keeps, and a tensor
store holds it (`store.py`). The model reads it per layer.

One chunk (`VideoStream` drives it; the model only calls `begin_pass` and the pass's `keys_values`):

    plan = memory.begin_chunk(start, frames)         the policy plans; the store is arranged and its context rotated
    model(x, t, text, memory=memory)                 x4 denoising passes: each layer reads what the plan attends
    model(x0, 0, text, memory=memory, commit=True)   the clean pass: each layer also hands over its pre-RoPE K/V
    update = memory.commit()                         the write: those K/V are stored; the policy promotes / evicts

Each pass is a `MemoryPass` (`begin_pass(commit)`): the chunk's positions, and per layer `keys_values(layer, k,
k_rot, v)`, which hands over the chunk's keys (pre-RoPE and rotated) and values and gives back what to attend.
Inference reads the store's attended prefix in place (slots [0, n) in any order, the chunk's own frames written
right after: no mask, attention over exactly what the plan attends); keys that carry an autograd graph (training
rollouts) get copies instead, since a graph written into buffers that later chunks overwrite would corrupt the
backward pass. Per chunk each group of layers' attended keys are rotated once, at the positions (and, for a
room-anchored model, the camera headings) of the plan.

tests/memory/gather_reference.py keeps the slow reference read (a gathered, rotated copy per plan); tests check
that both give the same outputs over long rollouts of every policy.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from contextforcing.errors import UserError
from contextforcing.memory.exit_grad import ExitGradients
from contextforcing.memory.headings import FrameHeadings
from contextforcing.memory.plan import ChunkPlan, MemoryUpdate
from contextforcing.memory.policies import TieredPolicy
from contextforcing.memory.released import ReleasedCache
from contextforcing.memory.retrieve import Relevance, RetrievePolicy
from contextforcing.memory.spec import MemorySpec, TierParams, check_recache, tier_params
from contextforcing.memory.store import ContextRead, KVStore, MemoryLayout, SlotMap

__all__ = ["ContextMemory", "ContextRead", "MemoryLayout", "MemoryPass"]

# (pre-RoPE keys [B, n, T, H, D], positions [n], and for a room-anchored model headings [B, n]) -> rotated keys
KeyRotation = Callable[..., torch.Tensor]


class _Group:
    """Layers that share one policy and one slot arrangement (all layers, or one when each decides alone)."""

    def __init__(self, policy, slots: int, layers: list[int]):
        self.policy, self.slots, self.layers = policy, SlotMap(slots), layers
        self.plan: ChunkPlan | None = None
        self.view_index: torch.Tensor | None = None  # slots of the attended entries, in plan order
        self.current: list[int] = []  # slots of the chunk's own frames, in frame order
        self.current_slots: torch.Tensor | None = None
        self.current_tokens: torch.Tensor | None = None  # their token indices in the store's flattened slots
        self.within_chunk: list[tuple[int, tuple[str, int]]] = []  # (promoted frame, displaced entry) this chunk
        self.check = "no"  # what the policy allows the current chunk: 'no', 'yes' or 'ask' (the signal decides)
        self.read_frames = 0  # frames a pass attends: the plan's context and the chunk
        self.extent = 0  # the slots a pass reads: what it attends, or with fixed shapes at least the capacity
        self.key_mask: torch.Tensor | None = None  # fixed shapes: [extent * T], False past what the chunk attends

    def arrange(self, store: KVStore, current: list[tuple[str, int]], fixed_extent: int | None) -> None:
        """Lay the store out for the plan: its attended entries in the group's first slots, the chunk's own
        (`current`) right after them, and what a pass reads (`fixed_extent`: with fixed shapes, at least that many
        slots from the first chunk on, the ones past what the chunk attends masked)."""
        # each attended frame's storage entry: its own ('main') or a promoted copy ('slow')
        attended = [("slow" if a.copy else "main", a.frame) for a in self.plan.context]
        store.move(self.layers, *self.slots.arrange(attended, current))
        self.view_index = store.index([self.slots.slot[k] for k in attended]) if attended else None
        self.current = [self.slots.slot[k] for k in current]
        self.current_slots = store.index(self.current)
        t = store.layout.tokens_per_frame
        self.current_tokens = (self.current_slots[:, None] * t + torch.arange(t, device=store.device)).flatten()
        self.read_frames = len(attended) + len(current)
        self.extent, self.key_mask = max(self.read_frames, fixed_extent or 0), None
        if self.read_frames < self.extent:
            frames = torch.arange(self.extent, device=store.device) < self.read_frames
            self.key_mask = frames.repeat_interleave(t)


def make_policy(params: TierParams, chunk_frames: int):
    """The policy object of resolved parameters: the released cache (`released.py`), a retrieval memory
    (`retrieve.py`) or the tiered one."""
    if params.layout == "released":
        return ReleasedCache(params, chunk_frames)
    if params.score is not None:
        return RetrievePolicy(params, chunk_frames)
    return TieredPolicy(params, chunk_frames)


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
        fixed_shapes: bool = False,
    ):
        """`headings`: the model's width positions follow a camera (room-anchored RoPE), so every stored frame
        keeps the heading it was made at and is rotated there whenever it is attended. `fixed_shapes`: every pass
        reads the same slot range from the first chunk on (at least the policy's capacity), the slots beyond what
        the chunk attends masked, so a compiled step never recompiles and CUDA graphs replay; the default reads
        exactly what the chunk attends, unmasked, at that cost."""
        self.spec, self.layout, self.rotate_keys = spec, layout, key_rotation
        self.params = tier_params(spec, layout.chunk_frames)
        if self.params.score == "auto":  # the camera's view where the model has one, else the keys' content
            self.params = dataclasses.replace(self.params, score="view" if headings else "keys")
        self.bounded = self.params.capacity is not None
        first = make_policy(self.params, layout.chunk_frames)
        slots = first.store_slots(max_frames)
        layer_sets = [[i] for i in range(layout.num_layers)] if first.per_layer else [list(range(layout.num_layers))]
        policies = [first] + [make_policy(self.params, layout.chunk_frames) for _ in layer_sets[1:]]
        self.groups = [_Group(policy, slots, layers) for policy, layers in zip(policies, layer_sets)]
        self.fixed_shapes = fixed_shapes
        # fixed shapes: a bounded policy reads its capacity from the first chunk on (`full` grows); else what it attends
        self._fixed_extent = (self.params.capacity or 0) if fixed_shapes else None
        self._group_of = {i: g for g in self.groups for i in g.layers}
        self.promotion = first.promotion(layout.num_layers, layout.tokens_per_frame)
        self.store = KVStore(layout, slots, batch, device, dtype)
        self.batch, self.chunk_index, self.start, self.frames = batch, -1, 0, 0
        self.current_position_ids: torch.Tensor | None = None  # the chunk's positions, as a tensor for the model
        self.headings = FrameHeadings(batch, self.store.device) if headings else None
        self.current_headings: torch.Tensor | None = None  # [B, frames] float64 for the model, or None
        self.rotations = 0  # context rotations, for tests and benchmarks
        self._recache: list = []  # per group, the RecachePlan of a prompt switch in progress
        self._written: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> the commit pass's K/V
        self.exit_gradients: ExitGradients | None = None  # training only: Self-Forcing's gradient path
        self.relevance: Relevance | None = None  # a retrieval memory's ranking of its bank
        if self.params.score is not None:
            self.relevance = Relevance(self.params.score, self.headings, layout.room_tokens, layout.view_tokens)
            for g in self.groups:
                g.policy.relevance = self.relevance

    @classmethod
    def replay(
        cls,
        spec: MemorySpec,
        chunk_frames: int,
        history: int,
        signals: list[torch.Tensor] | None = None,
        headings: list[float] | None = None,
        model_layout: MemoryLayout | None = None,
    ) -> ChunkPlan:
        """The plan of the chunk after `history` committed frames (whole chunks), without the model: the driver
        itself on a store of one single-token layer whose commit-pass keys are each chunk's surprisal signal
        (`signals`, one pooled key per chunk; the rule's pooling keeps it as it is), so training lays out a
        teacher's context exactly as the student's memory plans it. Only rules decided on the commit pass can be
        replayed (the signals are the commit passes' keys). A retrieval by view reads the frames' camera
        `headings` (one per frame, sample 0's) and the view and room sizes of `model_layout`."""
        params = tier_params(spec, chunk_frames)
        if params.score == "text":
            raise UserError("a retrieval by text reads each chunk's prompt, which a replay has not: use score=keys")
        if params.promote_on != "commit" or params.layout != "tiered":
            raise UserError("only a memory that promotes on the commit pass can be replayed without the model's keys")
        chunks = history // chunk_frames
        if params.surprisal and (signals is None or len(signals) < chunks):
            raise ValueError("a surprisal rule needs one signal per history chunk")
        dim = signals[0].numel() if signals else 1
        sizes = (
            {}
            if model_layout is None
            else {"view_tokens": model_layout.view_tokens, "room_tokens": model_layout.room_tokens}
        )
        layout = MemoryLayout(1, 1, 1, dim, chunk_frames, **sizes)
        rotation = lambda keys, *_: keys.flatten(1, 2)  # noqa: E731  (no model: positions are the plan's alone)
        memory = cls(
            spec, layout, key_rotation=rotation, max_frames=history + chunk_frames, headings=headings is not None
        )

        def chunk_headings(start):
            return None if headings is None else [list(headings[start : start + chunk_frames])]

        for index, start in enumerate(range(0, history, chunk_frames)):
            memory.begin_chunk(start, chunk_frames, chunk_headings(start))
            key = signals[index] if signals else torch.zeros(dim)
            keys = key.reshape(1, 1, 1, dim).expand(1, chunk_frames, 1, dim).float()
            memory.begin_pass(commit=True).keys_values(0, keys, keys, keys)
            memory.commit()
        return memory.begin_chunk(history, chunk_frames, chunk_headings(history))

    @staticmethod
    def slot_count(spec: MemorySpec, chunk_frames: int, max_frames: int | None = None) -> int:
        """Slots of a policy's store: the most frames it holds at once (the slot map raises beyond)."""
        return make_policy(tier_params(spec, chunk_frames), chunk_frames).store_slots(max_frames)

    # -- what the store holds ------------------------------------------------------------------------
    @property
    def k(self) -> list[torch.Tensor]:
        return self.store.k

    @property
    def v(self) -> list[torch.Tensor]:
        return self.store.v

    @property
    def k_rot(self) -> list[torch.Tensor]:
        return self.store.k_rot

    @property
    def slots(self) -> int:
        return self.groups[0].slots.size

    def nbytes(self) -> int:
        return self.store.nbytes()

    def view_nbytes(self) -> int:
        return self.store.view_nbytes()

    def group_of(self, layer: int) -> _Group:
        return self._group_of[layer]

    def key_frames(self, layer: int = 0) -> int:
        """Latent frames of keys each inference pass of this chunk computes attention over, the chunk itself
        included (with fixed shapes, masked slots too: on a bounded policy the same for every chunk)."""
        return self._group_of[layer].extent

    def tiers(self, layer: int = 0) -> dict[str, list[int]]:
        """Frames currently held in each tier (for the layer's group)."""
        return self._group_of[layer].policy.tiers()

    @property
    def plan(self) -> ChunkPlan:
        """The current chunk's plan (layer group 0, with every layer's slow frames when they differ, and the
        headings of its frames when the memory keeps them)."""
        plan = self.groups[0].plan
        if len(self.groups) > 1:
            plan = dataclasses.replace(plan, slow_per_layer=tuple(tuple(g.plan.tier("slow")) for g in self.groups))
        if self.headings is not None:
            frames = plan.context_frames + plan.current_frames
            plan = dataclasses.replace(plan, headings=self.headings.of_first_sample(frames))
        if self.params.score is not None:
            plan = dataclasses.replace(plan, retrieval=dict(self.groups[0].policy.scores))
        return plan

    # -- chunk lifecycle ---------------------------------------------------------------------------
    def begin_chunk(self, start: int, frames: int, headings=None) -> ChunkPlan:
        """Plan chunk [start, start+frames): arrange the store, rotate what it attends. `headings`: the camera
        heading of each of its frames per sample ([B][frames] floats, tokens) for a memory that keeps them
        (None: 0, a camera that never turned)."""
        self.chunk_index += 1
        self.start, self.frames, self._recache = start, frames, []
        self._set_headings(range(start, start + frames), headings)
        if self.relevance is not None:
            self.relevance.chunk_begins(range(start, start + frames), self._stored_frames)
        self.promotion.begin_chunk()
        for g in self.groups:
            g.plan = g.policy.plan(self.chunk_index, start, frames)
            g.check = g.policy.promotion_check(self.chunk_index, start)
            g.within_chunk = []
            g.arrange(self.store, [("main", f) for f in range(start, start + frames)], self._fixed_extent)
        self._after_plan()
        return self.plan

    def begin_pass(self, commit: bool) -> MemoryPass:
        """A model forward over the current chunk starts. A `commit` pass hands its keys and values over for
        `commit()` to write."""
        return MemoryPass(self, commit)

    def commit(self) -> MemoryUpdate:
        """After the commit pass: write its keys and values, let each group's policy update its tiers, and make the
        store follow (a prompt switch's re-encode pass is written and ends here)."""
        for layer, (k, v) in self._written.items():
            self.store.write(layer, self._group_of[layer].current_slots, k, v)
        if self.relevance is not None and not self._recache:  # the keys before the commit admits a keyframe
            self.relevance.chunk_written(
                self._written[0][0], range(self.start, self.start + self.frames), self._stored_frames
            )
        self._written = {}
        if self._recache:  # the end of a recache: frames no longer stored leave the store again
            for g, plan in zip(self.groups, self._recache):
                for f in plan.scratch:
                    g.slots.release(("main", f))
            self._recache = []
            return MemoryUpdate()
        updates = [self._commit_group(g, self.promotion.at_commit(g)) for g in self.groups]
        self._forget_headings()
        if self.exit_gradients is not None:
            self.exit_gradients.bind(self.start)
            self.exit_gradients.prune(lambda layer, f: ("main", f) in self._group_of[layer].slots)
        return updates[0]

    def _commit_group(self, g: _Group, promote: bool) -> MemoryUpdate:
        changes = g.policy.commit(self.start, self.frames, promote)
        for f in changes.slow_evicted:  # free first, so a full slow memory has room for the new copy
            g.slots.release(("slow", f))
        for f in changes.promoted:
            if ("slow", f) not in g.slots:  # a pass-time promotion stored it already
                self.store.copy(g.layers, g.slots.slot[("main", f)], g.slots.allocate(("slow", f)))
        for sink_frame, gone in changes.folded:
            self.store.fold(
                g.layers, g.slots.slot[("main", sink_frame)], g.slots.slot[("main", gone)], g.policy.fold_alpha
            )
        for f in changes.evicted:
            g.slots.release(("main", f))
        displaced = [entry for _, entry in g.within_chunk]
        return MemoryUpdate(
            promoted=tuple([f for f, _ in g.within_chunk] + changes.promoted),
            slow_evicted=tuple([f for kind, f in displaced if kind == "slow"] + changes.slow_evicted),
            evicted=tuple([f for kind, f in displaced if kind == "main"] + changes.evicted),
            folded=tuple(changes.folded),
            similarity=self.promotion.similarity,
        )

    # -- prompt switches ---------------------------------------------------------------------------
    def recache_frames(self, next_start: int, mode: str = "window") -> list[int]:
        """Frames whose clean latents a `mode` recache before `next_start` needs (the stream keeps them)."""
        return self.groups[0].policy.recache_frames(next_start, mode)

    def begin_recache(self, next_start: int, mode: str = "window", flush: bool = False) -> list[int]:
        """Prompt switch before chunk `next_start`: plan the re-encode pass of `mode` (see `TieredPolicy.recache`)
        and return the frames it re-encodes, oldest first. They are the 'current' frames of one commit pass (no
        mask among them) that overwrites their stored K/V; frames no longer stored get scratch slots for the
        pass. `commit()` ends it."""
        check_recache(self.spec, mode, flush)
        if flush and mode == "window":
            self.flush()  # ours: sink and slow go; the sink refills from the next chunk
        plans = []
        for g in self.groups:
            plan = g.policy.recache(self.chunk_index + 1, next_start, mode, clear=flush and mode == "longlive")
            for key in g.policy.adopt_sink(plan.new_sink, next_start) if plan.new_sink is not None else []:
                g.slots.release(key)
            first = plan.frames[0] if plan.frames else next_start
            assert plan.frames == list(range(first, first + len(plan.frames))), "recached frames must be contiguous"
            g.plan = ChunkPlan(self.chunk_index + 1, first, len(plan.frames), plan.context, tuple(plan.positions))
            g.arrange(self.store, [("main", f) for f in plan.frames], self._fixed_extent)
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

    # -- planning into the store ---------------------------------------------------------------------
    def _after_plan(self) -> None:
        positions = {g.plan.current_positions for g in self.groups}
        assert len(positions) == 1, "all layers must place the current chunk identically"
        current = self.groups[0].plan.current_positions
        self.current_position_ids = torch.tensor(current, dtype=torch.long, device=self.store.device)
        for g in self.groups:
            self._rotate_group(g)

    def _rotate_group(self, g: _Group) -> None:
        """Rotate the group's attended slots at the plan's positions: every plan, not only changed slots, since
        bounded positions move every chunk and folds, promotions, recaches and flushes change contents between."""
        if g.view_index is None or not g.current:  # nothing to rotate, or no pass will read it
            return
        self.store.rotate(g.layers, g.view_index, lambda keys: self._rotate_entries(keys, g.plan.context))
        self.rotations += len(g.layers)

    def _rotate_entries(self, keys: torch.Tensor, attended) -> torch.Tensor:
        """Pre-RoPE keys [B, m, T, H, D] of attended entries, rotated where the plan places them (and, for a
        room-anchored model, at their camera headings)."""
        positions = [a.position for a in attended]
        if self.headings is None:
            return self.rotate_keys(keys, positions)
        return self.rotate_keys(keys, positions, self.headings.tensor([a.frame for a in attended]))

    # -- retrieval (retrieve policy) and camera headings (room-anchored models) ---------------------------
    def set_prompt(self, text: torch.Tensor) -> None:
        """The text embedding [B, L, D] the next chunks are made under (a retrieval by text ranks keyframes by
        how like it their own prompt was; other memories ignore it)."""
        if self.relevance is not None:
            self.relevance.set_prompt(text)

    def _stored_frames(self) -> set[int]:
        """Frames the store holds for any layer group (their own entry or a promoted copy)."""
        return {f for g in self.groups for _, f in g.slots.slot}

    def _set_headings(self, frames, headings) -> None:
        """Record the headings of `frames` and make them the current pass's ("stored": a recache re-encodes frames
        at the headings they were made at)."""
        frames = list(frames)
        if self.headings is None:
            if headings is not None and headings != "stored":
                raise UserError("this model's width positions are screen columns: it takes no camera headings")
            return
        if headings != "stored":
            self.headings.record(frames, headings)
        self.current_headings = self.headings.tensor(frames)

    def _forget_headings(self) -> None:
        """Keep the headings of the frames still stored and of the last `capacity` frames (a LongLive recache
        re-encodes those), no others: bounded like the store."""
        if self.headings is not None:
            stored = self._stored_frames()
            end, capacity = self.start + self.frames, self.params.capacity
            recent = end - (capacity if capacity is not None else end)
            self.headings.keep(lambda f: f in stored or f >= recent)

    # -- what the model calls ----------------------------------------------------------------------
    def exchange(self, layer: int, k: torch.Tensor, v: torch.Tensor, *, commit: bool, copy: bool) -> ContextRead:
        """A pass's pre-RoPE keys and values of `layer` arrive (kept for the write on a `commit` pass, seen by the
        promotion rule); returns what the layer attends: `copy` for keys that carry an autograd graph."""
        if commit:
            self._written[layer] = (k.detach(), v.detach())
        elif copy and self.exit_gradients is not None:
            self.exit_gradients.record(layer, k, v)
        if not self._recache:
            g = self._group_of[layer]
            taken = self.promotion.observe(layer, g, k, v, commit)
            if taken is not None:
                (self._promote_now if taken.now else self._stage_copy)(g, taken.layers)
        return self.copy_read(layer) if copy else self.slot_read(layer)

    def slot_read(self, layer: int) -> ContextRead:
        """In place: the store's first `extent` slots, the chunk's own written among them (the slow reference,
        tests/memory/gather_reference.py, reads copies here instead)."""
        g = self._group_of[layer]
        return ContextRead(*self.store.prefix(layer, g.extent), g.current_tokens, g.key_mask)

    def copy_read(self, layer: int) -> ContextRead:
        view = self.view(layer)
        if view is not None and self.exit_gradients is not None:
            view = self.exit_gradients.add_to(layer, self._group_of[layer].plan.context, *view)
        return ContextRead(*(view or (None, None)))

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Copies of the rotated keys and values [B, n*T, H, D] of the stored frames this chunk attends in
        `layer`, in plan order (None: none)."""
        g = self._group_of[layer]
        return None if g.view_index is None else self.store.gather(layer, g.view_index)

    def track_exit_gradients(self) -> None:
        """Training rollouts that reproduce Self-Forcing's in-place cache: later chunks back-propagate into the
        exit passes of the chunks they attend (memory/exit_grad.py)."""
        self.exit_gradients = ExitGradients(self.layout.tokens_per_frame, self._rotate_entries)

    # -- promotions taken during a pass ------------------------------------------------------------
    def _stage_copy(self, g: _Group, copies: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store a promotion's copy of the current chunk's kept frame now (attended from the next chunk)."""
        slot = self.store.index([g.slots.allocate(("slow", g.policy.kept_frame(self.start, self.frames)))])
        for layer, (k, v) in copies.items():
            self.store.write(layer, slot, k, v)

    def _promote_now(self, g: _Group, copies: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Released cache: copy the chunk's first frame (this pass's K/V) into the context region and attend it
        from this pass on; the entry it displaces is gone."""
        plan, displaced = g.policy.promote(self.start)
        g.slots.release(displaced)
        self._stage_copy(g, copies)
        g.within_chunk.append((self.start, displaced))
        g.plan = plan
        g.arrange(self.store, [("main", f) for f in plan.current_frames], self._fixed_extent)
        self._rotate_group(g)


class MemoryPass:
    """One model forward over the memory's current chunk: the chunk's positions (and camera headings) and what
    each layer attends. A layer reads once per pass: a block that gradient checkpointing runs again (in the
    backward, when the memory has moved on) gets what its first run got and changes nothing twice."""

    __slots__ = ("memory", "commit", "positions", "headings", "_reads")

    def __init__(self, memory: ContextMemory, commit: bool):
        self.memory, self.commit = memory, commit
        self.positions = memory.current_position_ids  # a tensor: new positions must not mean a new compiled graph
        self.headings = memory.current_headings
        self._reads: dict[int, ContextRead] = {}

    def keys_values(self, layer: int, k: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor):
        """Hand over the layer's keys (pre-RoPE `k` and rotated `k_rot`) and values [B, frames*T, H, D]; get the
        keys, values [B, Lk, H, D] and key mask [Lk] (None: attend every key) to attend."""
        read = self._reads.get(layer)
        if read is None:
            copy = k_rot.requires_grad or v.requires_grad
            read = self._reads[layer] = self.memory.exchange(layer, k, v, commit=self.commit, copy=copy)
        return read.with_chunk(k_rot, v)
