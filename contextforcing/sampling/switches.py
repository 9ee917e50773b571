"""Prompt timelines: JSONL prompt scripts (`{"at": SECONDS, "prompt": TEXT}` per line, what `generate --prompts`
and the scripted worlds read) and their placement on chunk boundaries."""

from __future__ import annotations

import json
import math
from pathlib import Path

from contextforcing.errors import UserError


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


def place_script(
    start: str | None, entries: list[tuple[int, float, str]], video, chunks: int, source: str
) -> list[dict]:
    """Each prompt on the nearest chunk boundary (half rounds up); the first takes effect at chunk 0."""
    first_line, first_at, _ = entries[0]
    if first_at == 0 and start is not None:
        raise UserError(f"{source} line {first_line}: sets the starting prompt at 0 s, so leave out --prompt")
    if first_at != 0 and start is None:
        raise UserError(
            f"{source} line {first_line}: the first prompt must be at 0 s (or give the start with --prompt)"
        )
    if first_at != 0:
        entries = [(None, 0.0, start), *entries]
    return place_switches(entries, video, chunks, lambda number, at: f"{source} line {number}: at {at:g} s")


def place_switches(entries: list[tuple], video, chunks: int, where) -> list[dict]:
    """The first entry at chunk 0, each later one on the chunk boundary nearest its seconds (half rounds up);
    `where(line, seconds)` names an entry in errors (a script line, a --switch)."""
    chunk_s = video.chunk_frames / video.latent_fps
    placed = [placement(entries[0], 0, video)]
    for entry in entries[1:]:
        number, at, _ = entry
        chunk = math.floor(at / chunk_s + 0.5)
        if chunk >= chunks:
            raise UserError(
                f"{where(number, at)} is past the end of the video ({chunks} chunks of {chunk_s:g} s; "
                f"the last switch can be at {(chunks - 1) * chunk_s:g} s)"
            )
        if chunk <= placed[-1]["chunk"]:
            raise UserError(
                f"{where(number, at)} lands on chunk {chunk} like the prompt before it; "
                f"switches land on {chunk_s:g} s chunk boundaries, space them further apart"
            )
        placed.append(placement(entry, chunk, video))
    return placed


def placement(entry: tuple, chunk: int, video) -> dict:
    line, at, prompt = entry
    frame = chunk * video.chunk_frames
    return {
        "prompt": prompt,
        "line": line,
        "at": at,
        "chunk": chunk,
        "frame": frame,
        "seconds": frame / video.latent_fps,
    }
