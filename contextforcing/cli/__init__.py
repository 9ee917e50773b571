"""The command line, `contextforcing COMMAND ...` (`cli.main`): one module per command (`generate`, `bench`,
`convert_weights`, `world_data`, `evaluation`, `train`, `viewer`, `plot`), their shared flags in `args`."""

from contextforcing.cli.main import build_parser, main, run_command

__all__ = ["build_parser", "main", "run_command"]
