"""When a slow_fast memory promotes a keyframe: one small strategy per rule, chosen once from the options.

A strategy sees every pass's pre-RoPE keys of every layer before that layer attends (`observe`) and is
asked at each commit whether the committed chunk is promoted (`at_commit`). It knows nothing of storage:
`observe` returns a `Copy` for the memory to store (the chunk's kept frame as this pass computed it). A
`group` is any object with `layers` (the layers that decide together) and `check` (what the policy allows
for the current chunk: 'no', 'yes' or 'ask', fixed when the chunk is planned); strategies read `check`
only when they need it, so a compiled forward of a rule without a signal never depends on it.

  Promotion        promotion by position alone (uniform rule), or never
  CommitSurprisal  ours: one decision per chunk on the clean commit pass, cos of pooled mean keys < tau,
                   against the previous chunk (`compare=previous`, the paper) or the last checked chunk
                   (`compare=checked`), keys pooled over every layer or the first layer's only (`key_layers`)
  PassSurprisal    the released code's timing in the tiered layout (`promote_on=any_pass`): every pass is
                   compared with the previous pass; the first crossing copies that pass's first frame,
                   attended from the next chunk
The released cache's rule (per layer, every pass, the copy attended within the deciding pass) lives with its
layout in `released.py`; each policy object names its strategy (`TieredPolicy.promotion`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from contextforcing.memory.spec import TierParams


@dataclass(frozen=True)
class Copy:
    """A promotion taken during a pass: store these K/V [B, T, H, D] per layer as the chunk's slow copy, either
    attended from the next chunk (`now` False) or at once, in this very pass (`now` True)."""

    layers: dict[int, tuple[torch.Tensor, torch.Tensor]]
    now: bool


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
    is compared with, and whether it is promoted. `CommitSurprisal` runs it on the keys the commit passes see;
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
    """The interface; also the strategy for memories whose promotions need no signal.

    The signal of the group holding layer 0 is the one reported (`similarity`)."""

    def __init__(self, params: TierParams, num_layers: int, tokens_per_frame: int):
        self.tau, self.tokens_per_frame, self.keep_last = params.tau, tokens_per_frame, params.keep_last
        self.similarity: float | None = None  # the signal of group 0's decision in this chunk, if one was taken

    def begin_chunk(self) -> None:
        self.similarity = None

    def observe(self, layer: int, group, k: torch.Tensor, v: torch.Tensor, commit: bool) -> Copy | None:
        """This pass's pre-RoPE keys and values [B, L, H, D] of `layer`, before the layer attends."""
        return None

    def at_commit(self, group) -> bool:
        return group.check == "yes"

    def end_commit(self) -> None:
        """Every group has decided."""

    def _kept_frame(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent frame of this pass's chunk keys and values [B, frames*T, H, D] that a promotion copies
        (`keep`: the first, or the last), detached."""
        t = self.tokens_per_frame
        first = k.shape[1] - t if self.keep_last else 0
        return k[:, first : first + t].detach(), v[:, first : first + t].detach()

    def _record(self, group, sim: float) -> None:
        if group.layers[0] == 0:
            self.similarity = sim if self.similarity is None else min(self.similarity, sim)


class CommitSurprisal(Promotion):
    def __init__(self, params: TierParams, num_layers: int, tokens_per_frame: int):
        super().__init__(params, num_layers, tokens_per_frame)
        self.first_layer, self.compare = params.first_layer_keys, params.compare
        self.current: list[torch.Tensor | None] = [None] * num_layers
        self.tracks: dict[int, SurprisalTrack] = {}  # per group (by its first layer)

    def observe(self, layer, group, k, v, commit):
        if commit:
            self.current[layer] = mean_key(k)
        return None

    def at_commit(self, group):
        layers = group.layers[:1] if self.first_layer else group.layers
        keys = [self.current[i] for i in layers]
        current = None if any(k is None for k in keys) else pooled_key(keys)
        track = self.tracks.setdefault(group.layers[0], SurprisalTrack(self.tau, self.compare))
        promote, sim = track.decide(current, group.check)
        if sim is not None:
            self._record(group, sim)  # the tier layout depends on it
        return promote


class PassSurprisal(Promotion):
    def __init__(self, params: TierParams, num_layers: int, tokens_per_frame: int):
        super().__init__(params, num_layers, tokens_per_frame)
        self.current: list[torch.Tensor | None] = [None] * num_layers
        self.previous: list[torch.Tensor | None] = [None] * num_layers
        self.staged: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.promoted: set[int] = set()  # groups (by first layer) that promoted in this chunk

    def begin_chunk(self):
        super().begin_chunk()
        self.promoted.clear()

    def observe(self, layer, group, k, v, commit):
        self.current[layer] = mean_key(k)
        self.staged[layer] = self._kept_frame(k, v)
        layers = group.layers
        if layer != layers[-1]:  # a group decides once all its layers have their keys of this pass
            return None
        copy = None
        ready = all(self.previous[i] is not None for i in layers)
        if ready and layers[0] not in self.promoted and group.check == "ask":
            sim = float(pooled_cosine([self.current[i] for i in layers], [self.previous[i] for i in layers]))
            self._record(group, sim)
            if sim < self.tau:
                copy = Copy({i: self.staged[i] for i in layers}, now=False)
                self.promoted.add(layers[0])
        for i in layers:
            self.previous[i] = self.current[i]
        self.staged = {}
        return copy

    def at_commit(self, group):
        return group.layers[0] in self.promoted
