"""When a slow_fast memory promotes a keyframe: one small strategy per rule, chosen once from the options.

A strategy sees every pass's pre-RoPE keys of every layer before that layer attends (`observe`), and is
asked at each commit whether the committed chunk is promoted (`at_commit`). Policies without a slow tier,
and the uniform rule, need no signal at all.

  NoSignal         promotion by position alone (uniform rule), or never
  CommitSurprisal  ours: one decision per chunk on the clean commit pass, cos of pooled mean keys < tau
  PassSurprisal    the released code's timing in the tiered layout (`promote_on=any_pass`): every pass is
                   compared with the previous pass; the first crossing copies that pass's first frame,
                   attended from the next chunk
  ReleasedSurprisal the released cache (`layout=released`): per layer, every pass, the batch's per-sample
                   cosines averaged; the copy is made and attended within the deciding pass
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from contextforcing.memory.policies import TierParams

if TYPE_CHECKING:
    from contextforcing.memory.context import ContextMemory, _Group


def mean_key(k: torch.Tensor) -> torch.Tensor:
    """A chunk's representation in one layer: its pre-RoPE keys [B, L, H, D] averaged over tokens, [B, H*D]."""
    return k.detach().float().mean(dim=1).flatten(1)


def pooled_cosine(current: list[torch.Tensor], previous: list[torch.Tensor]) -> torch.Tensor:
    """cos between two pooled representations: each averaged over layers and the batch first (one
    representation, one cosine; not a mean of per-layer cosines)."""
    a = torch.stack(current).mean(dim=(0, 1))
    b = torch.stack(previous).mean(dim=(0, 1))
    return torch.cosine_similarity(a, b, dim=0)


class Promotion:
    """The interface; also the strategy for memories whose promotions need no signal."""

    def __init__(self, params: TierParams, num_layers: int):
        self.tau = params.tau
        self.similarity: float | None = None  # the signal of group 0's decision in this chunk, if one was taken

    def begin_chunk(self) -> None:
        self.similarity = None

    def observe(self, memory: "ContextMemory", layer: int, k: torch.Tensor, v: torch.Tensor, commit: bool) -> None:
        """This pass's pre-RoPE keys and values [B, L, H, D] of `layer`, before the layer attends."""

    def at_commit(self, memory: "ContextMemory", g: "_Group") -> bool:
        return memory.check(g) == "yes"

    def end_commit(self) -> None:
        """Every group has decided."""

    def _record(self, memory: "ContextMemory", g: "_Group", sim: float) -> None:
        if g is memory.groups[0]:
            self.similarity = sim if self.similarity is None else min(self.similarity, sim)


class CommitSurprisal(Promotion):
    def __init__(self, params: TierParams, num_layers: int):
        super().__init__(params, num_layers)
        self.current: list[torch.Tensor | None] = [None] * num_layers
        self.previous: list[torch.Tensor | None] = [None] * num_layers

    def observe(self, memory, layer, k, v, commit):
        if commit:
            self.current[layer] = mean_key(k)

    def at_commit(self, memory, g):
        if memory.check(g) != "ask" or any(self.previous[i] is None or self.current[i] is None for i in g.layers):
            return False
        sim = float(pooled_cosine([self.current[i] for i in g.layers], [self.previous[i] for i in g.layers]))
        self._record(memory, g, sim)  # one host read per checked chunk: the tier layout depends on it
        return sim < self.tau

    def end_commit(self):
        self.previous = list(self.current)


class PassSurprisal(Promotion):
    def __init__(self, params: TierParams, num_layers: int):
        super().__init__(params, num_layers)
        self.current: list[torch.Tensor | None] = [None] * num_layers
        self.previous: list[torch.Tensor | None] = [None] * num_layers
        self.staged: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.promoted: set[int] = set()  # groups (by first layer) that promoted in this chunk

    def begin_chunk(self):
        super().begin_chunk()
        self.promoted.clear()

    def observe(self, memory, layer, k, v, commit):
        g = memory.group_of(layer)
        self.current[layer] = mean_key(k)
        self.staged[layer] = memory.first_frame(k, v)
        if layer != g.layers[-1]:  # a group decides once all its layers have their keys of this pass
            return
        ready = all(self.previous[i] is not None for i in g.layers)
        if ready and g.layers[0] not in self.promoted and memory.check(g) == "ask":
            sim = float(pooled_cosine([self.current[i] for i in g.layers], [self.previous[i] for i in g.layers]))
            self._record(memory, g, sim)
            if sim < self.tau:
                memory.stage_copy(g, {i: self.staged[i] for i in g.layers})
                self.promoted.add(g.layers[0])
        for i in g.layers:
            self.previous[i] = self.current[i]
        self.staged = {}

    def at_commit(self, memory, g):
        return g.layers[0] in self.promoted


class ReleasedSurprisal(Promotion):
    def __init__(self, params: TierParams, num_layers: int):
        super().__init__(params, num_layers)
        self.previous: list[torch.Tensor | None] = [None] * num_layers
        self.promoted: set[int] = set()

    def begin_chunk(self):
        super().begin_chunk()
        self.promoted.clear()

    def observe(self, memory, layer, k, v, commit):
        g = memory.group_of(layer)  # one layer per group
        current, previous = mean_key(k), self.previous[layer]
        self.previous[layer] = current  # always the last call's, whatever it decided (as released)
        if previous is None or layer in self.promoted or memory.check(g) != "ask":
            return
        sim = float(torch.cosine_similarity(current, previous, dim=1).mean())  # per sample, then the batch mean
        self._record(memory, g, sim)
        if sim < self.tau:
            memory.promote_now(g, k, v)
            self.promoted.add(layer)

    def at_commit(self, memory, g):
        return False  # done inside the pass


def promotion_for(params: TierParams, num_layers: int) -> Promotion:
    if not params.surprisal:
        return Promotion(params, num_layers)
    if params.layout == "released":
        return ReleasedSurprisal(params, num_layers)
    if params.promote_on == "any_pass":
        return PassSurprisal(params, num_layers)
    return CommitSurprisal(params, num_layers)
