"""Rule-based "generators" of the panorama world, to show what the metrics reward and what they refuse.

Each takes a world's track and its rendered frames and returns a video of the same length:

- `still_picture`: the first frame, repeated.
- `copy_the_sink`: the first chunk (the attention sink's 3 latent frames, 9 pixel frames) played in a loop:
  a generator that repeats what it saw first.
- `copy_last_visible`: the ground truth, but while the lights are off it keeps showing the last lit frame:
  a generator that copies the last visible frame instead of going dark.
- `forgetting(window_seconds)`: follows the script exactly (camera, lights, balls, events in view) but
  redraws a part of the room at random whenever it comes back after more than `window_seconds` out of
  sight (with 0, every revisit): the content comes from other seeds' rooms, so it is as plausible as the
  truth, only not the same. `keep_sink=True` keeps whatever the sink showed (a memory of the first view).
- the ground truth itself is "perfect memory"; `scripts/benchmark_oracles.py` sends every video through
  the codec a model would be decoded by.

Cheaters (memoryless generators built to fool a revisit metric that compares a video with itself; each must
score far below the truth on `memory_score`, tests/eval/test_memory_score.py): `constant_darkening`,
`blurred_still`, `repeating_room(period)`, `forgetting_blurred`, `wrong_room`, `forgetting_without_objects`,
`forgetting_crowded`. `other_seed_remembered` is the control: a consistent room of another seed, which a
free-running generator may legitimately draw.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from contextforcing.data.world.panorama.geometry import (
    CELL,
    CHUNK_LATENTS,
    COLUMN,
    DARK_COLOUR,
    N_ROOM_CELLS,
    ROOM_WIDTH,
    UNITS,
    VIEW,
)
from contextforcing.data.world.panorama.render import draw_balls, render
from contextforcing.data.world.panorama.revisits import track_revisits
from contextforcing.data.world.panorama.simulate import (
    CELL_INDEX,
    COLOUR,
    PRESENT,
    SHAPE,
    PanoramaSpec,
    PanoramaTrack,
    simulate,
)
from contextforcing.data.world.style import OBJECT_COLOUR_NAMES, SHAPES

PANEL_PX = COLUMN  # a repeating room shifts by whole wall panels

SINK_FRAMES = 1 + (CHUNK_LATENTS - 1) * 4  # pixel frames of the first chunk
ALTERNATE_ROOMS = 4  # other seeds' rooms a forgetting generator draws from, in turn
_ALTERNATE_SEED_STEP = 7_919


def still_picture(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    return np.repeat(frames[:1], len(frames), axis=0)


def copy_the_sink(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    return frames[np.arange(len(frames)) % SINK_FRAMES].copy()


def copy_last_visible(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    lit = np.flatnonzero(track.lit)
    if lit.size == 0:
        return frames.copy()
    last = lit[np.maximum(np.searchsorted(lit, np.arange(len(frames)), side="right") - 1, 0)]
    return frames[np.where(np.arange(len(frames)) < lit[0], np.arange(len(frames)), last)].copy()


def unit_versions(track: PanoramaTrack, window_seconds: float, keep_sink: bool = False) -> np.ndarray:
    """[T, UNITS]: which drawing of each unit a frame shows (0: the truth, k > 0: the k-th alternate room)."""
    versions = np.zeros((track.n_frames, ROOM_WIDTH // CELL), np.int64)
    redraws = np.zeros(ROOM_WIDTH // CELL, np.int64)
    for r in track_revisits(track):
        if r.delay_seconds <= window_seconds or (keep_sink and r.in_sink):
            continue
        redraws[r.unit] += 1
        versions[r.frame_before + 1 :, r.unit] = 1 + (redraws[r.unit] + r.unit) % ALTERNATE_ROOMS
    return versions


def forgetting(
    track: PanoramaTrack,
    frames: np.ndarray,
    window_seconds: float = 0.0,
    keep_sink: bool = False,
    variant: Callable[[PanoramaTrack], PanoramaTrack] | None = None,
) -> np.ndarray:
    """`variant` changes every room drawn (the truth's and the alternates'), e.g. `without_objects`."""
    return _composite(track, unit_versions(track, window_seconds, keep_sink), variant)


def _rooms(track: PanoramaTrack, variant=None) -> list[np.ndarray]:
    """The truth's room (without balls) and ALTERNATE_ROOMS other seeds' rooms on the same script."""
    spec, variant = track.spec, variant or (lambda t: t)
    rooms = [render(variant(track), balls=False)]
    for k in range(1, ALTERNATE_ROOMS + 1):
        other = simulate(PanoramaSpec(spec.script, spec.seed + k * _ALTERNATE_SEED_STEP, spec.seconds))
        rooms.append(render(variant(other), balls=False))
    return rooms


def _composite(track: PanoramaTrack, versions: np.ndarray, variant=None) -> np.ndarray:
    """Each view column drawn from the room its unit's version names ([T, UNITS]), then balls and lights."""
    rooms = _rooms(track, variant)
    units = np.mod(track.camera_x[:, None] + np.arange(VIEW), ROOM_WIDTH) // CELL  # [T, 64]
    column_version = np.take_along_axis(versions, units, axis=1)  # [T, 64]
    out = rooms[0].copy()
    for k in range(1, len(rooms)):
        t, x = np.nonzero(column_version == k)
        out[t, :, x] = rooms[k][t, :, x]
    draw_balls(out, track)
    out[~track.lit] = DARK_COLOUR
    return out


