"""Command line: `contextforcing generate | bench | ...`. Bad input exits with code 2 and one line."""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import json
import os
import re
import signal
import sys
from typing import Callable

from contextforcing import __version__
from contextforcing.errors import Interrupted, UserError, command_line, say
from contextforcing.outputs import InterruptGuard

# Subcommands that live beside the code they drive; each module exposes register(subparsers).
_PLUGGED_COMMANDS = (
    "contextforcing.model.checkpoints_cli",
    "contextforcing.data.world.cli",
    "contextforcing.eval.cli",
    "contextforcing.training.cli",
    "contextforcing.serve.cli",
    "contextforcing.plot",
)


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
    from contextforcing.model.checkpoints_cli import add_lora_alpha_arg, add_weight_choice_args

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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    add_weight_args(p)
    p.add_argument("--seconds", type=float, required=True, help="video length; Wan counts 4 latent frames per second")
    p.add_argument("--memory", default="slow_fast", help="full, rolling, sink, relative, ema_sink or slow_fast")
    p.add_argument("--memory-opt", action="append", metavar="KEY=VALUE", help="memory policy option, repeatable")
    p.add_argument("--seed", type=int, default=0)


def _generate(args) -> int:
    from contextforcing.generation import request_from_args, run_generation

    sidecar = run_generation(request_from_args(args), progress=not args.quiet)
    print(f"wrote {args.out} ({sidecar['pixel_frames']} frames, {sidecar['latent_frames']} latent) and its sidecar")
    return 0


def _bench(args) -> int:
    from contextforcing.bench import format_table, run_bench
    from contextforcing.config import parse_overrides
    from contextforcing.loading import check_weight_flags, default_preset

    weights = dict(
        random_init=args.random_init,
        wan_dir=args.wan_dir,
        checkpoint=args.checkpoint,
        checkpoint_format=args.checkpoint_format,
        use_ema=args.use_ema,
        lora=args.lora,
        lora_alpha=args.lora_alpha,
        num_heads=args.num_heads,
    )
    check_weight_flags(
        bool(args.wan_dir or args.checkpoint), lora=args.lora, lora_alpha=args.lora_alpha, num_heads=args.num_heads
    )
    preset = default_preset(args.preset, args.wan_dir, args.checkpoint, random_init=args.random_init)
    options = parse_overrides(args.memory_opt or [])
    if args.floor_only:
        return _floor_only(args, preset, options)
    common = dict(
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        windows=args.windows,
        decode=args.decode,
        weights=weights,
        peak_tflops=args.peak_tflops,
        progress=not args.quiet,
    )
    if args.all_policies:
        from contextforcing.bench import format_policy_table, run_all_policies

        if options:
            raise UserError(
                "--memory-opt sets one policy's options; --all-policies runs every policy with its defaults"
            )
        results = run_all_policies(preset, args.seconds, **common)
        print(json.dumps(results, indent=1) if args.json else format_policy_table(results))
        return 0
    result = run_bench(preset, args.seconds, args.memory, options, **common)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


def _floor_only(args, preset: str, options: dict) -> int:
    """The analytic floor of a preset and policy, without building a model (any size, on any machine).
    KV bytes use --dtype (default bfloat16, the GPU dtype); --peak-tflops adds the floor time."""
    from contextforcing import perf
    from contextforcing.config import get_preset
    from contextforcing.loading import resolve_device
    from contextforcing.memory.policies import make_spec

    cfg = get_preset(preset)
    _, dtype = resolve_device("cpu", args.dtype or "bfloat16")  # only the dtype matters here (KV bytes)
    names = perf.POLICIES if args.all_policies else (args.memory,)
    chunks = cfg.video.latent_frames_for(args.seconds) // cfg.video.chunk_frames
    texts = []
    for name in names:
        spec = make_spec(name, {} if args.all_policies else options, cfg.video.chunk_frames)
        texts.append(perf.report(cfg, spec, peak_tflops=args.peak_tflops, dtype=dtype, chunk_index=chunks - 1))
    print(f"analytic floor: preset {preset}, last chunk of {args.seconds:g} s ({chunks} chunks)")
    print("\n\n".join(texts))
    return 0


