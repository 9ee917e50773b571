"""A tiny `debug` stage for the trainer's own tests: regress a tiny CausalWanModel onto fixed targets.

Global sample i of the fixed data set goes to rank i % world_size, so one process with accumulation
A * W sees exactly the global batch of W processes with accumulation A (the FSDP equivalence test).
An optional "critic" group (a small MLP) makes steps with two updates, like DMD's generator + critic.
Failure injection (crash, NaN loss, NaN gradient at a step) exercises resume and the NaN guard.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
import torch.nn as nn

from contextforcing.config import ModelConfig
from contextforcing.model.wan import CausalWanModel
from contextforcing.training.registry import BuildContext, register_stage
from contextforcing.training.stage import StepContext, Update

TINY = ModelConfig(dim=48, ffn_dim=96, num_layers=2, num_heads=2, text_dim=20, text_len=7, freq_dim=32)


@dataclass
class DebugOptions:
    lr: float = 1e-4
    samples: int = 64  # size of the fixed data set
    frames: int = 2  # latent frames per sample
    critic: bool = True  # add a second module group updated every step after the generator
    noise: float = 0.0  # per-rank noise added to the input (exercises ctx.generator)
    record_draws: bool = (
        False  # draw shared values and one of the rank's own each micro-batch, to RUN/draws_rank{r}.json
    )
    crash_at_step: int = -1  # raise RuntimeError at this step (simulates a killed job)
    nan_loss_at_step: int = -1
    nan_grad_at_step: int = -1
    interrupt_at_step: int = -1  # send a signal at this step: to this process, or with torchrun to torchrun itself
    interrupt_rank: int = 0  # the rank that sends it
    interrupt_signal: str = "SIGINT"  # which: SIGINT (Ctrl-C), SIGTERM (a job scheduler), SIGHUP (a closed terminal)
    dim: int = 48  # the generator's width (another size: a checkpoint of another model)

    # Failure injection is not part of what a run trains, so a resumed run may drop or change it.
    resume_changeable: ClassVar[tuple[str, ...]] = (
        "crash_at_step",
        "nan_loss_at_step",
        "nan_grad_at_step",
        "interrupt_at_step",
        "interrupt_rank",
        "interrupt_signal",
    )


class Critic(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(dim=(2, 3, 4)))


class DebugStage:
    name = "debug"

    def __init__(self, options: DebugOptions, build: BuildContext):
        self.options, self.build = options, build
        self.generator = CausalWanModel(dataclasses.replace(TINY, dim=options.dim, ffn_dim=2 * options.dim))
        self.critic = Critic() if options.critic else None
        self.draws: list[list[Any]] = []
        data = torch.Generator().manual_seed(1234)
        n, f = options.samples, options.frames
        self.x = torch.randn(n, 16, f, 4, 4, generator=data)
        self.text = torch.randn(n, TINY.text_len, TINY.text_dim, generator=data)
        self.t = torch.rand(n, generator=data) * 1000
        self.y = torch.randn(n, 16, f, 4, 4, generator=data)

    def trainable(self) -> dict[str, nn.Module]:
        groups: dict[str, nn.Module] = {"generator": self.generator}
        if self.critic is not None:
            groups["critic"] = self.critic
        return groups

    def frozen(self) -> dict[str, nn.Module]:
        return {}

    def optimizer_settings(self, group: str) -> dict:
        return {"lr": self.options.lr, "betas": (0.9, 0.999), "weight_decay": 0.01}

    def updates(self, step: int) -> list[Update]:
        if step == self.options.crash_at_step:
            raise RuntimeError(f"simulated crash at step {step}")
        if step == self.options.interrupt_at_step and self.build.rank == self.options.interrupt_rank:
            # A terminal's Ctrl-C or a scheduler's SIGTERM reaches torchrun, which forwards it to every worker.
            os.kill(
                os.getppid() if self.build.world_size > 1 else os.getpid(),
                signal.Signals[self.options.interrupt_signal],
            )
        ups = [Update("generator", self.generator_loss)]
        return ups + ([Update("critic", self.critic_loss)] if self.critic is not None else [])

    def batches(self, rank: int, world_size: int, start: int) -> Iterator[Any]:
        i = start
        while True:
            j = (i * world_size + rank) % self.options.samples
            yield self.x[j : j + 1], self.text[j : j + 1], self.t[j : j + 1], self.y[j : j + 1]
            i += 1

    def _inputs(self, batch, ctx: StepContext):
        x, text, t, y = (v.to(ctx.device) for v in batch)
        if self.options.noise:
            x = x + self.options.noise * torch.randn(x.shape, generator=ctx.generator, device=ctx.device)
        if self.options.record_draws:
            own = float(torch.rand((), generator=ctx.generator))  # this rank's own stream
            self.draws.append([ctx.step, ctx.micro, ctx.shared_randint(0, 1000), ctx.shared_uniform(), own])
            self.dump_draws()
        return x, text, t, y

    def generator_loss(self, batch, ctx: StepContext):
        x, text, t, y = self._inputs(batch, ctx)
        loss = ((self.generator(x, t, text) - y) ** 2).mean()
        if ctx.step == self.options.nan_loss_at_step:
            loss = loss * float("nan")
        if ctx.step == self.options.nan_grad_at_step:  # finite loss (sqrt(0) = 0), NaN gradient (0 * inf)
            loss = loss + torch.sqrt(0.0 * next(self.generator.parameters()).sum())
        return loss, {"mse": float(loss.detach())}

    def critic_loss(self, batch, ctx: StepContext):
        x, _, _, y = self._inputs(batch, ctx)
        target = y.mean(dim=(1, 2, 3, 4))[:, None]
        loss = ((self.critic(x) - target) ** 2).mean()
        return loss, {}

    def sample(self, step: int, out_dir: Path) -> None:
        if self.build.rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"step_{step:06d}.txt").write_text("sample\n")

    def state_dict(self) -> dict:
        return {"draws": len(self.draws)}

    def load_state_dict(self, state: dict) -> None:
        self.resumed_with = state

    def dump_draws(self) -> None:
        path = Path(self.build.run_dir) / f"draws_rank{self.build.rank}.json"
        path.write_text(json.dumps(self.draws))


def build_debug(options: DebugOptions, build: BuildContext) -> DebugStage:
    return DebugStage(options, build)


register_stage("debug", DebugOptions, build_debug)
