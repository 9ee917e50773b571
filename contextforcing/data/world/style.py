"""The world's fixed visual vocabulary: frame geometry, time base, colours, shapes, backgrounds.

Everything here is a named constant so renderer, dataset and metrics agree on one definition.

Geometry: 64x64 RGB frames. The embedded model's codec has spatial stride 8, so 64x64 gives an 8x8
latent grid (the `tiny` preset's latent size). Objects live on a 4x4 grid of 16-px cells (2x2 latent
cells each), background patterns have 8-px periods aligned with the latent grid: a codec with stride 8
sees clean, aligned blocks, and metrics can detect objects per cell without any learned detector.
32x32 would leave a 4x4 latent grid, too coarse to tell sixteen object places apart.
"""

from __future__ import annotations

import numpy as np

from contextforcing.config import VideoConfig

# --- time: Wan's clock (16 pixel fps; one latent frame = 4 pixel frames, the first latent = 1 frame)
_WAN_VIDEO = VideoConfig()
FPS: int = _WAN_VIDEO.fps
LATENT_STRIDE: int = _WAN_VIDEO.vae_stride_t
LATENTS_PER_SECOND: float = _WAN_VIDEO.latent_fps

# --- geometry
FRAME_SIZE = 64  # height == width
CELL = 16  # object grid cell
GRID = FRAME_SIZE // CELL  # 4x4 cells
N_CELLS = GRID * GRID
OBJECT_SIZE = 12  # objects are 12x12 inside their 16x16 cell (2-px margin)
OBJECT_MARGIN = (CELL - OBJECT_SIZE) // 2
PATTERN = 8  # background stripe/check width, one latent cell
SPRITE_RADIUS = 3.5  # the moving sprite is a small disc (~38 px)

# --- colours (RGB uint8). Object colours are saturated, backgrounds muted, so they never get confused.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "magenta": (210, 50, 210),
    "cyan": (40, 210, 220),
}
OBJECT_COLOUR_NAMES = tuple(OBJECT_COLOURS)


def object_json(slot: int, shape: int, colour: int, cell: int, origin_yx: tuple[int, int], box_key: str) -> dict:
    """One object of a scene state as annotation JSON (both worlds): what it is, its cell and its box under
    `box_key`, from `origin_yx`, the top-left pixel of its box in the world's frame of reference (the occlusion
    world's frame, the panorama world's whole room)."""
    name = OBJECT_COLOUR_NAMES[colour]
    y, x = origin_yx
    return {
        "id": slot,
        "shape": SHAPES[shape],
        "colour": name,
        "rgb": list(OBJECT_COLOURS[name]),
        "cell": cell,
        box_key: [int(x), int(y), OBJECT_SIZE, OBJECT_SIZE],
    }


SPRITE_COLOUR = (255, 255, 255)
BLACKOUT_COLOUR = (0, 0, 0)
CURTAIN_COLOUR = (130, 20, 30)

# palette name -> (background 1, background 2, the wall seen when the camera is turned away)
PALETTES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]] = {
    "warm": ((160, 115, 80), (120, 80, 55), (85, 55, 40)),
    "cool": ((95, 125, 160), (65, 90, 125), (45, 60, 90)),
    "forest": ((85, 120, 85), (55, 85, 55), (40, 60, 40)),
    "dusk": ((120, 95, 140), (85, 65, 105), (60, 45, 75)),
    "sand": ((195, 180, 140), (160, 145, 105), (130, 115, 85)),
    "slate": ((135, 135, 135), (95, 95, 95), (65, 65, 65)),
}
STYLES = ("plain", "striped", "columned", "checkered")
SHAPES = ("square", "disc", "triangle")
SPRITE_PATHS = ("circle", "figure8", "bounce")
OCCLUDERS = ("blackout", "curtain", "turn-away")  # "turn-away": the camera pans to another wall


def frames_for_seconds(seconds: float) -> int:
    """Pixel frames of a `seconds` clip, exactly as the generator makes them (whole chunks of latents)."""
    return _WAN_VIDEO.pixel_frames_for(_WAN_VIDEO.latent_frames_for(seconds))


def latents_for_frames(n_frames: int) -> int:
    return 1 + (n_frames - 1) // LATENT_STRIDE


def latent_start_frame(latent: int | np.ndarray) -> int | np.ndarray:
    """First pixel frame of a latent frame: latent 0 is frame 0, latent k>0 covers frames 4k-3 .. 4k."""
    return (
        np.maximum(0, LATENT_STRIDE * np.asarray(latent) - (LATENT_STRIDE - 1))
        if isinstance(latent, np.ndarray)
        else max(0, LATENT_STRIDE * latent - (LATENT_STRIDE - 1))
    )


def shape_templates() -> np.ndarray:
    """Boolean masks [len(SHAPES), OBJECT_SIZE, OBJECT_SIZE], pixel-exact and shared by renderer and metrics."""
    half = OBJECT_SIZE / 2
    yy, xx = np.mgrid[0:OBJECT_SIZE, 0:OBJECT_SIZE] + 0.5
    square = np.ones((OBJECT_SIZE, OBJECT_SIZE), bool)
    disc = (yy - half) ** 2 + (xx - half) ** 2 <= half**2
    # apex at the top centre, base along the bottom row
    triangle = np.abs(xx - half) <= yy / 2
    return np.stack([square, disc, triangle])


SHAPE_MASKS = shape_templates()


def cell_origin(cell: int | np.ndarray) -> tuple:
    """Top-left pixel (y, x) of the object drawn in `cell` (row-major over the 4x4 grid)."""
    cell = np.asarray(cell)
    return (cell // GRID) * CELL + OBJECT_MARGIN, (cell % GRID) * CELL + OBJECT_MARGIN


def background_image(style: str, palette: str) -> np.ndarray:
    """The prompt-given background [H, W, 3] uint8; what drift is measured against."""
    bg1, bg2, _ = PALETTES[palette]
    yy, xx = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE] // PATTERN
    if style == "plain":
        second = np.zeros_like(yy, bool)
    elif style == "striped":
        second = yy % 2 == 1
    elif style == "columned":
        second = xx % 2 == 1
    else:  # checkered
        second = (yy + xx) % 2 == 1
    return np.where(second[..., None], np.array(bg2, np.uint8), np.array(bg1, np.uint8)).astype(np.uint8)


def palette_table(palette: str) -> tuple[np.ndarray, dict[str, int]]:
    """Every colour a frame of this palette may legally contain, [K, 3] int16, and the index of each role.

    Roles: bg1, bg2, away, blackout, curtain, sprite, then one per object colour (object:<name>).
    """
    bg1, bg2, away = PALETTES[palette]
    roles = {
        "bg1": bg1,
        "bg2": bg2,
        "away": away,
        "blackout": BLACKOUT_COLOUR,
        "curtain": CURTAIN_COLOUR,
        "sprite": SPRITE_COLOUR,
    }
    roles.update({f"object:{name}": rgb for name, rgb in OBJECT_COLOURS.items()})
    return np.array(list(roles.values()), np.int16), {name: i for i, name in enumerate(roles)}