_EXAMPLE_PROMPT = "warm room, hold, lights on, black ball"  # the embedded model reads the panorama grammar

_GENERATE_DESCRIPTION = """Generate a video chunk by chunk and write it to an mp4 as the chunks finish, with a JSON
sidecar beside it (config, seed, timings, the memory's trace, version and command line). With no weight flags:
the embedded world model and the memory it was trained with. Prompt switches (--switch, --prompts) are given in
seconds of video and land on the nearest chunk boundary."""

_BENCH_DESCRIPTION = """Stream a video without writing it and report each chunk's latency, frames per second, peak
memory and the share of the FLOP floor reached. With no weight flags: the embedded world model."""


def _add_generate(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="generate a video, streaming it to an mp4 as chunks finish",
        description=_GENERATE_DESCRIPTION,
        epilog=examples(
            f'contextforcing generate --prompt "{_EXAMPLE_PROMPT}" --seconds 20 --out video.mp4',
            f'contextforcing generate --prompt "{_EXAMPLE_PROMPT}" --seconds 20 '
            f'--switch "10:{_EXAMPLE_PROMPT.replace("hold", "pan left")}" --out switched.mp4',
            "contextforcing generate --prompts tour.jsonl --seconds 120 --memory rolling --memory-opt window=12 "
            "--out rolling.mp4",
            "contextforcing generate --preset tiny --random-init --prompt 'a red ball' --seconds 20 --out random.mp4",
            'contextforcing generate --wan-dir Wan2.1-T2V-1.3B --checkpoint model.pt --prompt "a fox in the snow" '
            "--seconds 60 --out fox.mp4",
        ),
    )
    _add_model_args(gen)
    gen.add_argument("--prompt", help="starting prompt (optional when --prompts starts at 0 s)")
    gen.add_argument(
        "--prompts",
        metavar="SCRIPT.jsonl",
        help='prompt script, one {"at": SECONDS, "prompt": TEXT} per line; switches land on chunk boundaries',
    )
    gen.add_argument("--init-video", help="continue this video: its last frames are encoded and prefilled into memory")
    gen.add_argument("--init-image", help="start from this image: encoded and prefilled into memory")
    gen.add_argument("--out", required=True, help="output .mp4; a .json sidecar is written beside it")
    gen.add_argument(
        "--switch",
        action="append",
        metavar="SECONDS:PROMPT",
        help="switch to PROMPT at SECONDS of video (the nearest chunk boundary, as --prompts places them); repeatable",
    )
    gen.add_argument(
        "--flush-on-switch",
        action="store_true",
        help="drop sink and slow memory at a switch (with --recache longlive: LongLive's global_sink false)",
    )
    gen.add_argument(
        "--recache",
        choices=("window", "longlive"),
        default="window",
        help="what a switch re-encodes: the recent frames the next chunk attends (window), or exactly "
        "what LongLive 1.0 re-encodes (longlive; --memory sink)",
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)


