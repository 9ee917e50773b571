"""The held-out panorama worlds: scripts and seeds that training data never uses.

Each held-out script is a scripted tour of 90 s built from `TOURS` (8 tours: palettes, balls and the
direction vary; odd tours mirror the even ones and pan in the dark once), with its hold and darkness
lengths drawn from a fixed held-out stream, so that every world has:

- revisits in every memory bucket: fast (<= 1.5 s: a one-chunk glance away, a one-chunk blackout),
  slow (<= 20 s: a second view left and revisited, a 6 s blackout) and beyond (a 20-30 s blackout, and a
  view left for more than a minute: delays from 1 s to over 60 s);
- most revisits of views other than the first (the attention sink's), including the longest ones;
- lights off and on, pans both ways, and at least one ball.

Seeds are at or above `EVAL_SEED_BASE` (training draws seeds below it); the random training scripts
come from their own streams. `heldout_worlds(count)` lists them seed-major: the first 16 (8 tours x 2
seeds) are the standard set, and any prefix spreads over all tours.
"""

from __future__ import annotations

import numpy as np

from contextforcing.data.world.panorama.generator import OTHER, ScriptBuilder, chunks, chunks_for_seconds
from contextforcing.data.world.panorama.script import PanoramaScript, WhiteBall
from contextforcing.data.world.panorama.simulate import PanoramaSpec
from contextforcing.data.world.prompts import EVAL_SEED_BASE

HELDOUT_SECONDS = 90.0
STANDARD_COUNT = 16
_HELDOUT_STREAM = 7_654_321  # keys the held-out tours' parameters; training scripts never use it

# (palette, white ball or None, black ball, first pan direction)
TOURS: tuple[tuple[str, WhiteBall | None, bool, str], ...] = (
    ("warm", WhiteBall("leftward", "slow"), True, "right"),
    ("cool", WhiteBall(None, "fast"), False, "left"),
    ("forest", None, True, "right"),
    ("dusk", WhiteBall("rightward", "fast"), True, "left"),
    ("sand", WhiteBall("leftward", "fast"), False, "right"),
    ("slate", WhiteBall("rightward", "slow"), True, "left"),
    ("warm", WhiteBall(None, "slow"), True, "left"),
    ("cool", WhiteBall("rightward", "fast"), True, "right"),
)


def tour_script(index: int) -> PanoramaScript:
    """Held-out tour `index` (0 .. len(TOURS) - 1); positions in the comments are for a rightward tour
    (one chunk of panning moves the view 24 px; the room is 256 px around; view A is where it starts)."""
    palette, white, black, away = TOURS[index]
    back = OTHER[away]
    rng = np.random.default_rng([_HELDOUT_STREAM, index])
    b = ScriptBuilder(palette, white, black, source=f"held-out tour {index}")
    b.hold(int(rng.integers(3, 6)))  # A, in the sink
    b.pan(away, 1).pan(back, 1).hold(2)  # fast revisits of A's trailing edge
    b.pan(away, 3).hold(int(rng.integers(4, 7)))  # view B (x = 72)
    b.lights_off(1).hold(3)  # fast revisit of B in the dark
    b.pan(back, 1).pan(away, 1).hold(2)  # fast revisits of B's other edge
    b.pan(away, 3).hold(int(rng.integers(2, 5)))  # view C (x = 144)
    if index % 2:  # blackout of ~6 s with a pan in the dark: the camera must be followed blind
        b.lights_off(2, camera=f"pan {away}").lights_off(chunks(4.5)).hold(2).pan(back, 2)
    else:
        b.lights_off(chunks(rng.uniform(5.0, 8.0))).hold(2)  # slow revisit of C in the dark
    b.pan(back, 3).hold(int(rng.integers(3, 5)))  # B again, ~15 s later (slow bucket)
    b.pan(away, 6).hold(2).lights_off(1).hold(2)  # D (x = 216), a fast blackout; from here on B stays out of
    # sight for over a minute
    b.pan(back, 2).lights_off(chunks(rng.uniform(22.0, 28.0))).hold(3)  # x = 168: a blackout beyond 20 s
    b.pan(away, 4).hold(int(rng.integers(2, 4))).pan(back, 4).hold(2)  # round A (x = 264) and back
    b.pan(away, 2).hold(int(rng.integers(2, 5))).pan(back, 2)  # glances that keep B out of view
    n_chunks = chunks_for_seconds(HELDOUT_SECONDS)
    b.hold(max(0, n_chunks - len(b) - 8))
    b.pan(back, 4)  # B again after more than a minute
    return b.build(n_chunks)


def heldout_worlds(count: int = STANDARD_COUNT) -> list[PanoramaSpec]:
    """`count` held-out worlds (script, seed, 90 s), seed-major over the tours."""
    worlds = []
    for i in range(count):
        s, tour = divmod(i, len(TOURS))
        worlds.append(PanoramaSpec(tour_script(tour), EVAL_SEED_BASE + 100 * tour + s, HELDOUT_SECONDS))
    return worlds
