"""The slow reference read path of the context memory, kept beside the tests that compare against it.

`GatherMemory` reads its store the plain way: for every plan (chunk, recache, or a promotion inside a
pass), per layer, a gathered copy of the planned frames' pre-RoPE keys rotated at the plan's positions and
a gathered copy of their values, kept for the plan's passes; the chunk's own keys and values are appended.
It shares the library's policies and storage bookkeeping and only replaces how attention reads, so a test
that streams both and compares outputs checks the slots view (in-place slot ranges, rotated-key buffers,
key masks) and nothing else.
"""

from __future__ import annotations

import torch

from contextforcing.memory.context import ContextMemory, ContextRead


class GatherMemory(ContextMemory):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._copies: dict[int, tuple[object, tuple[torch.Tensor, torch.Tensor]]] = {}  # layer -> (plan, K/V)

    @classmethod
    def like(cls, memory: ContextMemory) -> "GatherMemory":
        """An empty gather-mode memory with `memory`'s policy, sizes, rotation, device, dtype and prompt."""
        gather = cls(
            memory.spec,
            memory.layout,
            key_rotation=memory.rotate_keys,
            batch=memory.k[0].shape[0],
            device=memory.k[0].device,
            dtype=memory.k[0].dtype,
            max_frames=None if memory.bounded else memory.slots,
        )
        if memory.relevance is not None:
            gather.relevance.prompt = memory.relevance.prompt  # already pooled
        return gather

    def view_nbytes(self) -> int:
        """The copies kept for the current plans (their size follows what the chunk attends)."""
        return sum(t.numel() * t.element_size() for _, kv in self._copies.values() for t in kv)

    def _rotate_group(self, g) -> None:
        """No rotated-key buffers: the copies are rotated when first read."""

    def slot_read(self, layer: int) -> ContextRead:
        return self.copy_read(layer)

    def view(self, layer: int):
        g = self.group_of(layer)
        if g.view_index is None:
            return None
        plan, kv = self._copies.get(layer, (None, None))
        if plan is not g.plan:
            keys = self.rotate_keys(self.k[layer].index_select(1, g.view_index), g.plan.positions)
            kv = (keys, self.v[layer].index_select(1, g.view_index).flatten(1, 2))
            self._copies[layer] = (g.plan, kv)
            self.rotations += 1
        return kv


def use_gather(stream) -> None:
    """Give every branch of a fresh `VideoStream` a gather-mode memory."""
    for branch in stream.branches:
        branch.memory = GatherMemory.like(branch.memory)
