"""`contextforcing train STAGE --config FILE [key=value ...]` and `contextforcing export RUN OUT.safetensors`.

`register(subparsers)` plugs both into the main parser. Multi-GPU: `torchrun --nproc_per_node=N -m
contextforcing.cli train ...`; rerunning the same command resumes from the run directory's latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from contextforcing.cli.args import add_threads_arg, examples

_TRAIN_DESCRIPTION = """Train one stage of the Context Forcing recipe: teacher (the long-context teacher), ode (ODE
regression initialisation of the student), dmd (Stage 1: distribution matching on short windows), cdmd (Stage 2:
Contextual DMD on long rollouts with the memory). Each run writes a run directory (trainer.run_dir) with
checkpoints, config.yaml and tensorboard logs; rerunning the same command resumes it. Multi-GPU:
torchrun --nproc_per_node=N -m contextforcing.cli train ... (FSDP2). Needs the [train] extra."""


def _train(args: argparse.Namespace) -> int:
    from contextforcing.runtime.extras import require
    from contextforcing.training import distributed as dist
    from contextforcing.training.run_config import load_train_config
    from contextforcing.training.trainer import run_training

    cfg = load_train_config(args.stage, args.config, args.overrides)
    require("tensorboard", "train", "training logs")  # before the run directory is made: nothing left behind
    try:
        result = run_training(cfg, restart=args.restart)
        main = dist.is_main()
        # Every rank done with its last collective before any tears gloo down: a rank that destroyed its
        # group while another still finished one was seen to abort the other ("terminate called without an
        # active exception") after a run that had completed. Only on success: a rank that failed alone must
        # not wait here for ranks that will never come.
        dist.barrier()
    finally:
        dist.destroy()
    if main:
        done = (
            "already complete" if not result.steps else f"{result.steps} steps, {result.steps_per_second:.3g} steps/s"
        )
        print(
            f"{cfg.name}: step {result.final_step}/{cfg.trainer.max_steps} ({done}); run directory {cfg.run_dir}",
            file=sys.stderr,
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from contextforcing.training.export import export

    path, which = export(args.run, args.out, use_ema=not args.no_ema)
    print(f"wrote {path} ({which})", file=sys.stderr)
    return 0


class _ConfigThenOverrides(argparse.Action):
    """`--config FILE [key=value ...]`: argparse cannot give the trailing `key=value` words of
    `train STAGE --config FILE key=value` to a positional declared before the option, so the option
    takes them and hands them on to `overrides`."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0])
        namespace.overrides = [*(getattr(namespace, "overrides", None) or []), *values[1:]]


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a stage (teacher, ode, dmd, cdmd); rerun to resume",
        description=_TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples(
            "contextforcing train teacher --config configs/toy/teacher.yaml",
            "contextforcing train dmd --config configs/toy/dmd.yaml trainer.max_steps=10 trainer.run_dir=runs/try",
            "torchrun --nproc_per_node=8 -m contextforcing.cli train cdmd --config configs/wan1.3b/cdmd.yaml",
        ),
    )
    train.add_argument("stage", help="stage name")
    train.add_argument(
        "--config",
        nargs="+",
        action=_ConfigThenOverrides,
        metavar="FILE",
        help="YAML with trainer: and stage: sections (default: all defaults)",
    )
    train.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. trainer.max_steps=10 stage.guidance=5.0",
    )
    train.add_argument(
        "--restart",
        action="store_true",
        help="train from step 0 when every checkpoint of the run directory was set aside as broken "
        "(checkpoints/.broken_step_*; refused without it); a checkpoint that loads is still resumed from",
    )
    add_threads_arg(train)
    train.set_defaults(func=_train)

    export = subparsers.add_parser(
        "export",
        help="write a run's EMA generator as one Wan2.1 safetensors file",
        description="Write a training run's generator (its EMA weights unless --no-ema) as one safetensors file "
        "with Wan2.1's parameter names, loadable with generate --checkpoint.",
        epilog=examples(
            "contextforcing export runs/toy/dmd out/dmd.safetensors",
            "contextforcing export runs/toy/dmd out/dmd_raw.safetensors --no-ema",
        ),
    )
    export.add_argument("run", help="run directory of a training stage")
    export.add_argument("out", help="OUT.safetensors")
    export.add_argument("--no-ema", action="store_true", help="the raw generator weights, not the EMA")
    export.set_defaults(func=_export)
