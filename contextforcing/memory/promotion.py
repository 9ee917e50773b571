"""When a slow_fast memory promotes a keyframe: one small strategy per rule, chosen once from the options.

A strategy sees every pass's pre-RoPE keys of every layer before that layer attends (`observe`), and is
asked at each commit whether the committed chunk is promoted (`at_commit`). Policies without a slow tier,
and the uniform rule, need no signal at all.

  NoSignal         promotion by position alone (uniform rule), or never
  CommitSurprisal  ours: one decision per chunk on the clean commit pass, cos of pooled mean keys < tau,
                   against the previous chunk (`compare=previous`, the paper) or the last checked chunk
                   (`compare=checked`), keys pooled over every layer or the first layer's only (`key_layers`)
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


def pooled_key(keys: list[torch.Tensor]) -> torch.Tensor:
    """One chunk's representation from its mean keys of some layers ([B, H*D] each): averaged over the layers and
    the batch ([H*D]; one representation, one cosine, not a mean of per-layer cosines)."""
    return torch.stack(keys).mean(dim=(0, 1))


def pooled_cosine(current: list[torch.Tensor], previous: list[torch.Tensor]) -> torch.Tensor:
    """cos between two pooled representations (`pooled_key`)."""
    return torch.cosine_similarity(pooled_key(current), pooled_key(previous), dim=0)


class SurprisalTrack:
    """The commit-pass surprisal rule on a sequence of chunk representations, in plain host logic: what a chunk
    is compared with, and whether it is promoted. `ContextMemory` runs it on the keys its commit passes see;
    training replays it on keys computed for a whole clip at once (`key_layers=first`, `training.stages.common`)."""

    def __init__(self, tau: float, compare: str):
        self.tau, self.compare = tau, compare
        self.previous: torch.Tensor | None = None

    def decide(self, current: torch.Tensor | None, check: str) -> tuple[bool, float | None]:
        """`check` is the policy's answer for the chunk ('no', 'ask'); returns (promote, similarity or None)."""
        checked = check == "ask"
        promote, sim = False, None
        if checked and current is not None and self.previous is not None:
            sim = float(torch.cosine_similarity(current, self.previous, dim=0))  # one host read per checked chunk
            promote = sim < self.tau
        if current is not None and (checked or self.compare == "previous"):
            self.previous = current
        return promote, sim


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
        self.first_layer = params.first_layer_keys
        self.current: list[torch.Tensor | None] = [None] * num_layers
        self.tracks: dict[int, SurprisalTrack] = {}  # per group (by its first layer)
        self.params = params

    def observe(self, memory, layer, k, v, commit):
        if commit:
            self.current[layer] = mean_key(k)

    def at_commit(self, memory, g):
        layers = g.layers[:1] if self.first_layer else g.layers
        keys = [self.current[i] for i in layers]
        current = None if any(k is None for k in keys) else pooled_key(keys)
        track = self.tracks.setdefault(g.layers[0], SurprisalTrack(self.params.tau, self.params.compare))
        promote, sim = track.decide(current, memory.check(g))
        if sim is not None:
            self._record(memory, g, sim)  # the tier layout depends on it
        return promote


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
        self.staged[layer] = memory.kept_frame(k, v)
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
