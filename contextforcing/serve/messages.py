"""What a page may ask of the server: its messages read safely (`parse_message`: size and depth capped before
parsing), a Start checked (`StartRequest`), and the limits the server's flags set (`ServeLimits`)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from contextforcing.errors import UserError
from contextforcing.memory.spec import RECACHE_MODES


@dataclass(frozen=True)
class ServeLimits:
    """What one server allows; set by `contextforcing serve`'s flags."""

    max_streams: int = 2  # streams generating at once (a tab beyond them is told the server is busy)
    max_seconds: float = 600.0  # longest stream; its frames are kept (on disk) for Download mp4
    lead_chunks: int = 2  # chunks generated ahead of playback
    panel_rows: int = 6  # memory-panel rows a page shows (and whose thumbnails are kept)

    def check(self) -> "ServeLimits":
        if self.max_streams < 1:
            raise UserError(f"--max-streams must be at least 1, got {self.max_streams}")
        if not 0 < self.max_seconds < math.inf:
            raise UserError(f"--max-seconds must be positive and finite, got {self.max_seconds}")
        if self.lead_chunks < 1:
            raise UserError(f"--lead-chunks must be at least 1, got {self.lead_chunks}")
        return self


@dataclass(frozen=True)
class StartRequest:
    """A page's Start: what to stream (the page's JSON, checked here)."""

    prompt: str
    seed: int = 0
    seconds: float | None = None  # None: until Stop (or the server's --max-seconds)
    memory: dict | None = None  # {"policy": name, option: value, ...}; None: the model's trained memory
    recache: str = "window"
    flush: bool = False  # flush sink and slow memory on prompt switches (the page's keep / flush)

    @classmethod
    def from_json(cls, data: dict, limits: ServeLimits) -> "StartRequest":
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise UserError("the prompt must be text")
        seed = integer(data.get("seed", 0), "seed")
        if not 0 <= seed < 2**64:
            raise UserError(f"seed must be in [0, 2**64), got {seed}")
        seconds = data.get("seconds")
        if seconds in (None, ""):
            seconds = None
        else:
            seconds = _number(seconds, "seconds")
            if not 0 < seconds <= limits.max_seconds:
                raise UserError(
                    f"seconds must be in (0, {limits.max_seconds:g}] (the server's --max-seconds), got {seconds:g}"
                )
        memory = data.get("memory")
        if memory is not None and not isinstance(memory, dict):
            raise UserError("memory must be a policy and its options")
        recache = data.get("recache", "window")
        if recache not in RECACHE_MODES:
            raise UserError(f"recache must be one of {', '.join(RECACHE_MODES)}, got {recache!r}")
        return cls(prompt, seed, seconds, memory, recache, bool(data.get("flush", False)))


# What one message from a page may be: a Start is a prompt and a dozen options in at most three levels of JSON
# ({"memory": {...}}), a few KB; the caps leave room for that many times over and refuse what is not a page's.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_JSON_DEPTH = 8
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKETS = re.compile(r"[\[\]{}]")


def parse_message(text: str) -> object:
    """A page's JSON message, or a one-line UserError for one larger or more deeply nested than any page sends
    (checked before parsing: the parser recurses once per level)."""
    size = len(text.encode())
    if size > MAX_MESSAGE_BYTES:
        raise UserError(f"a message may be at most {MAX_MESSAGE_BYTES:,} bytes, got {size:,}")
    depth = deepest = 0
    for bracket in _JSON_BRACKETS.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        raise UserError(f"a message may nest at most {MAX_JSON_DEPTH} levels of JSON, got {deepest}")
    return json.loads(text)


def _number(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UserError(f"{what} must be finite, got {value!r}")
    return number


def integer(value, what: str) -> int:
    number = _number(value, what)
    if number != int(number):
        raise UserError(f"{what} must be a whole number, got {value!r}")
    return int(number)
