"""Error-Recycling Fine-Tuning (Stable Video Infinity, used by the Context Forcing teacher, Sec. 3.1).

The teacher's own past prediction errors e = x0_hat - x0 are banked by timestep and re-injected into its
inputs, X~ = X + I * e_drift (I a Bernoulli indicator), so it learns to recover the clean velocity from
drifted inputs (the student's drifted contexts at CDMD time). Buckets are the nearest of the
`num_buckets` inference timesteps (Wan's shifted grid); each bucket holds up to `capacity` entries on
the CPU; a full bucket replaces its entry nearest (L2) to the new one, as SVI's `l2_batch` does
(`replace: nearest`), or its oldest (`replace: oldest`: the bank holds the model's most recent errors).
Recycling starts at `start_step` (nothing is banked or injected before): the errors of a model that is
still warming up describe a model that no longer exists.

Injection decisions are drawn through `StepContext.shared_uniform` (identical on all ranks, replayed on
resume); which entry is sampled uses the per-rank generator (it changes values, not control flow).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contextforcing.errors import UserError
from contextforcing.sampling.samplers import FlowMatchSchedule, euler_steps
from contextforcing.training.stage import StepContext

CONTEXT_TIERS = ("fast", "all")


@dataclass(frozen=True)
class ErrorRecyclingOptions:
    """Probabilities and sizes (defaults: `svi_long_context.sh` of the paper's released teacher)."""

    enabled: bool = False
    latent_prob: float = 0.9  # add an x0 error to the clean target before noising
    context_prob: float = 0.9  # add x0 errors (any bucket) to context frames of `context_tiers`
    # which context frames drift: fast (the released teacher: the recent motion frames; sink and slow stay the
    # truth) | all (sink and slow too: the memory the student will hand it is its own drifting past everywhere)
    context_tiers: str = "fast"
    noise_prob: float = 0.01  # add a noise-side error to the noise
    clean_prob: float = 0.5  # overrides the three above: no injection at all
    clean_update_prob: float = 0.1  # a clean (no-injection) step adds its errors to the buffers
    num_buckets: int = 50  # nearest of 50 inference timesteps (at the schedule's shift)
    capacity: int = 500  # entries per bucket
    storage_dtype: str = "float32"  # float32 | bfloat16: CPU memory is capacity * buckets * latent size
    replace: str = "nearest"  # a full bucket replaces its entry nearest to the new one (SVI) | its oldest
    start_step: int = 0  # first training step that banks and injects errors (e.g. the end of the lr warm-up)

    def validate(self) -> "ErrorRecyclingOptions":
        for name in ("latent_prob", "context_prob", "noise_prob", "clean_prob", "clean_update_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"error_recycling.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.num_buckets < 1 or self.capacity < 1:
            raise UserError("error_recycling.num_buckets and capacity must be at least 1")
        if self.storage_dtype not in ("float32", "bfloat16"):
            raise UserError(f"error_recycling.storage_dtype must be float32 or bfloat16, got {self.storage_dtype!r}")
        if self.replace not in ("nearest", "oldest"):
            raise UserError(f"error_recycling.replace must be nearest or oldest, got {self.replace!r}")
        if self.context_tiers not in CONTEXT_TIERS:
            raise UserError(
                f"error_recycling.context_tiers must be {' or '.join(CONTEXT_TIERS)}, got {self.context_tiers!r}"
            )
        if self.start_step < 0:
            raise UserError(f"error_recycling.start_step must be >= 0, got {self.start_step}")
        return self

    def active(self, step: int) -> bool:
        return self.enabled and step >= self.start_step


@dataclass(frozen=True)
class Injection:
    """Which inputs of this micro-batch receive a recycled error."""

    latent: bool = False
    context: bool = False
    noise: bool = False

    @property
    def clean(self) -> bool:
        return not (self.latent or self.context or self.noise)


def draw_injection(options: ErrorRecyclingOptions, ctx: StepContext) -> Injection:
    """Four shared uniforms are always drawn (a fixed number of draws per step keeps replay exact)."""
    clean, latent, context, noise = (ctx.shared_uniform() for _ in range(4))
    if not options.active(ctx.step) or clean < options.clean_prob:
        return Injection()
    return Injection(latent < options.latent_prob, context < options.context_prob, noise < options.noise_prob)


class ErrorBuffer:
    """Errors [C, F, H, W] banked by timestep bucket; CPU-resident."""

    def __init__(
        self,
        schedule: FlowMatchSchedule,
        num_buckets: int,
        capacity: int,
        dtype: torch.dtype = torch.float32,
        replace: str = "nearest",
    ):
        self.grid = torch.tensor(euler_steps(num_buckets, schedule), dtype=torch.float64)
        self.capacity, self.dtype, self.replace = capacity, dtype, replace
        self.entries: list[list[torch.Tensor]] = [[] for _ in range(num_buckets)]

    @classmethod
    def from_options(cls, options: ErrorRecyclingOptions, schedule: FlowMatchSchedule) -> "ErrorBuffer":
        return cls(
            schedule, options.num_buckets, options.capacity, getattr(torch, options.storage_dtype), options.replace
        )

    def bucket(self, t: float) -> int:
        return int((self.grid - float(t)).abs().argmin())

    def __len__(self) -> int:
        return sum(len(b) for b in self.entries)

    def sizes(self) -> list[int]:
        return [len(b) for b in self.entries]

    @torch.no_grad()
    def add(self, timesteps: torch.Tensor, errors: torch.Tensor) -> None:
        """Bank each sample's error errors[b] [C, F, H, W] under the bucket of timesteps[b]."""
        for t, e in zip(timesteps.reshape(-1).tolist(), errors.detach().to("cpu", self.dtype)):
            bucket = self.entries[self.bucket(t)]
            if len(bucket) < self.capacity:
                bucket.append(e.clone())
                continue
            if self.replace == "oldest":  # entries are kept oldest first
                bucket.pop(0)
                bucket.append(e.clone())
                continue
            stacked = torch.stack(bucket).float().flatten(1)
            nearest = int((stacked - e.float().flatten()).norm(dim=1).argmin())
            bucket[nearest] = e.clone()

    def sample(self, t: float | None, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """A random entry of t's bucket (t None: of all buckets pooled); None while that is empty."""
        pool = self.entries[self.bucket(t)] if t is not None else [e for b in self.entries for e in b]
        if not pool:
            return None
        gen_device = generator.device if generator is not None else "cpu"
        index = int(torch.randint(0, len(pool), (1,), generator=generator, device=gen_device))
        return pool[index]

    def state_dict(self) -> dict:
        return {"grid": self.grid, "entries": [list(b) for b in self.entries]}

    def load_state_dict(self, state: dict) -> None:
        if not torch.equal(state["grid"], self.grid):
            raise UserError("error buffer was saved with another timestep grid (num_buckets or shift differ)")
        self.entries = [list(b) for b in state["entries"]]


def fit_frames(error: torch.Tensor, frames: int) -> torch.Tensor:
    """An error [C, F, H, W] cut or tiled along F to `frames` frames (the bank stores whole windows)."""
    reps = -(-frames // error.shape[1])
    return error.repeat(1, reps, 1, 1)[:, :frames]
