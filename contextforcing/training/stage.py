"""The contract between the one training loop and the stages (teacher, ode, dmd, cdmd).

A stage owns its models and losses; the trainer owns everything generic: data position, gradient
accumulation, clipping, optimizer steps, EMA, mixed precision and sharding (via `parallelize`),
checkpoints, logging, NaN guards. Per training step the trainer asks the stage for its `updates`;
each update names a trainable module group and gives a loss closure over one micro-batch.

Randomness that changes control flow (exit step, rollout length, which update runs) must be drawn
through `StepContext.shared_randint` / `shared_uniform`: drawn on rank 0 and broadcast, from a generator
seeded by (seed, step, micro-batch), so every rank runs the same forwards and resumed runs replay exactly.
Per-sample noise uses `StepContext.generator` (seeded by (seed, step, micro-batch, rank)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn as nn

LossFn = Callable[[Any, "StepContext"], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Update:
    """One optimizer step of one module group: zero_grad, accumulate `loss` over micro-batches, clip, step."""

    group: str  # key into Stage.trainable() and the optimizers, e.g. "generator" or "critic"
    loss: LossFn  # (micro_batch, ctx) -> (scalar loss to backprop, metrics); the trainer divides by accumulation


class StepContext(Protocol):
    step: int  # global optimizer step (0-based) being computed
    micro: int  # micro-batch index within the step
    device: torch.device
    generator: torch.Generator  # per-rank noise

    def shared_randint(self, low: int, high: int) -> int:
        """Uniform integer in [low, high), identical on every rank (drawn on rank 0, broadcast)."""

    def shared_uniform(self) -> float:
        """Uniform float in [0, 1), identical on every rank."""


class Stage(Protocol):
    name: str  # "teacher" | "ode" | "dmd" | "cdmd"; a run directory only resumes its own stage

    def trainable(self) -> dict[str, nn.Module]:
        """Module groups that are optimized and checkpointed, e.g. {"generator": G, "critic": F}.
        The generator group (if any) is the one exported and EMA-tracked."""

    def frozen(self) -> dict[str, nn.Module]:
        """Modules used but never updated or saved (teachers, real score); sharded like the rest."""

    def optimizer_settings(self, group: str) -> dict:
        """AdamW kwargs for a group: lr, betas, weight_decay."""

    def updates(self, step: int) -> list[Update]:
        """The updates to run at `step`, in order (e.g. DMD: generator every 5th step, then critic)."""

    def batches(self, rank: int, world_size: int, start: int) -> Iterator[Any]:
        """Infinite iterator of micro-batches for this rank, positioned at micro-batch `start` (for resume)."""
