"""The one training loop of every stage (see `stage.py` for the contract).

Per step: for each `Update` of `stage.updates(step)`: zero that group's gradients; for each of the
`accumulation` micro-batches, `(loss / accumulation).backward()`; check the loss is finite on every rank;
clip the global gradient norm (and check it); optimizer step; EMA after generator updates.

Randomness: before each micro-batch the global RNGs are reseeded from (seed, step, update, micro, rank),
and the `StepContext` gives a per-rank generator from the same tuple plus shared draws made on rank 0 from
(seed, step, update, micro) and broadcast. So a resumed run replays exactly what an uninterrupted run does,
and control flow never diverges between ranks (edm2-style seeding; Self-Forcing's broadcast rule).

Optional stage hooks (duck-typed, so the `Stage` protocol stays minimal):
  `state_dict()` / `load_state_dict(state)`  the stage's own per-rank state (e.g. an error buffer), saved in
                                             every checkpoint; ignored for stages that are nn.Modules.
  `sample(step, out_dir)`                     called on every rank each `sample_every` steps (write on rank 0).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from contextforcing.errors import Interrupted, UserError, note
from contextforcing.io.outputs import InterruptGuard
from contextforcing.training import distributed as dist
from contextforcing.training.checkpoint import (
    CheckpointManager,
    ModelOptimizer,
    TrainState,
    list_checkpoints,
    rng_state,
    set_rng_state,
)
from contextforcing.training.ema import EMA
from contextforcing.training.run_config import TrainConfig, TrainerConfig, check_resume_config, save_resolved
from contextforcing.training.stage import Stage, Update

GENERATOR = "generator"  # the group that is EMA-tracked and exported
_STOP_NOTICE = (
    "interrupted: saving a checkpoint after the current step (further Ctrl-C are ignored until it is "
    "saved; Ctrl-\\ quits without saving)"
)


class NonFiniteError(UserError):
    """A NaN/Inf loss or gradient norm. A UserError so the CLI prints one line: it almost always means a
    learning rate, guidance or data problem, and the run directory keeps its last good checkpoint."""


def seed_for(*parts: Any) -> int:
    """A 63-bit seed from a tuple (stable across processes and Python versions, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class TrainContext:
    """`StepContext` of one micro-batch of one update."""

    def __init__(self, *, seed: int, step: int, update: int, micro: int, device: torch.device, rank: int):
        self.step, self.update, self.micro, self.device = step, update, micro, device
        self.generator = torch.Generator(device).manual_seed(seed_for(seed, step, update, micro, rank))
        # Only rank 0's shared generator is ever used; the others receive its draws by broadcast.
        self._shared = torch.Generator("cpu").manual_seed(seed_for(seed, step, update, micro, "shared"))

    def shared_randint(self, low: int, high: int) -> int:
        value = int(torch.randint(low, high, (1,), generator=self._shared)) if dist.is_main() else None
        return dist.broadcast_object(value)

    def shared_uniform(self) -> float:
        value = float(torch.rand((), generator=self._shared, dtype=torch.float64)) if dist.is_main() else None
        return dist.broadcast_object(value)


def _reseed_globals(seed: int) -> None:
    """Stray draws from the global RNGs (a stage that forgets `ctx.generator`) stay reproducible on resume."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@dataclass
class TrainResult:
    steps: int  # steps run by this call (0 when the run was already complete)
    final_step: int  # global step count at the end
    losses: list[dict[str, float]] = field(default_factory=list)  # per step run: {group: mean loss over ranks}
    lrs: list[dict[str, float]] = field(default_factory=list)  # per step run: {group: learning rate used}
    steps_per_second: float = 0.0


class RunLogger:
    """Rank 0 only: tensorboard scalars (RUN/tb), wandb offline when asked, and a tqdm bar with steps/s."""

    def __init__(self, run_dir: Path, cfg: TrainerConfig, start: int, stage: str):
        self.cfg, self.active = cfg, dist.is_main()
        self.writer = self.wandb = self.bar = None
        self._last_time, self._last_step = time.perf_counter(), start
        if not self.active:
            return
        from tqdm import tqdm

        from contextforcing.runtime.extras import require

        require("tensorboard", "train", "training logs")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))
        if cfg.wandb:
            self.wandb = _wandb_run(run_dir, stage)
        self.bar = tqdm(total=cfg.max_steps, initial=start, desc=stage, unit="step", dynamic_ncols=True)

    def step(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        losses = {k[: -len("/loss")]: f"{v:.4g}" for k, v in scalars.items() if k.endswith("/loss")}
        self.bar.set_postfix({**losses, "steps/s": f"{rate:.3g}"}, refresh=False)
        self.bar.update(1)
        if step % self.cfg.log_every == 0:
            values = {**scalars, "train/steps_per_second": rate}
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
            if self.wandb is not None:
                self.wandb.log(values, step=step)

    def close(self) -> None:
        if not self.active:
            return
        self.bar.close()
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_module():
    """wandb is optional (not a dependency); asked for and missing is a one-line error at startup."""
    try:
        import wandb
    except ImportError:
        raise UserError(
            "trainer.wandb=true but wandb is not installed (pip install wandb, or set trainer.wandb=false)"
        ) from None
    return wandb


def _wandb_run(run_dir: Path, stage: str):
    """Only ever offline here (no network, no login); sync later with `wandb sync RUN/wandb/...`."""
    return _wandb_module().init(
        mode="offline", dir=str(run_dir), project="contextforcing", name=f"{stage}-{run_dir.name}"
    )


class Trainer:
    """Owns the generic parts of a run for one `Stage`; `run()` trains up to `cfg.max_steps` and returns."""

    def __init__(
        self,
        stage: Stage,
        cfg: TrainerConfig,
        run_dir: Path,
        device: torch.device,
        *,
        run_config: TrainConfig | None = None,
        restart: bool = False,
    ):
        """`run_config`: the whole resolved config, recorded in each checkpoint and written to RUN/config.yaml
        once the resume has loaded; `restart`: start from step 0 when every checkpoint was set aside as broken."""
        self.stage, self.cfg, self.run_dir, self.device = stage, cfg, Path(run_dir), device
        self.run_config, self.restart = run_config, restart
        if cfg.wandb:
            _wandb_module()  # on every rank, before any collective, so a missing wandb cannot hang a rank
        self.checkpoints = CheckpointManager(self.run_dir, stage.name, cfg.keep_last, run_config)
        self.checkpoints.claim()
        self.mesh = dist.device_mesh(device) if dist.initialized() else None
        self.trainable = dict(stage.trainable())
        self._prepare_modules()
        self.optimizers = {g: self._optimizer(g, m) for g, m in self.trainable.items()}
        tracked = cfg.ema and GENERATOR in self.trainable
        self.ema = EMA(self.trainable[GENERATOR], cfg.ema_decay, cfg.ema_start) if tracked else None
        self.state = TrainState(stage.name)
        self._saved_step = -1

    # -- setup ------------------------------------------------------------------------------------------------
    def _prepare_modules(self) -> None:
        frozen = dict(self.stage.frozen())
        for module in frozen.values():
            module.requires_grad_(False).eval()
        for module in self.trainable.values():
            module.train()
        seen: set[int] = set()
        for module in [*self.trainable.values(), *frozen.values()]:
            if id(module) in seen:  # a module shared by two groups is sharded once
                continue
            seen.add(id(module))
            module.to(self.device)
            dist.parallelize(
                module,
                mesh=self.mesh,
                mixed_precision=self.cfg.mixed_precision,
                activation_checkpointing=self.cfg.activation_checkpointing,
            )

    def _optimizer(self, group: str, module: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise UserError(f"stage {self.stage.name!r}: group {group!r} has no trainable parameters")
        try:
            return torch.optim.AdamW(params, **self.stage.optimizer_settings(group))
        except ValueError as err:  # torch checks lr, betas, eps, weight_decay: "Invalid learning rate: -1"
            raise UserError(f"stage {self.stage.name!r}: optimizer of group {group!r}: {err}") from None

    def _parts(self) -> dict[str, Any]:
        parts: dict[str, Any] = {g: ModelOptimizer(m, self.optimizers[g]) for g, m in self.trainable.items()}
        parts["train"] = self.state
        if self.ema is not None:
            parts["ema"] = self.ema
        return parts

    def _has_stage_state(self) -> bool:
        return not isinstance(self.stage, nn.Module) and callable(getattr(self.stage, "state_dict", None))

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Load the newest whole checkpoint of this run directory, if any (resume = rerun the same command)."""
        per_rank = self.checkpoints.load_latest(self._parts(), self.restart)
        if self.run_config is not None:  # only now: a refused resume must leave the run's config.yaml as it was
            dist.main_decides(lambda: save_resolved(self.run_config))
        if per_rank is None:
            return False
        set_rng_state(per_rank["rng"])
        if self._has_stage_state() and per_rank.get("stage") is not None:
            self.stage.load_state_dict(per_rank["stage"])
        self._saved_step = self.state.step
        return True

    def save(self) -> None:
        if self._saved_step == self.state.step:
            return
        per_rank = {"rng": rng_state(), "stage": self.stage.state_dict() if self._has_stage_state() else None}
        meta = {
            "groups": sorted(self.trainable),
            "ema_initialized": bool(self.ema and self.ema.initialized),
            "data_position": self.state.data_position,
        }
        self.checkpoints.save(self.state.step, self._parts(), per_rank, meta)
        self._saved_step = self.state.step

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Resume, then train to `max_steps`. Ctrl-C, SIGTERM or SIGHUP (which torchrun forwards to every rank)
        stops every rank after the step in progress and saves a checkpoint there, whatever more signals come
        meanwhile (torchrun kills its workers 30 s after forwarding one: a step and a save must fit in that)."""
        with InterruptGuard(_STOP_NOTICE if dist.is_main() else None) as guard:
            return self._run(guard)

    def _run(self, guard: InterruptGuard) -> TrainResult:
        with guard.interruptible():  # loading writes nothing: a Ctrl-C here stops at once
            self.resume()
        start = self.state.step
        result = TrainResult(steps=0, final_step=start)
        if start >= self.cfg.max_steps:
            return result
        batches = self.stage.batches(dist.rank(), dist.world_size(), self.state.data_position)
        logger = RunLogger(self.run_dir, self.cfg, start, self.stage.name)
        began = time.perf_counter()
        try:
            for step in range(start, self.cfg.max_steps):
                scalars = self.train_step(step, batches)
                self.state.step = step + 1
                result.losses.append({k[: -len("/loss")]: v for k, v in scalars.items() if k.endswith("/loss")})
                result.lrs.append({k[: -len("/lr")]: v for k, v in scalars.items() if k.endswith("/lr")})
                logger.step(step + 1, scalars)
                self._after_step(step + 1)
                if dist.any_rank(guard.interrupted, self.device):
                    self._stop(guard)
            self.save()
            if dist.any_rank(guard.interrupted, self.device):  # a signal during the last step's save
                self._stop(guard)
        finally:
            logger.close()
        result.steps = self.state.step - start
        result.final_step = self.state.step
        result.steps_per_second = result.steps / max(time.perf_counter() - began, 1e-9)
        return result

    def _stop(self, guard: InterruptGuard) -> None:
        self.save()
        raise Interrupted(
            f"saved checkpoint step {self.state.step} in {self.checkpoints.root}; rerun the same command to resume",
            guard.signum,
        )

    def _after_step(self, done: int) -> None:
        every = self.cfg.checkpoint_every
        if every and done % every == 0:
            self.save()
        sample = getattr(self.stage, "sample", None)
        if self.cfg.sample_every and done % self.cfg.sample_every == 0 and callable(sample):
            sample(done, self.run_dir / "samples")

    def train_step(self, step: int, batches: Iterator[Any]) -> dict[str, float]:
        """Run every update of `step`; returns scalars for logging ({group}/loss, {group}/grad_norm, ...)."""
        scalars: dict[str, float] = {}
        for index, update in enumerate(self.stage.updates(step)):
            scalars.update(self._update(step, index, update, batches))
        return scalars

    def _update(self, step: int, index: int, update: Update, batches: Iterator[Any]) -> dict[str, float]:
        group = update.group
        if group not in self.optimizers:
            raise KeyError(f"stage {self.stage.name!r} returned an update for unknown group {group!r}")
        optimizer, acc = self.optimizers[group], self.cfg.accumulation
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sums: dict[str, float] = {}
        for micro in range(acc):
            batch = next(batches)
            self.state.data_position += 1
            loss, metrics = self._micro(step, index, micro, update, batch)
            loss_sum += loss.detach().double()
            for name, value in metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + float(value)
        mean_loss = self._check_loss(group, step, loss_sum)
        params = [p for p in self.trainable[group].parameters() if p.requires_grad]
        norm = dist.clip_grad_norm(params, self.cfg.grad_clip)
        if not math.isfinite(norm):
            raise NonFiniteError(f"non-finite {group} gradient norm at step {step}")
        lr = self._set_lr(group, step)
        optimizer.step()
        if group == GENERATOR and self.ema is not None:
            self.ema.update(step)
        scalars = {f"{group}/{k}": v / acc for k, v in metric_sums.items()}
        return {**scalars, f"{group}/loss": mean_loss, f"{group}/grad_norm": norm, f"{group}/lr": lr}

    def _set_lr(self, group: str, step: int) -> float:
        """The group's lr at `step` (the schedule times its configured lr), set on the optimizer; returns it."""
        lr = self.stage.optimizer_settings(group)["lr"] * self.cfg.lr_factor(step)
        for param_group in self.optimizers[group].param_groups:
            param_group["lr"] = lr
        return lr

    def _micro(self, step: int, index: int, micro: int, update: Update, batch: Any):
        seed = self.cfg.seed
        _reseed_globals(seed_for(seed, step, index, micro, dist.rank(), "global"))
        ctx = TrainContext(seed=seed, step=step, update=index, micro=micro, device=self.device, rank=dist.rank())
        # Without FSDP (one process) mixed precision is autocast; with FSDP it is the sharding policy.
        autocast = self.cfg.mixed_precision and self.mesh is None
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if autocast else nullcontext():
            loss, metrics = update.loss(batch, ctx)
        (loss / self.cfg.accumulation).backward()
        return loss, metrics

    def _check_loss(self, group: str, step: int, loss_sum: torch.Tensor) -> float:
        """Mean loss over micro-batches and ranks; every rank stops together if any rank saw a NaN/Inf."""
        flags = torch.stack([loss_sum, (~torch.isfinite(loss_sum)).double()])
        dist.all_reduce_sum(flags)
        if flags[1].item() > 0:
            raise NonFiniteError(f"non-finite {group} loss at step {step}")
        return flags[0].item() / (self.cfg.accumulation * dist.world_size())


def run_training(cfg: TrainConfig, restart: bool = False) -> TrainResult:
    """Build the configured stage and train it (resuming from its run directory when it has checkpoints).
    `restart`: train from step 0 a run directory whose checkpoints were all set aside as broken (refused
    otherwise); a run with a checkpoint that loads resumes from it either way."""
    from contextforcing.training.registry import BuildContext, get_stage

    device = dist.init(cfg.trainer.device)  # a device that is not there stops here, before RUN is made
    spec = get_stage(cfg.name)
    checkpoints = CheckpointManager(cfg.run_dir, cfg.name)
    lock = checkpoints.lock()  # one job per run directory
    try:
        checkpoints.claim()  # refuse a foreign run dir before writing anything there
        if not restart:  # a run whose checkpoints were all set aside: refused before anything is written
            dist.main_decides(lambda: checkpoints.check_restart(False))
        _check_config(cfg, has_checkpoints=bool(list_checkpoints(cfg.run_dir)))
        torch.manual_seed(cfg.trainer.seed)  # identical initial weights on every rank
        build = BuildContext(device, dist.rank(), dist.world_size(), cfg.trainer.seed, cfg.run_dir)
        stage = spec.build(cfg.stage, build)
        return Trainer(stage, cfg.trainer, cfg.run_dir, device, run_config=cfg, restart=restart).run()
    finally:
        if lock is not None:
            lock.release()


def _check_config(cfg: TrainConfig, has_checkpoints: bool) -> None:
    """A resumed run keeps its config but for `RESUME_CHANGEABLE` keys (one line listing any other change, on
    every rank); what changed is logged. RUN/config.yaml records this start once its checkpoint has loaded
    (`Trainer.resume`)."""

    def check() -> None:
        changes = check_resume_config(cfg) if has_checkpoints else []
        if changes:
            note(f"resuming {cfg.run_dir} with {', '.join(changes)}")

    dist.main_decides(check)
