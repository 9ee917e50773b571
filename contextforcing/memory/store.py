"""The tensors of a context memory: per layer, one slot of pre-RoPE keys, values and rotated keys per stored latent
frame, and the host map of which slot holds what. It knows no policy: the driver (`context.py`) says what to write,
copy, fold, rotate and read.

Attention reads a prefix of the slots: the driver keeps every frame the current chunk attends in slots [0, n) and
the chunk's own frames right after them (`SlotMap.arrange`), so a pass attends slots [0, n + frames) whole, with no
key mask over free, hidden or waiting slots, at the cost of what it attends (softmax over keys does not depend on
their order; the positions are in the rotation). Frames stored but not attended (a copy hidden behind its original,
frames waiting for an EMA fold) wait after them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable

import torch

from contextforcing.config import ModelConfig, VideoConfig


@dataclass(frozen=True)
class MemoryLayout:
    """Sizes of what one latent frame stores per layer, all derived from the model and video configs."""

    num_layers: int
    tokens_per_frame: int
    num_heads: int
    head_dim: int
    chunk_frames: int
    view_tokens: int = 0  # tokens across one view (a retrieval by view overlap)
    room_tokens: int = 0  # tokens round a room-anchored model's room (0: none)

    @classmethod
    def for_model(cls, model: ModelConfig, video: VideoConfig) -> "MemoryLayout":
        view = video.latent_width // model.patch_size[2]
        return cls(
            model.num_layers,
            video.tokens_per_frame(model),
            model.num_heads,
            model.head_dim,
            video.chunk_frames,
            view,
            model.room_tokens,
        )

    def frame_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of K plus V for one latent frame in one layer."""
        return 2 * self.tokens_per_frame * self.num_heads * self.head_dim * torch.finfo(dtype).bits // 8


class SlotMap:
    """Which slot holds which entry (any hashable key, e.g. ('main', frame) or ('slow', frame)); host ints."""

    def __init__(self, size: int):
        self.size = size
        self.slot: dict[Hashable, int] = {}

    def __contains__(self, key) -> bool:
        return key in self.slot

    def allocate(self, key) -> int:
        """The key's slot, the lowest free one for a new key."""
        if key not in self.slot:
            used = set(self.slot.values())
            free = [s for s in range(self.size) if s not in used]
            if not free:
                raise RuntimeError(f"context memory is full ({self.size} frames); policy capacity is wrong")
            self.slot[key] = free[0]
        return self.slot[key]

    def release(self, key) -> None:
        del self.slot[key]

    def arrange(self, attended: list, current: list) -> tuple[list[int], list[int]]:
        """Place the `attended` keys (all stored) in slots [0, n) and the `current` ones in [n, n + len(current)),
        other stored keys after them, moving as few as possible; returns the moves (sources, destinations), to be
        copied all at once (`KVStore.move`)."""
        n, end = len(attended), len(attended) + len(current)
        regions = [(attended, range(n)), (current, range(n, end))]
        want = set(attended) | set(current)
        outside = [k for k, s in self.slot.items() if k not in want and s < end]  # waiting keys in the prefix
        taken = {s for k, s in self.slot.items() if k not in outside and not _misplaced(k, s, regions)}
        target: dict = {}
        for keys, where in regions:
            spare = iter(s for s in where if s not in taken)
            target.update((k, next(spare)) for k in keys if k not in self.slot or _misplaced(k, self.slot[k], regions))
        spare = iter(s for s in range(end, self.size) if s not in taken and s not in target.values())
        target.update((k, next(spare)) for k in outside)
        moves = [(self.slot[k], s) for k, s in target.items() if k in self.slot]
        self.slot.update(target)
        return [m[0] for m in moves], [m[1] for m in moves]


def _misplaced(key, slot: int, regions) -> bool:
    return any(key in keys and slot not in where for keys, where in regions)


