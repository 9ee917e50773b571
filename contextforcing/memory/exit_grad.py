"""The gradient path of Self-Forcing's in-place KV cache, as an explicit option of a training rollout.

Self-Forcing (`pipeline/self_forcing_training.py`, and the released Context Forcing code after it) writes each
pass's keys and values into one cache tensor in place. The grad-enabled exit pass of a chunk writes its K/V
with their autograd graph; the chunk's no-grad commit pass then overwrites the values but not the graph. A
later chunk that attends those slots therefore reads the commit pass's values while its gradient flows into
the earlier chunk's exit-pass K/V: most generator gradients change by 1-3x against detached memory.

`ExitGradients` reproduces exactly that: a frame stored by a chunk whose exit pass carried a graph is
attended as `stored + (k_exit - sg(k_exit))` (and the same for values): the stored values forward, the exit
pass's graph backward. The link follows the frame while it stays in its own slot (main storage); a promoted
slow copy carries none (the released code's copy made by a grad pass would). Off by default: ours attends
detached memory, so each chunk's gradient comes from its own exit pass only (docs/training.md).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from contextforcing.memory.plan import Attended

# (pre-RoPE keys [B, m, T, H, D] of m attended entries, the entries) -> keys rotated where the plan puts them
EntryRotation = Callable[[torch.Tensor, Sequence[Attended]], torch.Tensor]


class ExitGradients:
    """Zero-valued straight-through terms (frame keys and values that carry an exit pass's graph), per layer."""

    def __init__(self, tokens_per_frame: int, rotate_entries: EntryRotation):
        self.tokens_per_frame, self.rotate_entries = tokens_per_frame, rotate_entries
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> this chunk's grad-pass (k, v)
        self.links: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (layer, frame) -> (dk, dv)

    def record(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """A pass with a graph handed over `layer`'s pre-RoPE keys and values [B, frames*T, H, D]."""
        self.pending[layer] = (k, v)

    def bind(self, start: int) -> None:
        """The chunk starting at `start` was committed: its frames now carry its grad pass's graph."""
        t = self.tokens_per_frame
        with torch.enable_grad():  # commits run under no_grad; a link is a graph by definition
            for layer, (k, v) in self.pending.items():
                dk, dv = ((x - x.detach()).unflatten(1, (-1, t)) for x in (k, v))
                for i in range(dk.shape[1]):
                    self.links[(layer, start + i)] = (dk[:, i], dv[:, i])
        self.pending.clear()

    def prune(self, stored: Callable[[int, int], bool]) -> None:
        """Forget the frames a layer no longer stores as themselves (evicted)."""
        self.links = {key: link for key, link in self.links.items() if stored(*key)}

    def add_to(
        self, layer: int, context: Sequence[Attended], keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`keys` (rotated) and `values` [B, n*T, H, D] of the attended `context` in plan order, with the links
        of the frames that have one added (rotated at the frame's position): the same values, a longer graph."""
        linked = [(i, a) for i, a in enumerate(context) if not a.copy and (layer, a.frame) in self.links]
        if not linked:
            return keys, values
        t = self.tokens_per_frame
        dk = torch.stack([self.links[(layer, a.frame)][0] for _, a in linked], 1)  # [B, m, T, H, D]
        rotated = self.rotate_entries(dk.to(keys.dtype), [a for _, a in linked]).unflatten(1, (-1, t))
        index = torch.tensor([i for i, _ in linked], device=keys.device)
        dv = torch.stack([self.links[(layer, a.frame)][1] for _, a in linked], 1).to(values.dtype)
        keys = keys.unflatten(1, (-1, t)).index_add(1, index, rotated).flatten(1, 2)
        values = values.unflatten(1, (-1, t)).index_add(1, index, dv).flatten(1, 2)
        return keys, values
