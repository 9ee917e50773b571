"""Vectorised rendering of a `PanoramaTrack` into uint8 frames [T, 64, 64, 3].

Layers, back to front: the wall panels, the objects of the frame's scene state, the balls (in front of
objects), then the lights (off: the whole view black). Each distinct scene state's room image (64 x 256)
is drawn once; a frame is a 64-px window of it (about 1 ms per second of video).
"""

from __future__ import annotations

import numpy as np

from contextforcing.data.world.panorama.geometry import (
    BALL_COLOURS,
    BALL_NAMES,
    BALL_RADIUS,
    CELL,
    COLUMN,
    DARK_COLOUR,
    FRAME_SIZE,
    OBJECT_COLOURS,
    OBJECT_MARGIN,
    OBJECT_SIZE,
    ROOM_WIDTH,
    UNITS,
    VIEW,
    panel_colours,
)
from contextforcing.data.world.panorama.simulate import CELL_INDEX, COLOUR, PRESENT, SHAPE, PanoramaTrack
from contextforcing.data.world.style import SHAPE_MASKS

_OBJECT_RGB = np.array(list(OBJECT_COLOURS.values()), np.uint8)
_BALL_RGB = np.array([BALL_COLOURS[n] for n in BALL_NAMES], np.uint8)
_BALL_WINDOW = int(np.ceil(2 * BALL_RADIUS)) + 2  # pixels spanned by a ball disc, plus rounding


def cell_origin(cell: int) -> tuple[int, int]:
    """Top-left room pixel (y, x) of the 12x12 object drawn in `cell`."""
    row, unit = divmod(int(cell), UNITS)
    return row * CELL + OBJECT_MARGIN, unit * CELL + OBJECT_MARGIN


def wall_image(panels: np.ndarray, palette: str) -> np.ndarray:
    """The bare wall [64, ROOM_WIDTH, 3]: one colour per 8-px panel."""
    columns = panel_colours(palette)[np.repeat(panels, COLUMN)]  # [W, 3]
    return np.broadcast_to(columns[None], (FRAME_SIZE, ROOM_WIDTH, 3)).copy()


def room_image(track: PanoramaTrack, state: np.ndarray) -> np.ndarray:
    """The whole room [64, ROOM_WIDTH, 3] with one scene state's objects."""
    image = wall_image(track.panels, track.palette)
    for row in state:
        if row[PRESENT]:
            y, x = cell_origin(row[CELL_INDEX])
            window = image[y : y + OBJECT_SIZE, x : x + OBJECT_SIZE]
            window[SHAPE_MASKS[row[SHAPE]]] = _OBJECT_RGB[row[COLOUR]]
    return image


def ball_pixels(centres: np.ndarray, camera_x: np.ndarray):
    """Frame index, rows and columns of every view pixel a ball disc covers; centres [T, 2] in room px
    (NaN: no ball). The disc is tested at pixel centres, so sub-pixel motion is exact."""
    ok = ~np.isnan(centres[:, 0])
    t = np.flatnonzero(ok)
    # screen x of the centre, with the wrap chosen so the disc is nearest the view
    sx = np.mod(centres[t, 0] - camera_x[t] + ROOM_WIDTH / 2 - VIEW / 2, ROOM_WIDTH) - ROOM_WIDTH / 2 + VIEW / 2
    sy = centres[t, 1]
    offsets = np.arange(_BALL_WINDOW)
    cols = np.floor(sx - BALL_RADIUS).astype(int)[:, None, None] + offsets[None, None, :]
    rows = np.floor(sy - BALL_RADIUS).astype(int)[:, None, None] + offsets[None, :, None]
    dx, dy = cols + 0.5 - sx[:, None, None], rows + 0.5 - sy[:, None, None]
    disc = (dx * dx + dy * dy <= BALL_RADIUS**2) & (cols >= 0) & (cols < VIEW) & (rows >= 0) & (rows < FRAME_SIZE)
    rows, cols = np.broadcast_arrays(rows, cols)
    tt = np.broadcast_to(t[:, None, None], disc.shape)
    return tt[disc], rows[disc], cols[disc]


def render(track: PanoramaTrack, balls: bool = True) -> np.ndarray:
    """All frames of the video, uint8 [T, 64, 64, 3]."""
    # each room image with its first view appended, so every (wrapped) view is one plain slice
    rooms = [
        np.concatenate([image, image[:, :VIEW]], axis=1)
        for image in map(lambda state: room_image(track, state), track.objects)
    ]
    frames = np.empty((track.n_frames, FRAME_SIZE, VIEW, 3), np.uint8)
    for t, (state, x) in enumerate(zip(track.frame_state, np.mod(track.camera_x, ROOM_WIDTH))):
        frames[t] = rooms[state][:, x : x + VIEW]
    if balls:
        draw_balls(frames, track)
    frames[~track.lit] = DARK_COLOUR
    return frames


def draw_balls(frames: np.ndarray, track: PanoramaTrack) -> None:
    """Paint the balls into `frames` (in place), the black one over the white one."""
    for ball in range(len(BALL_NAMES)):
        t, rows, cols = ball_pixels(track.balls[:, ball], track.camera_x)
        frames[t, rows, cols] = _BALL_RGB[ball]
