"""Vectorised rendering of a `WorldTrack` into uint8 frames [T, 64, 64, 3].

Layers, back to front: the prompt's background, the sprite (it passes *behind* objects, so objects are
never cut and can be detected whole), the objects of the frame's scene state, then the occluder.
Each distinct scene state is drawn once and indexed per frame, and the sprite touches only a small window
per frame, so a 30 s clip costs a few milliseconds.
"""

from __future__ import annotations

import numpy as np

from contextforcing.data.world.style import (
    BLACKOUT_COLOUR,
    CURTAIN_COLOUR,
    FRAME_SIZE,
    OBJECT_COLOURS,
    OBJECT_SIZE,
    OCCLUDERS,
    PALETTES,
    SHAPE_MASKS,
    SPRITE_COLOUR,
    SPRITE_RADIUS,
    background_image,
    cell_origin,
)
from contextforcing.data.world.track import CELL, COLOUR, PRESENT, SHAPE, WorldTrack

_OBJECT_RGB = np.array(list(OBJECT_COLOURS.values()), np.uint8)


def object_layer(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB [H, W, 3] and mask [H, W] of one scene state's objects (later slots on top)."""
    rgb = np.zeros((FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    mask = np.zeros((FRAME_SIZE, FRAME_SIZE), bool)
    for row in state:
        if not row[PRESENT]:
            continue
        y, x = cell_origin(int(row[CELL]))
        shape = SHAPE_MASKS[row[SHAPE]]
        window = (slice(y, y + OBJECT_SIZE), slice(x, x + OBJECT_SIZE))
        rgb[window][shape] = _OBJECT_RGB[row[COLOUR]]
        mask[window] |= shape
    return rgb, mask


_SPRITE_WINDOW = int(np.ceil(2 * SPRITE_RADIUS)) + 1  # pixels spanned by the sprite disc, plus rounding


def sprite_pixels(sprite_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns [T, k, k] of a small window around each sprite, and which of them the disc covers."""
    corner = np.floor(sprite_xy - SPRITE_RADIUS).astype(int)  # (x, y) of the window's corner
    offsets = np.arange(_SPRITE_WINDOW)
    cols = np.clip(corner[:, 0, None] + offsets, 0, FRAME_SIZE - 1)[:, None, :]
    rows = np.clip(corner[:, 1, None] + offsets, 0, FRAME_SIZE - 1)[:, :, None]
    dx = cols + 0.5 - sprite_xy[:, 0, None, None]
    dy = rows + 0.5 - sprite_xy[:, 1, None, None]
    rows, cols = np.broadcast_arrays(rows, cols)
    return rows, cols, dx * dx + dy * dy <= SPRITE_RADIUS**2


def _apply_occluders(frames: np.ndarray, track: WorldTrack) -> None:
    away = np.array(PALETTES[track.prompt.palette][2], np.uint8)
    for occ in track.occlusions():
        view = frames[occ.start_frame : occ.end_frame]  # a view: edits land in `frames`
        cover = track.coverage[occ.start_frame : occ.end_frame]
        full = cover >= 1
        if occ.kind == "blackout":
            view[full] = BLACKOUT_COLOUR
        elif occ.kind == "curtain":  # drops from the top
            rows = np.round(cover * FRAME_SIZE).astype(int)
            hidden = np.arange(FRAME_SIZE)[None, :] < rows[:, None]
            view[hidden] = CURTAIN_COLOUR
        else:  # turn-away: the view pans left and a plain wall slides in from the right
            view[full] = away
            for i in np.flatnonzero(~full):  # the few ramp frames
                shift = int(round(float(cover[i]) * FRAME_SIZE))
                view[i, :, : FRAME_SIZE - shift] = view[i, :, shift:].copy()
                view[i, :, FRAME_SIZE - shift :] = away


def render(track: WorldTrack) -> np.ndarray:
    """All frames of the world video, uint8 [T, H, W, 3]."""
    background = background_image(track.prompt.style, track.prompt.palette)
    layers = [object_layer(state) for state in track.objects]
    state_images = np.stack([np.where(mask[..., None], rgb, background) for rgb, mask in layers])
    object_masks = np.stack([mask for _, mask in layers])
    frames = state_images[track.frame_state]
    # the sprite goes behind objects: paint it only where the frame's state has no object
    rows, cols, disc = sprite_pixels(track.sprite_xy)
    t = np.broadcast_to(np.arange(track.n_frames)[:, None, None], rows.shape)
    disc &= ~object_masks[track.frame_state[:, None, None], rows, cols]
    frames[t[disc], rows[disc], cols[disc]] = SPRITE_COLOUR
    _apply_occluders(frames, track)
    return frames


def visible_objects(track: WorldTrack, frame: int) -> list[int]:
    """Object slots wholly in view at `frame` (a partly covered object is not listed)."""
    state = track.state_at(frame)
    slots = [int(s) for s in np.flatnonzero(state[:, PRESENT])]
    cover = float(track.coverage[frame])
    if cover == 0:
        return slots
    if cover >= 1 or track.occluder[frame] < 0:
        return []
    kind = OCCLUDERS[track.occluder[frame]]
    hidden = int(round(cover * FRAME_SIZE))
    if kind == "curtain":  # hidden rows [0, hidden)
        return [s for s in slots if cell_origin(int(state[s, CELL]))[0] >= hidden]
    if kind == "turn-away":  # the scene is shifted left by `hidden` columns
        return [s for s in slots if cell_origin(int(state[s, CELL]))[1] >= hidden]
    return []
