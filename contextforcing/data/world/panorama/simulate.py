"""Simulating the panorama world: from (script, seed, seconds) to exact per-frame ground truth.

The seed draws the room (the wall's panel colours, the objects in it, where the balls start) and the
events; the script drives the camera, the lights and the white ball's motion, chunk by chunk. A
`PanoramaTrack` holds compact per-frame arrays; frames are rendered from it (`render.py`).

- Camera: the view's left edge in room pixels (unwrapped; the room wraps every ROOM_WIDTH px). On a
  latent frame whose chunk says `pan left`/`pan right`, it moves one latent column (8 px), spread evenly
  over the latent frame's 4 pixel frames (2 px each), so every latent frame ends on the latent grid.
- Lights: on or off per latent frame (a cut; off is a black view). The balls keep moving in the dark.
- Events (appear / move / recolour an object) happen after the first chunk and only in view: in cells
  wholly in view and lit from the last frame before the change to the end of the next latent frame, so the
  generator always sees the change happen; nothing changes out of sight except where the balls are.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from contextforcing.data.world.panorama.geometry import (
    BALL_SPEEDS,
    BALL_Y_RANGE,
    BLACK_BALL_SPEED,
    CELL,
    CHUNK_LATENTS,
    FPS,
    INITIAL_OBJECTS_PER_VIEW,
    LATENT_STRIDE,
    MAX_OBJECTS,
    N_PANELS,
    PAN_PX_PER_FRAME,
    PAN_PX_PER_LATENT,
    PANEL_MAX_RUN,
    ROOM_WIDTH,
    ROWS,
    UNITS,
    VIEW,
    frame_latent,
    frames_for_seconds,
    latent_end_frame,
    latents_for_frames,
)
from contextforcing.data.world.panorama.script import CAMERA_STEP, HEADING_SIGN, PanoramaPrompt, PanoramaScript
from contextforcing.data.world.style import OBJECT_COLOUR_NAMES, SHAPES
from contextforcing.errors import UserError

# columns of `PanoramaTrack.objects`
PRESENT, CELL_INDEX, COLOUR, SHAPE = range(4)
EVENT_TYPES = ("appear", "move", "recolour")
EVENT_PROBABILITY = 1 / 12  # per eligible latent frame: about one event per 3 s in view
EVENT_MIN_GAP = 2  # latent frames between events
WHITE, BLACK = 0, 1  # ball index
_ROOM_STREAM, _EVENT_STREAM = 1, 2


@dataclass(frozen=True)
class PanoramaSpec:
    """Everything a panorama video is a deterministic function of."""

    script: PanoramaScript
    seed: int
    seconds: float

    def validate(self) -> "PanoramaSpec":
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise UserError(f"world seed must be a non-negative integer, got {self.seed!r}")
        if not self.seconds > 0:
            raise UserError(f"--seconds must be positive, got {self.seconds}")
        self.script.chunk_prompts(self.n_chunks)  # raises if the script runs past the end
        return self

    @property
    def n_frames(self) -> int:
        return frames_for_seconds(self.seconds)

    @property
    def n_latents(self) -> int:
        return latents_for_frames(self.n_frames)

    @property
    def n_chunks(self) -> int:
        return self.n_latents // CHUNK_LATENTS


@dataclass(frozen=True)
class Event:
    latent: int
    type: str  # appear | move | recolour
    slot: int  # object slot
    old: int  # cell (move), colour index (recolour), -1 (appear)
    new: int  # cell (appear, move), colour index (recolour)

    @property
    def frame(self) -> int:
        return max(0, LATENT_STRIDE * self.latent - (LATENT_STRIDE - 1))


@dataclass
class PanoramaTrack:
    """Per-frame ground truth of one panorama video (T frames, L latent frames)."""

    spec: PanoramaSpec
    panels: np.ndarray  # uint8 [N_PANELS]: wall colour index (0..2 of the palette) of each 8-px panel
    objects: np.ndarray  # int8 [S, MAX_OBJECTS, 4]: present, cell, colour, shape of each scene state
    frame_state: np.ndarray  # int16 [T]: index into `objects`
    camera_x: np.ndarray  # int32 [T]: the view's left edge in room px (unwrapped)
    lit: np.ndarray  # bool [T]
    balls: np.ndarray  # float32 [T, 2, 2]: (x, y) centre of the white and black ball in room px; NaN if absent
    events: list[Event] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return len(self.frame_state)

    @property
    def n_latents(self) -> int:
        return latents_for_frames(self.n_frames)

    @property
    def palette(self) -> str:
        return self.spec.script.palette

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def latent_camera(self) -> np.ndarray:
        """Camera x at the last pixel frame of each latent frame (a multiple of 8)."""
        return self.camera_x[latent_end_frame(np.arange(self.n_latents))]

    @property
    def latent_lit(self) -> np.ndarray:
        return self.lit[latent_end_frame(np.arange(self.n_latents))]

    def prompts(self) -> list[PanoramaPrompt]:
        """The prompt in effect at each chunk."""
        return self.spec.script.chunk_prompts(self.spec.n_chunks)

    def chunk_prompts(self) -> list[str]:
        """The text a generator is conditioned on at each chunk (canonical prompts)."""
        return [p.canonical for p in self.prompts()]

    def state_at(self, frame: int) -> np.ndarray:
        return self.objects[self.frame_state[frame]]


def _stream(seed: int, which: int, palette: str) -> np.random.Generator:
    """The seed's random streams; the room depends on (seed, palette) only, not on the camera script."""
    return np.random.default_rng([int(seed), which, zlib.crc32(palette.encode())])


