"""The exception types the command line turns into one line, and the one-line helpers they share.

The CLI turns a `UserError` into a one-line message on stderr and exit code 2, and an `Interrupted` (a
KeyboardInterrupt that knows what the job kept and which signal stopped it) into one line and exit code 128 +
the signal (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP); everything else is a bug and keeps its traceback.
"""

import contextvars
import difflib
import signal
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator


class UserError(ValueError):
    """Bad input from the user (config key, size, path, checkpoint...). The message names the problem."""


class ArgumentError(UserError, TypeError):
    """A Python call with a keyword its function does not take (also a TypeError, as Python's own would be)."""


class Interrupted(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) after which the job finished its writes; the message says what it
    kept (or that it kept nothing), `signum` which signal it was (the exit code is 128 + signum)."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def shorten(text: str, limit: int = 80) -> str:
    """`text` for a one-line message: whole when short, else its start and how long it was (an error must not
    echo a megabyte of input back)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20].rstrip()}... ({len(text):,} characters)"


def quote(text: str, limit: int = 80) -> str:
    """User text (a prompt) quoted for a one-line message: `repr` of it whole when short, else of its start, with
    its length."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[: limit - 20]!r}... ({len(text):,} characters)"


def note(message: str) -> None:
    """One line on stderr in the CLI's format, for what a job decided on its own (e.g. a resumed run's changes).
    A stderr that is gone (the terminal closed: SIGHUP) loses the line, never the job."""
    say(f"contextforcing: {message}")


def say(line: str) -> None:
    """`line` on stderr, if stderr can still take it."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # EIO from a hung-up terminal, EPIPE, a closed stream
        pass


def warn(message: str) -> None:
    """A one-line warning on stderr (for what a job recovered from, e.g. a broken checkpoint)."""
    note(f"warning: {message}")


def format_bytes(n: float) -> str:
    """A byte count for messages and tables: 4 significant digits in the largest binary unit that fits."""
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:.0f} B"


# -- one message, two spellings: `--init-video` on the command line, `init_video` in Python ------------------
_COMMAND_LINE = contextvars.ContextVar("contextforcing_command_line", default=False)


@contextmanager
def command_line() -> Iterator[None]:
    """Within it, errors name command-line flags (`cli.run_command` enters it); elsewhere Python arguments."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def option(name: str, flag: str | None = None) -> str:
    """How an error names an input: the flag (`flag`, default `--` + name with dashes) on the command line,
    the keyword argument `name` in Python, so that neither user reads the other's spelling."""
    if _COMMAND_LINE.get():
        return flag or "--" + name.replace("_", "-")
    return name


def unknown_keyword(function: str, name: str, valid: Iterable[str]) -> ArgumentError:
    """`function(..., name=...)` with a keyword it does not take: the name, the closest valid one, all of them."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ArgumentError(f"{function}() got an unknown argument {name!r}{hint} (valid: {', '.join(valid)})")


def checked_keywords(name: str | None = None):
    """Decorator: a keyword the function does not take is an `ArgumentError` naming it, the closest valid
    one and all of them (Python's own TypeError names neither of the last two). `name`: how users call it."""
    import functools
    import inspect

    def decorate(function):
        parameters = inspect.signature(function).parameters
        valid = [n for n, p in parameters.items() if n not in ("self", "cls") and p.kind is not p.VAR_KEYWORD]
        shown = name or function.__qualname__

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for key in kwargs:
                if key not in parameters:
                    raise unknown_keyword(shown, key, valid)
            return function(*args, **kwargs)

        return wrapper

    return decorate
