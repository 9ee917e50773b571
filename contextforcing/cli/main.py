"""Command line: `contextforcing generate | bench | ...`. Bad input exits with code 2 and one line.

Each command's module in this package has `register(subparsers)`; a command line that names its command builds
that command's parser alone (so `generate` imports nothing of `train` or `serve`), anything else (`--help`, a
typo) builds them all.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
from typing import Callable

from contextforcing import __version__
from contextforcing.cli.args import Parser, examples
from contextforcing.errors import Interrupted, UserError, command_line, say
from contextforcing.io.outputs import InterruptGuard

# Every command and the module that registers it, in the order `--help` lists them.
COMMANDS = {
    "generate": "contextforcing.cli.generate",
    "bench": "contextforcing.cli.bench",
    "convert": "contextforcing.cli.convert_weights",
    "world": "contextforcing.cli.world_data",
    "eval": "contextforcing.cli.evaluation",
    "train": "contextforcing.cli.train",
    "export": "contextforcing.cli.train",
    "serve": "contextforcing.cli.viewer",
    "plot": "contextforcing.cli.plot",
}
_EXAMPLE_PROMPT = "warm room, hold, lights on, black ball"  # the embedded model reads the panorama grammar


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the one `argv` names first."""
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
    chosen = [argv[0]] if argv and argv[0] in COMMANDS else list(COMMANDS)
    for name in dict.fromkeys(COMMANDS[command] for command in chosen):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # an optional component that is not part of this build
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from contextforcing.io.provenance import set_command

    argv = sys.argv[1:] if argv is None else list(argv)
    with set_command(argv):  # what sidecars record as the command line
        return run_command(
            lambda: build_parser(argv).parse_args(argv)
        )  # parsing imports torch: Ctrl-C often lands there


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
            from contextforcing.runtime.threads import use_threads

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
