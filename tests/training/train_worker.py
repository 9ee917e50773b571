"""Entry point for the trainer tests' subprocesses (torchrun): registers the `debug` stage, then runs the
training CLI (`train debug --config ... key=value` or `export RUN OUT`) with the main CLI's error handling."""

from __future__ import annotations

import argparse
import sys

import debug_stage  # noqa: F401  (registers the "debug" stage)

from contextforcing.errors import UserError
from contextforcing.training.cli import register


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="contextforcing")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"contextforcing: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