class KVStore:
    """Per-layer slot tensors [B, S, T, H, D]: pre-RoPE keys `k`, values `v`, and `k_rot`, the keys rotated where
    the current plan places them (what attention reads, beside `v`)."""

    def __init__(self, layout: MemoryLayout, slots: int, batch: int, device=None, dtype=torch.float32):
        self.layout = layout
        shape = (batch, slots, layout.tokens_per_frame, layout.num_heads, layout.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layout.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layout.num_layers)]
        self.k_rot = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layout.num_layers)]
        self.device: torch.device = self.k[0].device  # the slots never move

    def index(self, slots: list[int]) -> torch.Tensor:
        return torch.tensor(slots, dtype=torch.long, device=self.device)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store pre-RoPE keys and values [B, n*T, H, D] (detached) in the slots [n] of `layer`."""
        shape = (k.shape[0], -1, self.layout.tokens_per_frame, *k.shape[2:])
        self.k[layer].index_copy_(1, slots, k.detach().reshape(shape).to(self.k[layer].dtype))
        self.v[layer].index_copy_(1, slots, v.detach().reshape(shape).to(self.v[layer].dtype))

    @torch.no_grad()
    def move(self, layers: list[int], sources: list[int], destinations: list[int]) -> None:
        """Whole slots (keys, values, rotated keys) of `layers` from `sources` to `destinations`, read before any is
        written (the two may overlap)."""
        if not sources:
            return
        src, dst = self.index(sources), self.index(destinations)
        for i in layers:
            for store in (self.k[i], self.v[i], self.k_rot[i]):
                store.index_copy_(1, dst, store.index_select(1, src))

    @torch.no_grad()
    def copy(self, layers: list[int], src: int, dst: int) -> None:
        """Keys and values of one slot into another (a promotion's copy of a stored frame)."""
        for i in layers:
            self.k[i][:, dst] = self.k[i][:, src]
            self.v[i][:, dst] = self.v[i][:, src]

    @torch.no_grad()
    def fold(self, layers: list[int], into: int, gone: int, alpha: float) -> None:
        """Reward Forcing's EMA sink: slot `into` <- alpha * into + (1 - alpha) * gone, keys and values."""
        for i in layers:
            for store in (self.k[i], self.v[i]):
                store[:, into].mul_(alpha).add_(store[:, gone], alpha=1 - alpha)

    @torch.no_grad()
    def rotate(self, layers: list[int], slots: torch.Tensor, rotate: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """k_rot of the slots [n] <- rotate(their pre-RoPE keys [B, n, T, H, D]) (-> [B, n*T, H, D])."""
        t = self.layout.tokens_per_frame
        for i in layers:
            self.k_rot[i].index_copy_(1, slots, rotate(self.k[i].index_select(1, slots)).unflatten(1, (-1, t)))

    def prefix(self, layer: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the rotated keys and values [B, frames*T, H, D] of slots [0, frames): what a pass attends."""
        t = self.layout.tokens_per_frame
        return self.k_rot[layer].flatten(1, 2)[:, : frames * t], self.v[layer].flatten(1, 2)[:, : frames * t]

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the rotated keys and values [B, n*T, H, D] of the slots [n], in that order."""
        return self.k_rot[layer].index_select(1, slots).flatten(1, 2), self.v[layer].index_select(1, slots).flatten(
            1, 2
        )

    def nbytes(self) -> int:
        """Bytes of the K/V store (the slots)."""
        return _bytes(self.k + self.v)

    def view_nbytes(self) -> int:
        """Bytes held besides the store for reading it: the rotated-key buffers (preallocated)."""
        return _bytes(self.k_rot)


@dataclass
class ContextRead:
    """What a layer attends besides the chunk's own keys and values: copies of the attended frames (`tokens` None:
    the chunk is appended), or views of the store's attended prefix (`KVStore.prefix`) with the chunk's token slots
    right after it (`tokens`: the chunk is written there in place)."""

    keys: torch.Tensor | None
    values: torch.Tensor | None
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # fixed shapes only: [Lk], False past what the chunk attends

    def with_chunk(self, k_rot: torch.Tensor, v: torch.Tensor):
        if self.tokens is None:
            if self.keys is None:
                return k_rot, v, None
            return torch.cat([self.keys, k_rot], 1), torch.cat([self.values, v], 1), None
        self.keys.index_copy_(1, self.tokens, k_rot)  # the store holds the model's dtype, as attention needs
        self.values.index_copy_(1, self.tokens, v)
        return self.keys, self.values, self.mask


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
