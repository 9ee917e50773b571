"""Rule-based "generators" with known flaws, used to prove the world metrics measure what they claim.

- `forgetful`: renders the ground truth, but after every occlusion longer than `window_seconds` it
  re-draws the scene at random (a random permutation of cells, colours and shapes, kept from then on,
  so later events still happen, to the re-drawn objects). It models a generator whose memory spans
  `window_seconds`.
- `other_seed_after`: the ground truth up to the end of one occlusion, another seed's video after it.
- `noisy`: the ground truth plus Gaussian pixel noise.
- `frozen_sprite`: the ground truth with the sprite stopped where it starts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from contextforcing.data.world.render import render
from contextforcing.data.world.style import N_CELLS, OBJECT_COLOUR_NAMES, SHAPES
from contextforcing.data.world.track import CELL, COLOUR, SHAPE, WorldSpec, WorldTrack, simulate


def _redraw_start(track: WorldTrack, occ) -> int:
    """First frame after the occlusion's fully hidden stretch: where the re-drawn scene starts showing."""
    full = np.flatnonzero(track.coverage[occ.start_frame : occ.end_frame] >= 1)
    return occ.start_frame + (int(full[-1]) + 1 if full.size else 0)


def forgetful(track: WorldTrack, window_seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    segment = np.zeros(track.n_frames, np.int64)  # which re-draw each frame belongs to
    maps = [(np.arange(N_CELLS), np.arange(len(OBJECT_COLOUR_NAMES)), np.arange(len(SHAPES)))]
    for occ in track.occlusions():
        if occ.seconds > window_seconds:
            cells, colours, shapes = maps[-1]
            maps.append(
                (
                    rng.permutation(N_CELLS)[cells],
                    rng.permutation(len(OBJECT_COLOUR_NAMES))[colours],
                    rng.permutation(len(SHAPES))[shapes],
                )
            )
            segment[_redraw_start(track, occ) :] = len(maps) - 1
    keys, frame_state = np.unique(np.stack([track.frame_state, segment], 1), axis=0, return_inverse=True)
    objects = track.objects[keys[:, 0]].copy()
    for k, (_, seg) in enumerate(keys):
        cells, colours, shapes = maps[seg]
        objects[k, :, CELL] = cells[objects[k, :, CELL]]
        objects[k, :, COLOUR] = colours[objects[k, :, COLOUR]]
        objects[k, :, SHAPE] = shapes[objects[k, :, SHAPE]]
    return render(dataclasses.replace(track, objects=objects, frame_state=frame_state.reshape(-1).astype(np.int16)))


def other_seed_after(track: WorldTrack, occlusion_index: int, other_seed: int) -> np.ndarray:
    spec = track.spec
    other = simulate(WorldSpec(spec.prompt, other_seed, spec.seconds, spec.occlusion_seconds))
    switch = track.occlusions()[occlusion_index].end_frame
    frames = render(track)
    frames[switch:] = render(other)[switch:]
    return frames


def noisy(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, frames.shape)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def frozen_sprite(track: WorldTrack) -> np.ndarray:
    still = np.repeat(track.sprite_xy[:1], track.n_frames, axis=0)
    return render(dataclasses.replace(track, sprite_xy=still))
