"""The panorama world's controls: prompts, and prompt scripts in the jsonl format `generate --prompts` reads.

Every prompt states the whole situation, so the text a generator is conditioned on at any chunk says
everything the script controls:

    prompt  := PALETTE " room" ", " CAMERA ", lights " LIGHT [ ", " WHITE ] [ ", black ball" ]
    CAMERA  := hold | pan left | pan right
    LIGHT   := on | off
    WHITE   := "white ball bouncing" [ " " HEADING ] " " SPEED
    HEADING := leftward | rightward          (absent: it bounces in place)
    SPEED   := slow | fast                   (16 or 32 px/s, vertically and along the heading)
    PALETTE := warm | cool | forest | dusk | sand | slate

The clauses after the room may come in any order; case, extra spaces and a leading "a"/"the" are ignored.
The black ball has no attributes: it always bounces in place at the slow speed. The world model's text
encoder is a bag of words (`codecs.text.HashTextEncoder`), so no attribute may need binding to one of two
balls, and the camera and ball directions use different words (`left` vs `leftward`).

A script is a jsonl file of `{"at": SECONDS, "prompt": TEXT}` lines (`switches.read_prompt_script`),
placed on chunk boundaries exactly as `generate --prompts` places them (`switches.place_prompts`). Across
one script the room (palette) and which balls exist stay fixed; the camera, the lights and the white
ball's motion may change at any line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from contextforcing.data.world.panorama.geometry import BALL_SPEEDS, CHUNK_SECONDS, PALETTES
from contextforcing.errors import UserError, quote

CAMERA_ACTIONS = ("hold", "pan left", "pan right")
LIGHTS = ("on", "off")
HEADINGS = ("leftward", "rightward")
SPEEDS = tuple(BALL_SPEEDS)
PALETTE_NAMES = tuple(PALETTES)
CAMERA_STEP = {"hold": 0, "pan left": -1, "pan right": 1}  # the view's left edge moves by this many columns
HEADING_SIGN = {None: 0, "leftward": -1, "rightward": 1}
EXAMPLE = "warm room, pan left, lights on, white ball bouncing leftward fast, black ball"


@dataclass(frozen=True)
class WhiteBall:
    heading: str | None  # None: bounces in place
    speed: str

    @property
    def text(self) -> str:
        return "white ball bouncing" + (f" {self.heading}" if self.heading else "") + f" {self.speed}"


@dataclass(frozen=True)
class PanoramaPrompt:
    """What one prompt of a script states."""

    palette: str
    camera: str = "hold"
    lights_on: bool = True
    white: WhiteBall | None = None
    black: bool = False

    @property
    def canonical(self) -> str:
        parts = [f"{self.palette} room", self.camera, f"lights {'on' if self.lights_on else 'off'}"]
        if self.white:
            parts.append(self.white.text)
        if self.black:
            parts.append("black ball")
        return ", ".join(parts)

    @property
    def balls(self) -> tuple[bool, bool]:
        """Which balls exist: (white, black)."""
        return self.white is not None, self.black


def _choose(word: str, valid: tuple[str, ...], what: str, prompt: str) -> str:
    if word not in valid:
        raise UserError(
            f"bad panorama prompt {quote(prompt)}: unknown {what} {quote(word)}; choose one of {', '.join(valid)}"
        )
    return word


_ROOM = re.compile(r"^(?:(?:a|the) )?(?P<palette>\S+) room$")
_WHITE = re.compile(r"^white ball bouncing(?: (?P<heading>\S+))? (?P<speed>\S+)$")
_CLAUSES = (
    "'hold', 'pan left', 'pan right', 'lights on', 'lights off', "
    "'white ball bouncing [leftward|rightward] slow|fast', 'black ball'"
)


def _parse_clause(clause: str, prompt: str, found: dict) -> None:
    head = clause.split(" ", 1)[0]
    if head in ("hold", "pan"):
        key, value = "camera", _choose(clause, CAMERA_ACTIONS, "camera action", prompt)
    elif head == "lights":
        key, value = "lights_on", _choose(clause[len("lights ") :], LIGHTS, "light state", prompt) == "on"
    elif head == "white" and (m := _WHITE.match(clause)):
        heading = _choose(m["heading"], HEADINGS, "ball heading", prompt) if m["heading"] else None
        key, value = "white", WhiteBall(heading, _choose(m["speed"], SPEEDS, "ball speed", prompt))
    elif clause == "black ball":
        key, value = "black", True
    else:
        raise UserError(
            f"bad panorama prompt {quote(prompt)}: cannot parse clause {quote(clause)}; expected {_CLAUSES}"
        )
    if key in found:
        raise UserError(
            f"bad panorama prompt {quote(prompt)}: clause {quote(clause)} repeats the {key.replace('_on', '')}"
        )
    found[key] = value


def parse_panorama_prompt(prompt: str) -> PanoramaPrompt:
    """Parse one prompt (module docstring); a one-line `UserError` names the bad word and the valid ones."""
    text = " ".join(str(prompt).lower().split())
    clauses = [c.strip() for c in text.split(",")]
    room = _ROOM.match(clauses[0])
    if room is None:
        raise UserError(
            f"bad panorama prompt {quote(prompt)}: expected '<palette> room, <camera>, lights on|off[, ...]', "
            f"e.g. {EXAMPLE!r}"
        )
    palette = _choose(room["palette"], PALETTE_NAMES, "palette", prompt)
    found: dict = {}
    for clause in clauses[1:]:
        _parse_clause(clause, prompt, found)
    missing = [
        name
        for key, name in (
            ("camera", "camera action (hold, pan left, pan right)"),
            ("lights_on", "light state (lights on, lights off)"),
        )
        if key not in found
    ]
    if missing:
        raise UserError(f"bad panorama prompt {quote(prompt)}: missing the {' and the '.join(missing)}")
    return PanoramaPrompt(palette, **found)


@dataclass(frozen=True)
class ScriptEntry:
    chunk: int  # the chunk this prompt takes effect from
    prompt: PanoramaPrompt
    line: int | None = None  # line in the source file, for error messages

    @property
    def at(self) -> float:
        return self.chunk * CHUNK_SECONDS


@dataclass(frozen=True)
class PanoramaScript:
    """Prompts on chunk boundaries, the first at chunk 0, chunks strictly increasing."""

    entries: tuple[ScriptEntry, ...]
    source: str = "script"

    def __post_init__(self):
        if not self.entries or self.entries[0].chunk != 0:
            raise UserError(f"{self.source}: the first prompt must be at 0 s")
        first = self.entries[0]
        for before, entry in zip(self.entries, self.entries[1:]):
            where = f"{self.source}" + (f" line {entry.line}" if entry.line else f" at {entry.at:g} s")
            if entry.chunk <= before.chunk:
                raise UserError(f"{where}: prompts must be on increasing chunks")
            if entry.prompt.palette != first.prompt.palette:
                raise UserError(
                    f"{where}: room {entry.prompt.palette!r} differs from the first prompt's "
                    f"{first.prompt.palette!r}; a script shows one room"
                )
            if entry.prompt.balls != first.prompt.balls:
                raise UserError(
                    f"{where}: the balls ({_ball_names(entry.prompt)}) differ from the first prompt's "
                    f"({_ball_names(first.prompt)}); a script keeps the same balls throughout"
                )

    @property
    def palette(self) -> str:
        return self.entries[0].prompt.palette

    @property
    def balls(self) -> tuple[bool, bool]:
        return self.entries[0].prompt.balls

    @property
    def last_chunk(self) -> int:
        return self.entries[-1].chunk

    def chunk_prompts(self, n_chunks: int) -> list[PanoramaPrompt]:
        """The prompt in effect at every chunk 0 .. n_chunks - 1."""
        if self.last_chunk >= n_chunks:
            raise UserError(
                f"{self.source}: a prompt at {self.entries[-1].at:g} s is past the end of the video "
                f"({n_chunks} chunks of {CHUNK_SECONDS:g} s)"
            )
        out, current = [], 0
        for chunk in range(n_chunks):
            if current + 1 < len(self.entries) and self.entries[current + 1].chunk == chunk:
                current += 1
            out.append(self.entries[current].prompt)
        return out

    def to_jsonl(self) -> str:
        """The script as `generate --prompts` reads it (one line per switch, times on chunk boundaries)."""
        return "".join(json.dumps({"at": round(e.at, 6), "prompt": e.prompt.canonical}) + "\n" for e in self.entries)

    def to_json(self) -> list[dict]:
        return [{"at": round(e.at, 6), "prompt": e.prompt.canonical} for e in self.entries]


def _ball_names(prompt: PanoramaPrompt) -> str:
    names = [n for n, present in zip(("white", "black"), prompt.balls) if present]
    return " and ".join(names) if names else "none"


def script_from_chunks(prompts: list[PanoramaPrompt], source: str = "script") -> PanoramaScript:
    """A script from one prompt per chunk (consecutive equal prompts become one line)."""
    entries = [ScriptEntry(c, p) for c, p in enumerate(prompts) if c == 0 or p != prompts[c - 1]]
    return PanoramaScript(tuple(entries), source)


def script_from_json(items: list[dict], source: str = "script") -> PanoramaScript:
    """A script from `[{"at": SECONDS, "prompt": TEXT}, ...]` (as in annotations and dataset manifests);
    times must already be on chunk boundaries."""
    entries = []
    for i, item in enumerate(items, 1):
        chunk = round(float(item["at"]) / CHUNK_SECONDS)
        if abs(chunk * CHUNK_SECONDS - float(item["at"])) > 1e-6:
            raise UserError(f"{source} entry {i}: at {item['at']} s is not on a {CHUNK_SECONDS:g} s chunk boundary")
        entries.append(ScriptEntry(chunk, parse_panorama_prompt(item["prompt"]), i))
    return PanoramaScript(tuple(entries), source)


def read_script(path: str | os.PathLike, n_chunks: int) -> PanoramaScript:
    """A jsonl prompt script, placed on chunks as `generate --prompts` does for a video of `n_chunks`."""
    from contextforcing.config import PRESETS
    from contextforcing.sampling.switches import place_prompts, read_prompt_script, script_prompts

    asked = script_prompts(None, read_prompt_script(str(path)), str(path))
    parsed = []
    for p in place_prompts(asked, PRESETS["world"].video, n_chunks, str(path)):
        try:
            prompt = parse_panorama_prompt(p.text)
        except UserError as err:
            raise UserError(f"{path} line {p.line}: {err}") from None
        parsed.append(ScriptEntry(p.chunk, prompt, p.line))
    return PanoramaScript(tuple(parsed), str(path))
