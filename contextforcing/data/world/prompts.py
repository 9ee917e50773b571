"""The world's prompt grammar, and the held-out evaluation prompts and seeds.

    prompt   := [ "a " ] STYLE " " PALETTE " room" [ ", " OCCLUDER " occlusions" ] [ ", " PATH " sprite" ]
    STYLE    := plain | striped | columned | checkered
    PALETTE  := warm | cool | forest | dusk | sand | slate
    OCCLUDER := blackout | curtain | turn-away
    PATH     := circle | figure8 | bounce

The prompt fixes the background (style and palette) and, when given, the occluder and the sprite's path.
The seed draws everything else: which objects, where, what colour, the event and occlusion schedule,
the sprite's period and phase, and the occluder/path when the prompt leaves them out. Matching is
case-insensitive and whitespace-tolerant; anything else is a `UserError` naming the valid words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from contextforcing.data.world.style import OCCLUDERS, PALETTES, SPRITE_PATHS, STYLES
from contextforcing.errors import UserError, quote

# Style/palette pairs that training data never uses: the held-out prompts test composition.
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset({("checkered", "dusk"), ("columned", "sand")})
# Seeds at or above this are reserved for evaluation; the dataset writer draws training seeds below it.
EVAL_SEED_BASE = 1_000_000_000


@dataclass(frozen=True)
class PromptSpec:
    style: str
    palette: str
    occluder: str | None = None  # None: the seed draws each occlusion's kind
    sprite_path: str | None = None  # None: the seed draws the path

    @property
    def canonical(self) -> str:
        text = f"{self.style} {self.palette} room"
        if self.occluder:
            text += f", {self.occluder} occlusions"
        if self.sprite_path:
            text += f", {self.sprite_path} sprite"
        return text

    @property
    def held_out(self) -> bool:
        return (self.style, self.palette) in HELD_OUT_COMBOS


_HEAD = re.compile(r"^(?:an? )?(?P<style>\S+) (?P<palette>\S+) room$")
_OCCLUDER = re.compile(r"^(?P<occluder>\S+) occlusions$")
_SPRITE = re.compile(r"^(?P<path>\S+) sprite$")


def _choose(word: str, valid: tuple[str, ...], what: str, prompt: str) -> str:
    if word not in valid:
        raise UserError(
            f"bad world prompt {quote(prompt)}: unknown {what} {quote(word)}; choose one of {', '.join(valid)}"
        )
    return word


def parse_prompt(prompt: str) -> PromptSpec:
    """Parse a world prompt (see the module docstring); the one-line error names the bad part."""
    text = " ".join(str(prompt).lower().split())
    clauses = [c.strip() for c in text.split(",")]
    head = _HEAD.match(clauses[0]) if clauses else None
    if head is None:
        raise UserError(
            f"bad world prompt {quote(prompt)}: expected '<style> <palette> room[, <occluder> occlusions][, <path> sprite]', "
            f"e.g. 'striped cool room, curtain occlusions, circle sprite'"
        )
    style = _choose(head["style"], STYLES, "style", prompt)
    palette = _choose(head["palette"], tuple(PALETTES), "palette", prompt)
    occluder = sprite_path = None
    for clause in clauses[1:]:
        if (m := _OCCLUDER.match(clause)) and occluder is None:
            occluder = _choose(m["occluder"], OCCLUDERS, "occluder", prompt)
        elif (m := _SPRITE.match(clause)) and sprite_path is None:
            sprite_path = _choose(m["path"], SPRITE_PATHS, "sprite path", prompt)
        else:
            raise UserError(
                f"bad world prompt {quote(prompt)}: cannot parse clause {quote(clause)} "
                f"(expected '<occluder> occlusions' or '<path> sprite', each at most once)"
            )
    return PromptSpec(style, palette, occluder, sprite_path)


def all_training_heads() -> list[tuple[str, str]]:
    return [(s, p) for s in STYLES for p in PALETTES if (s, p) not in HELD_OUT_COMBOS]


def sample_training_prompt(rng: np.random.Generator) -> str:
    """A random grammatical prompt outside the held-out combinations; optional clauses half of the time."""
    heads = all_training_heads()
    style, palette = heads[rng.integers(len(heads))]
    occluder = OCCLUDERS[rng.integers(len(OCCLUDERS))] if rng.random() < 0.5 else None
    path = SPRITE_PATHS[rng.integers(len(SPRITE_PATHS))] if rng.random() < 0.5 else None
    return PromptSpec(style, palette, occluder, path).canonical
