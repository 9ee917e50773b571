"""How much each training switch of docs/training.md changes one generator step of the toy recipe, against our
default, with the same seeds: `python scripts/training_departures.py` (CPU, about a minute).

For each switch: the generator loss, the relative L2 change of the whole generator gradient, and the median
over parameter tensors of |grad with the switch| / |grad without|. Random weights (the world preset's
shapes), the panorama world's prompts and codec; DMD: 12-frame rollouts scored on their last 6 frames;
Contextual DMD: 15-frame rollouts, a 6-frame context window, the last 6 scored. `reencode_noise` and
`exit_step` also change which noise and exits are drawn, so their rollouts differ from the first commit
(or the first exit) on; the other switches keep the forward identical and change only what they name.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from contextforcing.training.registry import BuildContext, get_stage
from contextforcing.training.run_config import load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "toy"
DMD = ("stage.num_frames=12", "stage.target_frames=6", "stage.score_window=target")
CDMD = ("stage.min_frames=15", "stage.max_frames=15", "stage.target_frames=6", "stage.score_window=target")
CASES = [
    ("dmd", "exit_step=shared", DMD, ("stage.exit_step=shared",)),
    ("dmd", "reencode_noise=true", DMD, ("stage.reencode_noise=true",)),
    ("dmd", "cross_chunk_grad=true", DMD, ("stage.cross_chunk_grad=true",)),
    ("dmd", "score_shift=8", DMD, ("stage.score_shift=8.0",)),
    ("cdmd", "teacher_context=contiguous", CDMD, ("stage.teacher_context=contiguous", "stage.context_window=6")),
    ("cdmd", "teacher_context=released", CDMD, ("stage.teacher_context=released", "stage.context_window=6")),
]


class Ctx:
    """One process: shared draws and noise from seeded generators."""

    def __init__(self, seed: int):
        self.step, self.micro, self.device = 0, 0, torch.device("cpu")
        self.generator = torch.Generator().manual_seed(seed)
        self._shared = torch.Generator().manual_seed(seed + 7)

    def shared_randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=self._shared))

    def shared_uniform(self) -> float:
        return float(torch.rand((), generator=self._shared))


def stage_of(name: str, run: Path, overrides: tuple[str, ...]):
    cfg = load_train_config(name, CONFIGS / f"{name}.yaml", [f"trainer.run_dir={run}", *overrides])
    return get_stage(name).build(cfg.stage, BuildContext(torch.device("cpu"), 0, 1, cfg.trainer.seed, run))


def generator_step(stage, seed: int) -> tuple[float, list[torch.Tensor]]:
    loss, _ = stage.generator_loss(next(stage.batches(0, 1, 0)), Ctx(seed))
    params = [p for p in stage.generator.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(loss.detach()), [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]


def compare(name: str, base: tuple[str, ...], switch: tuple[str, ...], run: Path, seed: int) -> tuple[float, ...]:
    loss0, g0 = generator_step(stage_of(name, run, base), seed)
    loss1, g1 = generator_step(stage_of(name, run, (*base, *switch)), seed)
    flat0, flat1 = torch.cat([g.flatten() for g in g0]), torch.cat([g.flatten() for g in g1])
    change = float((flat1 - flat0).norm() / flat0.norm())
    ratios = torch.tensor([float(b.norm() / a.norm()) for a, b in zip(g0, g1) if a.norm() > 0])
    return loss0, loss1, change, float(ratios.median())


def main() -> None:
    torch.set_num_threads(1)
    print("| stage | switch | seed | loss (ours) | loss (switch) | gradient change, rel. L2 | median grad-norm ratio |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, label, base, switch in CASES:
            for seed in (0, 1):
                loss0, loss1, change, ratio = compare(name, base, switch, Path(tmp) / "run", seed)
                print(f"| {name} | {label} | {seed} | {loss0:.4g} | {loss1:.4g} | {change:.3g} | {ratio:.3g} |")


if __name__ == "__main__":
    main()