def _add_bench(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="time a stream without writing video",
        description=_BENCH_DESCRIPTION,
        epilog=examples(
            "contextforcing bench --seconds 60",
            "contextforcing bench --preset tiny --random-init --seconds 320 --memory slow_fast --windows 20:40,400:420",
            "contextforcing bench --seconds 60 --all-policies --threads 1",
            "contextforcing bench --preset wan2.1-t2v-1.3b --memory slow_fast --seconds 60 --floor-only",
        ),
    )
    _add_model_args(bench)
    bench.add_argument("--windows", default="", help="chunk ranges to report median latency for, e.g. 20:40,400:420")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument(
        "--decode",
        action="store_true",
        help="include the streaming VAE decode (preview decoder with --random-init) in each chunk's time",
    )
    bench.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak rate for the floor and %% of floor, e.g. 790 for an H100's measured bf16 matmul rate; "
        "default: measure a square matmul on the device at startup (stated in the output)",
    )
    bench.add_argument(
        "--all-policies",
        action="store_true",
        help="run the bench once per memory policy (default options) and print one row per policy",
    )
    bench.add_argument(
        "--floor-only",
        action="store_true",
        help="print the analytic FLOP floor of --preset/--memory (at the last chunk of --seconds) "
        "without running a model",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(func=_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="contextforcing",
        description="Streaming, minute-long video generation with a three-tier context memory (Context Forcing). "
        "Each command's --help has examples.",
        epilog=examples(
            f'contextforcing generate --prompt "{_EXAMPLE_PROMPT}" --seconds 20 --out video.mp4',
            "contextforcing plot video.json",
            "contextforcing serve",
        ),
    )
    parser.add_argument("--version", action="version", version=f"contextforcing {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    _add_bench(sub)
    for name in _PLUGGED_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # an optional component that is not part of this build
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from contextforcing.provenance import set_command

    argv = sys.argv[1:] if argv is None else list(argv)
    with set_command(argv):  # what sidecars record as the command line
        return run_command(lambda: build_parser().parse_args(argv))  # parsing imports torch: Ctrl-C often lands there


def run_command(parse: Callable[[], argparse.Namespace]) -> int:
    """Parse, then run the command; bad input is one line and exit code 2, a stop signal (Ctrl-C, SIGTERM,
    SIGHUP) one line and exit code 128 + the signal, a standard output that cannot take the command's output
    one line (a full device) or nothing (a reader that stopped reading, `| head -1`)."""
    try:
        # Parsing imports torch. A Ctrl-C that lands inside a C extension's import can leave the interpreter
        # broken (half-initialised modules, or CPython's flag that kills the process by SIGINT at exit after
        # printing our line), so it is held until the imports are done, then acted on (as the guard ends).
        with command_line():
            with InterruptGuard():
                args = parse()
            from contextforcing.threads import use_threads

            use_threads(getattr(args, "threads", None))
            with StdoutGuard() as stdout:
                code = args.func(args)
                stdout.flush()
            return code
    except UserError as err:
        say(f"contextforcing: error: {err}")
        return 2
    except StdoutFailed as err:
        return err.exit_code()
    except KeyboardInterrupt as err:
        # An `Interrupted` says what its job kept; a bare Ctrl-C claims nothing it cannot know.
        kept = f"; {err}" if isinstance(err, Interrupted) and str(err) else ""
        signum = getattr(err, "signum", signal.SIGINT)
        by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        say(f"contextforcing: interrupted{by}{kept}")
        return 128 + signum


class StdoutFailed(Exception):
    """Standard output refused a write: its reader went away (EPIPE) or its device is full."""

    def __init__(self, err: OSError):
        super().__init__(err.strerror or str(err))
        self.errno = err.errno

    def exit_code(self) -> int:
        if self.errno == errno.EPIPE:  # `generate ... | head -1`: the reader had what it wanted; the job is done
            return 0
        say(f"contextforcing: error: cannot write to standard output: {self}")
        return 2


class StdoutGuard:
    """`sys.stdout` for the length of a command, through a proxy whose failed writes raise `StdoutFailed`: a
    closed pipe or a full device is told apart from the command's own errors."""

    def __init__(self):
        self.stream = None

    def __enter__(self) -> "StdoutGuard":
        self.stream, sys.stdout = sys.stdout, self
        return self

    def __exit__(self, kind, value, traceback) -> None:
        sys.stdout = self.stream
        if kind is StdoutFailed and self.stream is sys.__stdout__:
            # Nothing more can be written there; the interpreter's own flush at exit must not try again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            finally:
                os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as err:
            raise StdoutFailed(err) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as err:
            raise StdoutFailed(err) from None

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


if __name__ == "__main__":
    sys.exit(main())
