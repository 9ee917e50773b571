"""Building scripts: a chunk-by-chunk builder, and the seeded random script generator for training data.

`sample_training_script(rng, seconds)` strings together random *moves*, each a few chunks long:

- hold still (0.75-4.5 s);
- pan one way (0.75-9 s; 8 s is once around the room);
- glance: one chunk away and straight back (revisits within the fast memory);
- look away and back: pan n chunks, hold, pan the same n chunks back (revisits from ~1 s up to ~40 s);
- linger: stay in one part of the room for 10-60 s with small glances, so the far side is revisited
  after a long absence (the slow and beyond buckets);
- lights off for 0.75-30 s (log-uniform), sometimes panning in the dark;
- and now and then the white ball changes heading or speed.

Every script has at least one ball. The statistics (revisit delays per bucket, lights, pans) are
measured in docs/world.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from contextforcing.data.world.panorama.geometry import CHUNK_LATENTS, CHUNK_SECONDS
from contextforcing.data.world.panorama.script import (
    HEADINGS,
    PALETTE_NAMES,
    SPEEDS,
    PanoramaPrompt,
    PanoramaScript,
    WhiteBall,
    script_from_chunks,
)
from contextforcing.data.world.style import frames_for_seconds, latents_for_frames


def chunks_for_seconds(seconds: float) -> int:
    return latents_for_frames(frames_for_seconds(seconds)) // CHUNK_LATENTS


def chunks(seconds: float) -> int:
    """Whole chunks closest to `seconds` (at least one)."""
    return max(1, int(round(seconds / CHUNK_SECONDS)))


class ScriptBuilder:
    """Appends chunks of prompts: `hold`, `pan`, `lights_off`; `build` pads or cuts to the video length."""

    def __init__(self, palette: str, white: WhiteBall | None, black: bool, source: str = "script"):
        self.current = PanoramaPrompt(palette, "hold", True, white, black)
        self.prompts: list[PanoramaPrompt] = []
        self.source = source

    def add(self, n: int, **change) -> "ScriptBuilder":
        self.current = dataclasses.replace(self.current, **change)
        self.prompts += [self.current] * n
        return self

    def hold(self, n: int) -> "ScriptBuilder":
        return self.add(n, camera="hold", lights_on=True)

    def pan(self, direction: str, n: int) -> "ScriptBuilder":
        return self.add(n, camera=f"pan {direction}", lights_on=True)

    def lights_off(self, n: int, camera: str = "hold") -> "ScriptBuilder":
        return self.add(n, camera=camera, lights_on=False)

    def set_white(self, white: WhiteBall | None) -> "ScriptBuilder":
        self.current = dataclasses.replace(self.current, white=white)
        return self

    def __len__(self) -> int:
        return len(self.prompts)

    def build(self, n_chunks: int) -> PanoramaScript:
        prompts = self.prompts[:n_chunks]
        last = prompts[-1] if prompts else self.current
        prompts += [dataclasses.replace(last, camera="hold")] * (n_chunks - len(prompts))
        return script_from_chunks(prompts, self.source)


OTHER = {"left": "right", "right": "left"}


def _direction(rng) -> str:
    return ("left", "right")[rng.integers(2)]


def random_white(rng) -> WhiteBall:
    headings = (None, *HEADINGS)
    return WhiteBall(headings[rng.integers(len(headings))], SPEEDS[rng.integers(len(SPEEDS))])


def _log_uniform_chunks(rng, low_s: float, high_s: float) -> int:
    return chunks(float(np.exp(rng.uniform(np.log(low_s), np.log(high_s)))))


def _glance(b: ScriptBuilder, rng) -> None:
    """One chunk away and straight back: the edge comes back within the fast memory."""
    direction = _direction(rng)
    b.pan(direction, 1).hold(int(rng.integers(0, 2))).pan(OTHER[direction], 1)


def _away_and_back(b: ScriptBuilder, rng) -> None:
    direction, n = _direction(rng), int(rng.integers(1, 9))
    b.pan(direction, n).hold(int(rng.integers(0, 9))).pan(OTHER[direction], n)


def _linger(b: ScriptBuilder, rng) -> None:
    """10-60 s near here: holds and glances of at most two chunks, so the far side stays unseen."""
    end = len(b) + _log_uniform_chunks(rng, 10.0, 60.0)
    while len(b) < end:
        if rng.random() < 0.5:
            b.hold(int(rng.integers(1, 6)))
        else:
            direction, n = _direction(rng), int(rng.integers(1, 3))
            b.pan(direction, n).hold(int(rng.integers(0, 3))).pan(OTHER[direction], n)


def _lights(b: ScriptBuilder, rng) -> None:
    n = _log_uniform_chunks(rng, CHUNK_SECONDS, 30.0)
    if rng.random() < 0.2:  # pan in the dark: the generator must follow the camera by the prompt alone
        b.lights_off(n, camera=f"pan {_direction(rng)}")
    else:
        b.lights_off(n)
    b.hold(int(rng.integers(1, 4)))  # lit again for a moment: the revisit is seen


MOVES = (  # (weight, move)
    (2.0, lambda b, rng: b.hold(int(rng.integers(1, 7)))),
    (3.0, lambda b, rng: b.pan(_direction(rng), int(rng.integers(1, 13)))),
    (2.0, _glance),
    (2.0, _away_and_back),
    (1.0, _linger),
    (2.0, _lights),
    (0.5, lambda b, rng: b.set_white(random_white(rng)) if b.current.white else None),
)


def sample_training_script(rng: np.random.Generator, seconds: float) -> PanoramaScript:
    """A random script of `seconds` (see the module docstring); a deterministic function of the rng state."""
    n_chunks = chunks_for_seconds(seconds)
    palette = PALETTE_NAMES[rng.integers(len(PALETTE_NAMES))]
    white = random_white(rng) if rng.random() < 0.75 else None
    black = bool(rng.random() < 0.5) or white is None  # at least one ball
    b = ScriptBuilder(palette, white, black, source="training script")
    b.hold(int(rng.integers(1, 4)))  # the first view, in the sink
    weights = np.array([w for w, _ in MOVES])
    while len(b) < n_chunks:
        MOVES[rng.choice(len(MOVES), p=weights / weights.sum())][1](b, rng)
    return b.build(n_chunks)
