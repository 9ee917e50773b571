"""The exception types the command line turns into one line, and the one-line helpers they share.

The CLI turns a `UserError` into a one-line message on stderr and exit code 2, and an `Interrupted` (a
KeyboardInterrupt that knows what the job kept) into one line and exit code 130; everything else is a bug
and keeps its traceback.
"""

import sys


class UserError(ValueError):
    """Bad input from the user (config key, size, path, checkpoint...). The message names the problem."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C after which the job finished its writes; the message says what it kept (or that it kept nothing)."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def note(message: str) -> None:
    """One line on stderr in the CLI's format, for what a job decided on its own (e.g. a resumed run's changes)."""
    print(f"contextforcing: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A one-line warning on stderr (for what a job recovered from, e.g. a broken checkpoint)."""
    note(f"warning: {message}")


def format_bytes(n: float) -> str:
    """A byte count for messages and tables: 4 significant digits in the largest binary unit that fits."""
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:.0f} B"
