"""What every command's parser shares: argparse with the project's manners, help examples, and the flags that
choose the model, where it runs and how many CPU threads it uses."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contextforcing.parts import ModelSource
    from contextforcing.pipeline import Pipeline


class Parser(argparse.ArgumentParser):
    """argparse with the project's manners: help keeps its examples' line breaks, and a usage error is one
    line naming the problem and where help is (exit code 2), not the whole usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:  # the closest name first: argparse lists the choices but does not guess
            valid = re.findall(r"'([^']*)'", choice.group(2)) or [c.strip() for c in choice.group(2).split(",")]
            close = difflib.get_close_matches(choice.group(1), valid, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def examples(*commands: str) -> str:
    """A help epilog of example commands (tests/cli/test_help.py parses every one of them)."""
    return "examples:\n" + "\n".join(f"  {c}" for c in commands)


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: 1 on a machine with <= 2 cores, else the cores not already busy; "
        "OMP_NUM_THREADS, when set, is kept); see docs/performance.md",
    )


def add_weight_args(p: argparse.ArgumentParser) -> None:
    """The flags that choose the model and where it runs (generate, bench, serve)."""
    p.add_argument(
        "--preset",
        default=None,
        help="model size preset (tiny, wan2.1-t2v-1.3b, wan2.1-t2v-14b) or a YAML/JSON file with model: and "
        "video: sections; default wan2.1-t2v-1.3b with --wan-dir, tiny with --random-init",
    )
    p.add_argument("--random-init", action="store_true", help="random weights (no checkpoint needed)")
    p.add_argument("--wan-dir", help="local Wan2.1 directory: UMT5 text encoder, VAE, and the base DiT")
    p.add_argument(
        "--checkpoint", help="DiT weights (Wan, diffusers or training .pt); default: the base DiT in --wan-dir"
    )
    p.add_argument("--checkpoint-format", help="override format detection of --checkpoint")
    add_weight_choice_args(p)
    p.add_argument(
        "--lora",
        help="LoRA merged into the DiT at load time: peft file or directory, LongLive lora.pt "
        "or checkpoint_model_* directory",
    )
    add_lora_alpha_arg(p)
    p.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="attention heads of the --checkpoint/--wan-dir DiT (default: the preset's)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, fp32 on CPU)")
    add_threads_arg(p)


def add_weight_choice_args(parser: argparse.ArgumentParser) -> None:
    """--ema / --no-ema: which generator of a training .pt; neither means EMA, unless the LoRA was trained on
    the raw generator (LongLive), and either one always wins."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--ema",
        dest="use_ema",
        action="store_const",
        const=True,
        default=None,
        help="training checkpoints: `generator_ema` (the default unless a LongLive LoRA asks for `generator`)",
    )
    group.add_argument(
        "--no-ema",
        dest="use_ema",
        action="store_const",
        const=False,
        help="training checkpoints: the raw `generator`, not `generator_ema`",
    )


def add_lora_alpha_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lora-alpha",
        type=float,
        default=None,
        help="LoRA alpha, scale = alpha / rank (default: stored in the adapter, else alpha = rank; "
        "LongLive's lora.pt stores none)",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    add_weight_args(p)
    p.add_argument("--seconds", type=float, required=True, help="video length; Wan counts 4 latent frames per second")
    p.add_argument("--memory", default="slow_fast", help="full, rolling, sink, relative, ema_sink or slow_fast")
    p.add_argument("--memory-opt", action="append", metavar="KEY=VALUE", help="memory policy option, repeatable")
    p.add_argument("--seed", type=int, default=0)


def model_source(args: argparse.Namespace, check: bool = True) -> ModelSource:
    """The model `add_weight_args`' flags name, checked (one source, no flag that would be ignored) before any
    weight is read unless `check` is False (a command that builds no model); random weights are drawn from --seed."""
    from contextforcing.parts import ModelSource

    source = ModelSource(
        preset=args.preset,
        source=args.wan_dir,
        checkpoint=args.checkpoint,
        random_init=args.random_init,
        seed=getattr(args, "seed", 0),
        checkpoint_format=args.checkpoint_format,
        use_ema=args.use_ema,
        lora=args.lora,
        lora_alpha=args.lora_alpha,
        num_heads=args.num_heads,
    )
    return source.check() if check else source


def load_pipeline(source: ModelSource, device: str | None, dtype: str | None, threads: int | None) -> Pipeline:
    """`Pipeline.from_pretrained` of `source` (the one door, for the CLI's commands too)."""
    from contextforcing.pipeline import Pipeline

    return Pipeline.from_pretrained(**dataclasses.asdict(source), device=device, dtype=dtype, threads=threads)
