"""Entry point for the trainer tests' subprocesses (torchrun): registers the `debug` stage, then runs the
training CLI (`train debug --config ... key=value` or `export RUN OUT`) with the main CLI's error and Ctrl-C handling."""

from __future__ import annotations

import argparse
import sys

import debug_stage  # noqa: F401  (registers the "debug" stage)

from contextforcing.cli import run_command
from contextforcing.cli.train import register


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="contextforcing")
    register(parser.add_subparsers(required=True))
    return run_command(lambda: parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
