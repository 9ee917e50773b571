"""A generation's prompts on their chunks: `Prompt`, and the one function that places and checks them
(`place_prompts`) for the Python API (`switches={seconds: prompt}`), `generate --switch` and `--prompts`, the
scripted worlds and the live viewer's switches; JSONL prompt scripts (`{"at": SECONDS, "prompt": TEXT}` per line,
what `generate --prompts` and the scripted worlds read).

A prompt asked for at `at` seconds of video lands on the nearest chunk boundary (half a chunk rounds up); one given
on its chunk (a world's script, a live switch) stays there. Every prompt must land on a later chunk than the one
before it, and inside the video.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from contextforcing.config import VideoConfig
from contextforcing.errors import UserError, quote


@dataclass(frozen=True)
class Prompt:
    """A prompt and the chunk it takes effect from (a prompt switch, after the first)."""

    text: str
    chunk: int = 0
    flush: bool = False  # the switch drops sink and slow memory
    at: float | None = None  # the seconds of video it was asked for (None: given on `chunk`)
    line: int | None = None  # its line in a prompt script

    def to_json(self, video: VideoConfig) -> dict:
        """Where the prompt was asked for and where it landed (the CLI sidecar's `prompts`)."""
        frame = self.chunk * video.chunk_frames
        return {
            "prompt": self.text,
            "line": self.line,
            "at": self.at,
            "chunk": self.chunk,
            "frame": frame,
            "seconds": frame / video.latent_fps,
        }

    def switch_json(self, video: VideoConfig) -> dict:
        """The switch as a sidecar's `switches` records it."""
        return {"chunk": self.chunk, "frame": self.chunk * video.chunk_frames, "prompt": self.text, "flush": self.flush}


def place_prompts(
    prompts: Sequence[Prompt], video: VideoConfig, chunks: int | None, source: str = "switches"
) -> list[Prompt]:
    """`prompts` on their chunks (from `at` seconds: the nearest chunk boundary, half rounds up), each after the
    one before and inside a video of `chunks` chunks (None: unbounded); `source` names them in errors (a script's
    path, `--switch`, `switches`)."""
    chunk_s = video.chunk_frames / video.latent_fps
    placed: list[Prompt] = []
    for p in prompts:
        chunk = p.chunk if p.at is None else math.floor(p.at / chunk_s + 0.5)
        if placed and chunk <= placed[-1].chunk:
            raise UserError(
                f"{_where(p, source, chunk_s)} lands on chunk {chunk} like the prompt before it; "
                f"switches land on {chunk_s:g} s chunk boundaries, space them further apart"
            )
        if chunks is not None and chunk >= chunks:
            raise UserError(
                f"{_where(p, source, chunk_s)} is past the end of the video ({chunks} chunks of {chunk_s:g} s; "
                f"the last switch can be at {(chunks - 1) * chunk_s:g} s)"
            )
        placed.append(dataclasses.replace(p, chunk=chunk))
    return placed


def _where(p: Prompt, source: str, chunk_s: float) -> str:
    """A prompt as an error names it: its script line, its --switch, or the switch to its text."""
    at = p.chunk * chunk_s if p.at is None else p.at
    if p.line is not None:
        return f"{source} line {p.line}: at {at:g} s"
    if source.startswith("--"):
        return f"{source} at {at:g} s"
    return f"{source}: the switch to {quote(p.text)} at {at:g} s"


def as_prompts(switches: Mapping[float, str] | Sequence[Prompt] | None, flush: bool, example: str) -> list[Prompt]:
    """The Python API's `switches` (seconds of video -> prompt, or `Prompt`s on their chunks) as `Prompt`s."""
    if switches is None:
        return []
    if not isinstance(switches, Mapping):
        if isinstance(switches, (str, bytes)) or not all(isinstance(p, Prompt) for p in switches):
            raise UserError(
                f"switches must be a dict of seconds of video to prompts, e.g. {{10.0: {example!r}}}, "
                f"got {_described(switches)}"
            )
        return list(switches)
    prompts = []
    for at, text in sorted(switches.items()):
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not at > 0 or not math.isfinite(at):
            raise UserError(f"switches: a switch time must be a positive number of seconds of video, got {at!r}")
        prompts.append(Prompt(text, flush=flush, at=float(at)))
    return prompts


def _described(value) -> str:
    """A value's type for an error, with its items' type for a list or tuple (`list of tuple`)."""
    kind = type(value).__name__
    if isinstance(value, (list, tuple)) and value:
        kind += f" of {type(value[0]).__name__}"
    return kind


# -- prompt scripts -------------------------------------------------------------------------------------------


def read_prompt_script(path: str) -> list[tuple[int, float, str]]:
    """(line number, seconds, prompt) per non-blank line of a JSONL script, times strictly increasing."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt script {path} does not exist")
    entries: list[tuple[int, float, str]] = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            entries.append(_script_entry(line, f"{path} line {number}", number, entries))
    if not entries:
        raise UserError(f"prompt script {path} has no prompts")
    return entries


def _read_text(path: Path) -> str:
    """The script's text, or one line saying why it cannot be read (not UTF-8: where the first bad byte is)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read prompt script {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(
            f"prompt script {path} line {line} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
            f"{err.start}); save it as UTF-8"
        ) from None


def _script_entry(line: str, where: str, number: int, before: list) -> tuple[int, float, str]:
    try:
        item = json.loads(line)
    except ValueError as err:
        raise UserError(f"{where}: not valid JSON ({getattr(err, 'msg', err)})") from None
    if not isinstance(item, dict):
        raise UserError(f'{where}: expected an object like {{"at": 0, "prompt": "..."}}')
    missing = [k for k in ("at", "prompt") if k not in item]
    if missing:
        raise UserError(f"{where}: missing key {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(item) - {"at", "prompt"})
    if unknown:
        raise UserError(f"{where}: unknown key {', '.join(repr(k) for k in unknown)} (only 'at' and 'prompt')")
    at, prompt = item["at"], item["prompt"]
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
        raise UserError(f"{where}: 'at' must be a number of seconds >= 0, got {at!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: empty prompt")
    if before and at <= before[-1][1]:
        raise UserError(
            f"{where}: at {at:g} s is not after line {before[-1][0]} ({before[-1][1]:g} s); times must increase"
        )
    return number, float(at), prompt.strip()


def script_prompts(start: str | None, entries: list[tuple[int, float, str]], source: str) -> list[Prompt]:
    """A script's prompts (`read_prompt_script`), the first at 0 s: the script's own, or `start` (--prompt) when
    the script begins later."""
    first_line, first_at, _ = entries[0]
    if first_at == 0 and start is not None:
        raise UserError(f"{source} line {first_line}: sets the starting prompt at 0 s, so leave out --prompt")
    if first_at != 0 and start is None:
        raise UserError(
            f"{source} line {first_line}: the first prompt must be at 0 s (or give the start with --prompt)"
        )
    prompts = [Prompt(text, at=at, line=line) for line, at, text in entries]
    return prompts if first_at == 0 else [Prompt(start, at=0.0), *prompts]
