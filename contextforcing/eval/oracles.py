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
"""

from __future__ import annotations

import numpy as np

from contextforcing.data.world.panorama.geometry import CELL, CHUNK_LATENTS, DARK_COLOUR, ROOM_WIDTH, VIEW
from contextforcing.data.world.panorama.render import draw_balls, render
from contextforcing.data.world.panorama.revisits import track_revisits
from contextforcing.data.world.panorama.simulate import PanoramaSpec, PanoramaTrack, simulate

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
    track: PanoramaTrack, frames: np.ndarray, window_seconds: float = 0.0, keep_sink: bool = False
) -> np.ndarray:
    spec = track.spec
    rooms = [render(track, balls=False)]
    for k in range(1, ALTERNATE_ROOMS + 1):
        other = simulate(PanoramaSpec(spec.script, spec.seed + k * _ALTERNATE_SEED_STEP, spec.seconds))
        rooms.append(render(other, balls=False))
    versions = unit_versions(track, window_seconds, keep_sink)
    units = np.mod(track.camera_x[:, None] + np.arange(VIEW), ROOM_WIDTH) // CELL  # [T, 64]
    column_version = np.take_along_axis(versions, units, axis=1)  # [T, 64]
    out = rooms[0].copy()
    for k in range(1, len(rooms)):
        t, x = np.nonzero(column_version == k)
        out[t, :, x] = rooms[k][t, :, x]
    draw_balls(out, track)
    out[~track.lit] = DARK_COLOUR
    return out
