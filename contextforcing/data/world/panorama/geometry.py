"""The panorama world's fixed geometry, time base and vocabulary of colours.

A cylindrical room `ROOM_WIDTH` px around and one view (64 px) high, seen through the 64x64 camera.
Everything is aligned with the codec's 8-px latent cells and the DiT's 16-px tokens (`world` preset,
patch 2x2): the wall is a row of 8-px panels (one latent column each), objects sit in 16-px cells
(one token each), the camera pans by one latent column per latent frame, and the balls are token-sized.

Time is Wan's clock (16 fps, 4 latent frames per second, the first latent frame is one pixel frame, the
rest four each), with prompt switches on chunk boundaries (3 latent frames = 0.75 s), exactly where
`generate --prompts` places them.
"""

from __future__ import annotations

import numpy as np

from contextforcing.config import PRESETS
from contextforcing.data.world.style import (
    CELL,
    FPS,
    FRAME_SIZE,
    LATENT_STRIDE,
    OBJECT_COLOURS,
    OBJECT_MARGIN,
    OBJECT_SIZE,
    PALETTES,
    frames_for_seconds,
    latents_for_frames,
)
from contextforcing.data.world.track import FAST_MEMORY_SECONDS, SLOW_MEMORY_SECONDS

_VIDEO = PRESETS["world"].video
CHUNK_LATENTS: int = _VIDEO.chunk_frames  # latent frames per prompt chunk
LATENTS_PER_SECOND: float = _VIDEO.latent_fps
CHUNK_SECONDS: float = CHUNK_LATENTS / LATENTS_PER_SECOND  # 0.75 s

# --- the room
VIEW = FRAME_SIZE  # the camera sees 64 x 64 px
COLUMN = _VIDEO.vae_stride_hw  # 8 px: one latent column, one wall panel
ROOM_VIEWS = 4
ROOM_WIDTH = ROOM_VIEWS * VIEW  # 256 px around; x wraps
N_PANELS = ROOM_WIDTH // COLUMN  # 32 wall panels
ROWS = FRAME_SIZE // CELL  # 4 rows of 16-px object cells
UNITS = ROOM_WIDTH // CELL  # 16 cell columns ("units": what a revisit is counted in)
N_ROOM_CELLS = ROWS * UNITS  # 64 cells; cell = row * UNITS + unit
PANEL_MAX_RUN = 2  # at most this many equal neighbouring panels: no flat stretch makes a shift ambiguous

# --- the camera: one latent column per latent frame, spread evenly over the latent's pixel frames
PAN_PX_PER_LATENT = COLUMN
PAN_PX_PER_FRAME = PAN_PX_PER_LATENT // LATENT_STRIDE  # 2 px
PAN_PX_PER_SECOND = PAN_PX_PER_LATENT * LATENTS_PER_SECOND  # 32 px/s: once around the room in 8 s

# --- objects (the occlusion world's shapes and colours, in 16-px cells)
INITIAL_OBJECTS_PER_VIEW = (1, 3)
MAX_OBJECTS = 16

# --- balls (the movers): token-sized discs in room coordinates, bouncing between floor and ceiling
BALL_RADIUS = 7.0  # a 14-px disc inside one 16-px token
BALL_SPEEDS: dict[str, float] = {"slow": 16.0, "fast": 32.0}  # px/s, vertically and (if stated) horizontally
BLACK_BALL_SPEED = BALL_SPEEDS["slow"]  # the black ball bounces in place at this speed
BALL_COLOURS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (20, 20, 20)}
BALL_NAMES = tuple(BALL_COLOURS)
BALL_Y_RANGE = (BALL_RADIUS, FRAME_SIZE - BALL_RADIUS)  # centre between ceiling and floor

DARK_COLOUR = (0, 0, 0)  # lights off: the view is black

# revisits are bucketed by the memory spans of the occlusion world (Context Forcing: fast memory 6 latent
# frames = 1.5 s, the slow memory's span about 20 s); a revisit needs the view out of sight for more than
# one chunk
REVISIT_MIN_SECONDS = CHUNK_SECONDS  # revisits are > 0.75 s apart
BUCKETS = ("fast", "slow", "beyond")

__all__ = [
    "BALL_COLOURS",
    "BALL_NAMES",
    "BALL_RADIUS",
    "BALL_SPEEDS",
    "BALL_Y_RANGE",
    "BLACK_BALL_SPEED",
    "BUCKETS",
    "CELL",
    "CHUNK_LATENTS",
    "CHUNK_SECONDS",
    "COLUMN",
    "DARK_COLOUR",
    "FAST_MEMORY_SECONDS",
    "FPS",
    "FRAME_SIZE",
    "INITIAL_OBJECTS_PER_VIEW",
    "LATENTS_PER_SECOND",
    "LATENT_STRIDE",
    "MAX_OBJECTS",
    "N_PANELS",
    "N_ROOM_CELLS",
    "OBJECT_COLOURS",
    "OBJECT_MARGIN",
    "OBJECT_SIZE",
    "PALETTES",
    "PAN_PX_PER_FRAME",
    "PAN_PX_PER_LATENT",
    "PAN_PX_PER_SECOND",
    "PANEL_MAX_RUN",
    "REVISIT_MIN_SECONDS",
    "ROOM_VIEWS",
    "ROOM_WIDTH",
    "ROWS",
    "SLOW_MEMORY_SECONDS",
    "UNITS",
    "VIEW",
    "bucket_for_latents",
    "frame_latent",
    "frames_for_seconds",
    "latent_end_frame",
    "latents_for_frames",
    "panel_colours",
    "wrap",
]


def wrap(x):
    """Room x coordinate(s) folded into [0, ROOM_WIDTH)."""
    return np.mod(x, ROOM_WIDTH)


def frame_latent(n_frames: int) -> np.ndarray:
    """The latent frame each pixel frame belongs to: frame 0 -> 0, frames 4k-3 .. 4k -> k."""
    f = np.arange(n_frames)
    return np.where(f == 0, 0, (f + LATENT_STRIDE - 1) // LATENT_STRIDE)


def latent_end_frame(latent):
    """The last pixel frame of a latent frame (where the camera sits on the latent grid)."""
    return LATENT_STRIDE * np.asarray(latent) if isinstance(latent, np.ndarray) else LATENT_STRIDE * latent


def bucket_for_latents(gap: int) -> str:
    """fast: the last view is still in the fast memory; slow: within the slow memory's span; beyond."""
    seconds = gap / LATENTS_PER_SECOND
    if seconds <= FAST_MEMORY_SECONDS:
        return "fast"
    return "slow" if seconds <= SLOW_MEMORY_SECONDS else "beyond"


def panel_colours(palette: str) -> np.ndarray:
    """The three wall colours of a palette, uint8 [3, 3] (the occlusion world's two background colours and
    its turn-away wall colour)."""
    return np.array(PALETTES[palette], np.uint8)