# -- cheaters: memoryless generators that fool a self-comparing revisit metric (docs/evaluation.md) -------------
BLUR_SIGMA = 2.0  # px


def blurred(frames: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Gaussian blur of every frame (lowers a colour-class error by merging classes at edges)."""
    from skimage.filters import gaussian

    out = gaussian(frames.astype(np.float32), sigma=(0, sigma, sigma, 0), preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _darkened(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    out = frames.copy()
    out[~track.lit] = DARK_COLOUR
    return out


def constant_darkening(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    """The first frame throughout, black while the script's lights are off."""
    return _darkened(track, still_picture(track, frames))


def blurred_still(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    """The first frame blurred, held still, black while the lights are off."""
    return _darkened(track, blurred(still_picture(track, frames)))


def repeating_room(track: PanoramaTrack, frames: np.ndarray, period: int) -> np.ndarray:
    """A room that repeats the first view's leftmost `period` px all round, turned with the camera (so a pan
    back shows what it showed) and shifted by a random multiple of a panel after every blackout: nothing
    about any place is kept, only a pattern any recent frame shows."""
    tile = frames[0][:, :period]
    room = np.tile(tile, (1, ROOM_WIDTH // period + 2, 1))
    rng = np.random.default_rng(track.seed)
    phase = np.zeros(track.n_frames, np.int64)
    back_on = np.flatnonzero(track.lit[1:] & ~track.lit[:-1]) + 1
    for f in back_on:
        phase[f:] = int(rng.integers(period // PANEL_PX)) * PANEL_PX
    x = np.mod(track.camera_x + phase, period)
    out = np.stack([room[:, s : s + VIEW] for s in x])
    draw_balls(out, track)
    return _darkened(track, out)


def forgetting_blurred(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    """The forgetting oracle, blurred."""
    return blurred(forgetting(track, frames))


def wrong_room(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    """The whole view switches to another seed's room whenever a part of the room comes back after being out of
    sight (consistent while in view, a new plausible room after every absence: scene-level forgetting). The
    new room is never the one the returning parts were last seen in."""
    versions = np.zeros((track.n_frames, UNITS), np.int64)
    by_frame: dict[int, list] = {}
    for r in track_revisits(track):
        by_frame.setdefault(r.frame_after, []).append(r)
    for f in sorted(by_frame):
        old = {int(versions[r.frame_before, r.unit]) for r in by_frame[f]} | {int(versions[f, 0])}
        versions[f:] = min(set(range(ALTERNATE_ROOMS + 1)) - old)
    return _composite(track, versions)


def without_objects(track: PanoramaTrack) -> PanoramaTrack:
    """The same world with no objects: the wall alone."""
    objects = track.objects.copy()
    objects[:, :, PRESENT] = 0
    return dataclasses.replace(track, objects=objects)


CROWDED_SHARE = 0.75  # of the room's cells that hold an object in a crowded room


def crowded(track: PanoramaTrack) -> PanoramaTrack:
    """The same world with an object in most cells (random shapes and colours from the seed) besides its own."""
    rng = np.random.default_rng([track.seed, len(track.objects)])
    extra_cells = rng.permutation(N_ROOM_CELLS)[: int(CROWDED_SHARE * N_ROOM_CELLS)]
    extra = np.zeros((len(extra_cells), 4), np.int8)
    extra[:, PRESENT], extra[:, CELL_INDEX] = 1, extra_cells
    extra[:, COLOUR] = rng.integers(len(OBJECT_COLOUR_NAMES), size=len(extra_cells))
    extra[:, SHAPE] = rng.integers(len(SHAPES), size=len(extra_cells))
    states = np.stack([np.concatenate([extra, state]) for state in track.objects])  # the world's own on top
    return dataclasses.replace(track, objects=states)


def forgetting_without_objects(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    """The forgetting oracle in rooms without objects."""
    return forgetting(track, frames, variant=without_objects)


def forgetting_crowded(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    """The forgetting oracle in crowded rooms (an object in most cells, so an object is often where one was)."""
    return forgetting(track, frames, variant=crowded)


def other_seed_remembered(track: PanoramaTrack, frames: np.ndarray) -> np.ndarray:
    """Not a cheat: another seed's room on the same script, kept perfectly. A free-running generator draws a
    room of its own; memory is keeping it, so this scores like the truth."""
    spec = track.spec
    other = simulate(PanoramaSpec(spec.script, spec.seed + _ALTERNATE_SEED_STEP, spec.seconds))
    return render(dataclasses.replace(other, balls=track.balls))
