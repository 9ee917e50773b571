"""Where an output came from: the package version, the git commit of the checkout it runs from (when it runs from
one) and the command line; recorded in every generated video's sidecar (`Generation.record`)."""

from __future__ import annotations

import contextvars
import functools
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from contextforcing import __version__

_COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar("contextforcing_command", default=None)
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root when the package runs from a clone


@contextmanager
def set_command(argv: list[str]) -> Iterator[None]:
    """Within it, the command line is `contextforcing ARGV` (`cli.main` enters it); outside, `sys.argv`."""
    token = _COMMAND.set(shlex.join(["contextforcing", *argv]))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def command() -> str:
    return _COMMAND.get() or shlex.join(sys.argv)


@functools.lru_cache(maxsize=1)
def git_commit() -> dict | None:
    """{"commit": sha, "dirty": bool} of the checkout the package runs from; None for an installed package
    (no .git beside it) or where git is not available."""
    if not (CHECKOUT / ".git").exists():
        return None
    try:
        sha = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": dirty}


def _git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, timeout=10, check=True)
    return result.stdout.strip()


def provenance() -> dict:
    """The sidecar's `provenance` entry."""
    git = git_commit()
    return {
        "version": __version__,
        "commit": None if git is None else git["commit"],
        "dirty": None if git is None else git["dirty"],
        "command": command(),
        "python": sys.version.split()[0],
    }