def _max_cyclic_run(values: np.ndarray) -> int:
    doubled = np.concatenate([values, values])
    run = best = 1
    for a, b in zip(doubled, doubled[1:]):
        run = run + 1 if a == b else 1
        best = max(best, run)
    return min(best, len(values))


def _views_unique(values: np.ndarray) -> bool:
    width = VIEW // (ROOM_WIDTH // N_PANELS)
    doubled = np.concatenate([values, values[:width]])
    windows = {tuple(doubled[i : i + width]) for i in range(len(values))}
    return len(windows) == len(values)


def _panels(rng: np.random.Generator) -> np.ndarray:
    """Aperiodic wall: no run longer than PANEL_MAX_RUN and every view-wide window unique, so any camera
    shift is unambiguous."""
    while True:
        panels = rng.integers(3, size=N_PANELS).astype(np.uint8)
        if _max_cyclic_run(panels) <= PANEL_MAX_RUN and _views_unique(panels):
            return panels


def _initial_objects(rng: np.random.Generator) -> np.ndarray:
    """1-3 objects per view-wide stretch of the room, so every view has something to remember."""
    state = np.zeros((MAX_OBJECTS, 4), np.int8)
    slot = 0
    units_per_view = VIEW // CELL
    for view in range(ROOM_WIDTH // VIEW):
        count = int(rng.integers(INITIAL_OBJECTS_PER_VIEW[0], INITIAL_OBJECTS_PER_VIEW[1] + 1))
        units = view * units_per_view + rng.choice(units_per_view, count, replace=True)
        rows = rng.choice(ROWS, count, replace=False)
        for unit, row in zip(units, rows):
            state[slot] = (1, row * UNITS + unit, rng.integers(len(OBJECT_COLOUR_NAMES)), rng.integers(len(SHAPES)))
            slot += 1
    return state


def _camera(prompts: list[PanoramaPrompt], n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame camera x and the per-latent step (-1, 0, 1) of each latent frame."""
    n_latents = latents_for_frames(n_frames)
    step = np.array([CAMERA_STEP[prompts[k // CHUNK_LATENTS].camera] for k in range(n_latents)], np.int32)
    step[0] = 0  # latent 0 is a single frame: nothing moves within it
    latent_x = np.cumsum(step) * PAN_PX_PER_LATENT
    lat = frame_latent(n_frames)
    within = np.arange(n_frames) - np.maximum(0, LATENT_STRIDE * lat - (LATENT_STRIDE - 1))  # 0..3
    prev = latent_x[np.maximum(lat - 1, 0)]
    x = np.where(lat == 0, 0, prev + PAN_PX_PER_FRAME * (within + 1) * step[lat])
    return x.astype(np.int32), step


def _bounce(position: np.ndarray) -> np.ndarray:
    """Fold an unbounded vertical position into the floor-to-ceiling range (a perfect bounce)."""
    lo, hi = BALL_Y_RANGE
    span = hi - lo
    t = np.mod(position - lo, 2 * span)
    return lo + np.where(t <= span, t, 2 * span - t)


def _ball_paths(rng, prompts: list[PanoramaPrompt], n_frames: int) -> np.ndarray:
    """Centres [T, 2, 2] of both balls (NaN where a ball does not exist); drawn even if absent, so a ball's
    start does not depend on whether the other exists."""
    starts = [(rng.uniform(0, ROOM_WIDTH), rng.uniform(*BALL_Y_RANGE), rng.choice((-1.0, 1.0))) for _ in range(2)]
    lat_chunk = frame_latent(n_frames) // CHUNK_LATENTS
    vx = np.zeros(n_frames)
    vy = np.zeros(n_frames)
    for f in range(1, n_frames):  # per-chunk velocities, frame 0 is the start
        white = prompts[lat_chunk[f]].white
        if white is not None:
            vx[f] = HEADING_SIGN[white.heading] * BALL_SPEEDS[white.speed]
            vy[f] = BALL_SPEEDS[white.speed]
    out = np.full((n_frames, 2, 2), np.nan, np.float32)
    white_exists, black_exists = prompts[0].balls
    velocities = {WHITE: (vx, vy), BLACK: (np.zeros(n_frames), np.r_[0.0, np.full(n_frames - 1, BLACK_BALL_SPEED)])}
    for ball, exists in ((WHITE, white_exists), (BLACK, black_exists)):
        if not exists:
            continue
        x0, y0, direction = starts[ball]
        bx, by = velocities[ball]
        out[:, ball, 0] = np.mod(x0 + np.cumsum(bx) / FPS, ROOM_WIDTH)
        out[:, ball, 1] = _bounce(y0 + direction * np.cumsum(by) / FPS)
    return out


def units_in_view(camera_x: int) -> np.ndarray:
    """Room cell columns wholly inside a view whose left edge is at `camera_x`."""
    first = -(-int(camera_x) // CELL)  # ceil
    last = (int(camera_x) + VIEW) // CELL  # exclusive
    return np.mod(np.arange(first, last), UNITS)


def _steady_units(camera_x: np.ndarray, lit: np.ndarray, frames: range) -> set[int] | None:
    """Units wholly in view and lit in every one of `frames` (None if any frame is dark)."""
    if not lit[frames.start : frames.stop].all():
        return None
    units = None
    for f in frames:
        now = set(units_in_view(camera_x[f]).tolist())
        units = now if units is None else units & now
    return units


def _apply_event(rng, state: np.ndarray, units: list[int]) -> tuple[np.ndarray, tuple] | None:
    """One random event inside `units`; None when no event fits."""
    cells = [row * UNITS + u for u in units for row in range(ROWS)]
    present = np.flatnonzero(state[:, PRESENT])
    occupied = set(state[present, CELL_INDEX].tolist())
    free = [c for c in cells if c not in occupied]
    here = [int(s) for s in present if state[s, CELL_INDEX] in cells]
    kinds = [
        k
        for k, ok in (("appear", free and len(present) < MAX_OBJECTS), ("move", here and free), ("recolour", here))
        if ok
    ]
    if not kinds:
        return None
    kind = kinds[rng.integers(len(kinds))]
    state = state.copy()
    if kind == "appear":
        slot = int(np.flatnonzero(state[:, PRESENT] == 0)[0])
        cell = int(rng.choice(free))
        state[slot] = (1, cell, rng.integers(len(OBJECT_COLOUR_NAMES)), rng.integers(len(SHAPES)))
        return state, (kind, slot, -1, cell)
    slot = int(rng.choice(here))
    if kind == "move":
        old, new = int(state[slot, CELL_INDEX]), int(rng.choice(free))
        state[slot, CELL_INDEX] = new
    else:
        old = int(state[slot, COLOUR])
        new = int(rng.choice([c for c in range(len(OBJECT_COLOUR_NAMES)) if c != old]))
        state[slot, COLOUR] = new
    return state, (kind, slot, old, new)


def _schedule_events(rng, initial: np.ndarray, camera_x: np.ndarray, lit: np.ndarray, n_latents: int):
    """Scene states per latent frame and the events, all in view (see the module docstring)."""
    n_frames = len(camera_x)
    states, events = [initial], []
    latent_state = np.zeros(n_latents, np.int16)
    last = -EVENT_MIN_GAP
    for k in range(CHUNK_LATENTS, n_latents - 1):  # the first chunk (the attention sink) shows the room as it starts
        if rng.random() >= EVENT_PROBABILITY or k - last < EVENT_MIN_GAP:
            continue
        # in view and lit from the frame before the change (so the change itself is seen) to the next latent's end
        frames = range(LATENT_STRIDE * (k - 1), min(n_frames, LATENT_STRIDE * (k + 1) + 1))
        units = _steady_units(camera_x, lit, frames)
        if not units:
            continue
        applied = _apply_event(rng, states[-1], sorted(units))
        if applied is None:
            continue
        states.append(applied[0])
        latent_state[k:] = len(states) - 1
        events.append(Event(k, *applied[1]))
        last = k
    return np.stack(states), latent_state, events


def simulate(spec: PanoramaSpec) -> PanoramaTrack:
    """The world's exact per-frame ground truth; a deterministic function of `spec`."""
    spec.validate()
    prompts = spec.script.chunk_prompts(spec.n_chunks)
    n_frames, n_latents = spec.n_frames, spec.n_latents
    room = _stream(spec.seed, _ROOM_STREAM, spec.script.palette)
    panels = _panels(room)
    initial = _initial_objects(room)
    balls = _ball_paths(room, prompts, n_frames)
    camera_x, _ = _camera(prompts, n_frames)
    lat = frame_latent(n_frames)
    lit = np.array([prompts[k // CHUNK_LATENTS].lights_on for k in range(n_latents)])[lat]
    objects, latent_state, events = _schedule_events(
        _stream(spec.seed, _EVENT_STREAM, spec.script.palette), initial, camera_x, lit, n_latents
    )
    return PanoramaTrack(
        spec=spec,
        panels=panels,
        objects=objects,
        frame_state=latent_state[lat].astype(np.int16),
        camera_x=camera_x,
        lit=lit,
        balls=balls,
        events=events,
    )
