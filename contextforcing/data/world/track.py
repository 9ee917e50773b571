"""Simulating a world: from (prompt, seed, seconds) to the exact per-frame ground truth.

A `WorldTrack` holds a handful of compact per-frame arrays (which scene state is shown, how much of the
view is hidden and by what, where the sprite is). Frames are rendered from it (`render.py`), the
annotations and events are derived from it, and dataset shards store it instead of pixels.

Schedule, in latent frames (4 per second, so every change lands on a latent boundary):
  visible 2-5 s  |  occlusion 0.5-60 s  |  visible 2-6 s  |  occlusion ...  |  visible tail
Events (appear, move, recolour) happen only while the view is visible, at least 0.5 s from either end
of the visible stretch, so the generator sees every change and an occlusion's "after" frame shows the
"before" scene again; what changes across an occlusion is only what keeps moving (the sprite's phase).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from contextforcing.data.world.prompts import PromptSpec, parse_prompt
from contextforcing.data.world.style import (
    FPS,
    FRAME_SIZE,
    LATENT_STRIDE,
    LATENTS_PER_SECOND,
    N_CELLS,
    OBJECT_COLOUR_NAMES,
    OCCLUDERS,
    SHAPES,
    SPRITE_PATHS,
    frames_for_seconds,
    latent_start_frame,
    latents_for_frames,
)
from contextforcing.errors import UserError

# --- schedule parameters (seconds)
FIRST_VISIBLE_SECONDS = (2.0, 5.0)  # the first visit: the scene is shown before anything hides it
VISIBLE_GAP_SECONDS = (2.0, 6.0)  # visible stretch after each occlusion (room to measure restoration)
OCCLUSION_SECONDS = (0.5, 60.0)  # log-uniform, so short, mid and long occlusions are all common
EVENT_MARGIN_SECONDS = 0.5  # events stay this far from the ends of a visible stretch
MAX_EVENTS_PER_VISIBLE = 2
INITIAL_OBJECTS = (2, 4)
MAX_OBJECTS = 6
SPRITE_PERIOD_SECONDS = (3.0, 6.0)
RAMP_FRAMES = LATENT_STRIDE  # curtain and turn-away close/open over one latent frame; blackout is a cut

# --- the memory spans occlusions are grouped by (Context Forcing's fast and slow memory)
FAST_MEMORY_SECONDS = 1.5
SLOW_MEMORY_SECONDS = 20.0
BUCKETS = ("short", "mid", "long")

# --- columns of `WorldTrack.objects`
PRESENT, CELL, COLOUR, SHAPE = range(4)
NO_OCCLUDER = -1
EVENT_TYPES = ("appear", "move", "recolour")


def bucket_for(seconds: float) -> str:
    """short: within the fast memory; mid: within the slow memory's span; long: beyond it."""
    if seconds < FAST_MEMORY_SECONDS:
        return "short"
    return "mid" if seconds <= SLOW_MEMORY_SECONDS else "long"


@dataclass(frozen=True)
class WorldSpec:
    """Everything a world video is a deterministic function of."""

    prompt: str
    seed: int
    seconds: float
    occlusion_seconds: tuple[float, ...] | None = None  # forced occlusion lengths, in order (eval worlds)

    def validate(self) -> "WorldSpec":
        parse_prompt(self.prompt)
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise UserError(f"world seed must be a non-negative integer, got {self.seed!r}")
        if not self.seconds > 0:
            raise UserError(f"--seconds must be positive, got {self.seconds}")
        return self


@dataclass(frozen=True)
class Occlusion:
    start_frame: int  # first frame with any part of the view hidden
    end_frame: int  # first fully visible frame after it (== n_frames if the clip ends hidden)
    kind: str

    @property
    def seconds(self) -> float:
        return (self.end_frame - self.start_frame) / FPS

    @property
    def bucket(self) -> str:
        return bucket_for(self.seconds)

    @property
    def before_frame(self) -> int:
        return self.start_frame - 1


@dataclass(frozen=True)
class Event:
    frame: int
    type: str
    object: int
    old: int  # cell (move), colour index (recolour), -1 (appear)
    new: int

    @property
    def time(self) -> float:
        return self.frame / FPS


@dataclass
class WorldTrack:
    """Per-frame ground truth of one world video (T frames)."""

    prompt: PromptSpec
    seed: int
    objects: np.ndarray  # int8 [S, MAX_OBJECTS, 4]: present, cell, colour, shape of each state
    frame_state: np.ndarray  # int16 [T]: index into `objects`
    coverage: np.ndarray  # float32 [T]: hidden fraction of the view, 0 (visible) .. 1 (fully hidden)
    occluder: np.ndarray  # int8 [T]: index into OCCLUDERS, or NO_OCCLUDER
    sprite_xy: np.ndarray  # float32 [T, 2]: sprite centre (x, y) in pixels, also while hidden
    sprite_path: str = ""
    spec: WorldSpec | None = field(default=None)

    @property
    def n_frames(self) -> int:
        return len(self.frame_state)

    @property
    def size(self) -> tuple[int, int]:
        return FRAME_SIZE, FRAME_SIZE

    def state_at(self, frame: int) -> np.ndarray:
        return self.objects[self.frame_state[frame]]

    def occlusions(self) -> list[Occlusion]:
        hidden = self.occluder != NO_OCCLUDER
        edges = np.flatnonzero(np.diff(np.concatenate([[0], hidden.astype(np.int8), [0]])))
        return [Occlusion(int(s), int(e), OCCLUDERS[self.occluder[s]]) for s, e in zip(edges[::2], edges[1::2])]

    def events(self) -> list[Event]:
        found = []
        for frame in np.flatnonzero(np.diff(self.frame_state)) + 1:
            old, new = self.state_at(frame - 1), self.state_at(frame)
            for slot in range(MAX_OBJECTS):
                if new[slot, PRESENT] and not old[slot, PRESENT]:
                    found.append(Event(int(frame), "appear", slot, -1, int(new[slot, CELL])))
                elif new[slot, CELL] != old[slot, CELL] and old[slot, PRESENT]:
                    found.append(Event(int(frame), "move", slot, int(old[slot, CELL]), int(new[slot, CELL])))
                elif new[slot, COLOUR] != old[slot, COLOUR] and old[slot, PRESENT]:
                    found.append(Event(int(frame), "recolour", slot, int(old[slot, COLOUR]), int(new[slot, COLOUR])))
        return found


def world_rng(prompt: PromptSpec, seed: int) -> np.random.Generator:
    """The seed's random stream, also keyed by the prompt so two prompts with one seed differ."""
    return np.random.default_rng([int(seed), zlib.crc32(prompt.canonical.encode())])


def _seconds_to_latents(seconds: float) -> int:
    return int(round(seconds * LATENTS_PER_SECOND))


def _latent_range(rng: np.random.Generator, seconds: tuple[float, float]) -> int:
    return int(rng.integers(_seconds_to_latents(seconds[0]), _seconds_to_latents(seconds[1]) + 1))


def _plan_segments(rng, n_latents: int, forced: tuple[float, ...] | None, spec_text: str):
    """Alternating visible stretches and occlusions, as latent ranges [(start, end), ...]."""
    min_occ = _seconds_to_latents(OCCLUSION_SECONDS[0])
    min_after = _seconds_to_latents(VISIBLE_GAP_SECONDS[0])
    cursor = min(n_latents, _latent_range(rng, FIRST_VISIBLE_SECONDS))
    visible, occlusions = [(0, cursor)], []
    queue = list(forced) if forced is not None else None
    while True:
        room = n_latents - cursor - min_after
        if queue is not None:
            if not queue:
                break
            length = _seconds_to_latents(queue.pop(0))
            if length < min_occ or length > room:
                raise UserError(
                    f"forced occlusion schedule does not fit in {spec_text}: each occlusion needs "
                    f"{OCCLUSION_SECONDS[0]}-{OCCLUSION_SECONDS[1]} s and {VISIBLE_GAP_SECONDS[0]} s visible after it"
                )
        else:
            longest = min(_seconds_to_latents(OCCLUSION_SECONDS[1]), room)
            if longest < min_occ:
                break
            length = int(round(np.exp(rng.uniform(np.log(min_occ), np.log(longest)))))
        occlusions.append((cursor, cursor + length))
        cursor += length
        gap_end = min(n_latents, cursor + _latent_range(rng, VISIBLE_GAP_SECONDS))
        visible.append((cursor, gap_end))
        cursor = gap_end
    if cursor < n_latents:  # the visible tail (also the whole clip when it is shorter than the first visit)
        visible[-1] = (visible[-1][0], n_latents)
    return visible, occlusions


def _initial_state(rng) -> np.ndarray:
    state = np.zeros((MAX_OBJECTS, 4), np.int8)
    count = int(rng.integers(INITIAL_OBJECTS[0], INITIAL_OBJECTS[1] + 1))
    state[:count, PRESENT] = 1
    state[:count, CELL] = rng.choice(N_CELLS, count, replace=False)
    state[:count, COLOUR] = rng.integers(len(OBJECT_COLOUR_NAMES), size=count)
    state[:count, SHAPE] = rng.integers(len(SHAPES), size=count)
    return state


def _apply_event(rng, state: np.ndarray) -> np.ndarray:
    state = state.copy()
    present = np.flatnonzero(state[:, PRESENT])
    free_cells = np.setdiff1d(np.arange(N_CELLS), state[present, CELL])
    kinds = EVENT_TYPES if len(present) < MAX_OBJECTS else EVENT_TYPES[1:]
    kind = kinds[rng.integers(len(kinds))]
    if kind == "appear":
        slot = int(np.flatnonzero(state[:, PRESENT] == 0)[0])
        state[slot] = (1, rng.choice(free_cells), rng.integers(len(OBJECT_COLOUR_NAMES)), rng.integers(len(SHAPES)))
    elif kind == "move":
        slot = rng.choice(present)
        state[slot, CELL] = rng.choice(free_cells)
    else:
        slot = rng.choice(present)
        others = [c for c in range(len(OBJECT_COLOUR_NAMES)) if c != state[slot, COLOUR]]
        state[slot, COLOUR] = rng.choice(others)
    return state


def _schedule_states(rng, visible, n_latents: int):
    """Per-latent state index and the state table, with events inside the visible stretches."""
    margin = _seconds_to_latents(EVENT_MARGIN_SECONDS)
    states = [_initial_state(rng)]
    latent_state = np.zeros(n_latents, np.int16)
    for start, end in visible:
        slots = np.arange(start + margin, end - margin)
        if len(slots) == 0:
            continue
        count = min(len(slots), int(rng.integers(0, MAX_EVENTS_PER_VISIBLE + 1)))
        for latent in np.sort(rng.choice(slots, count, replace=False)):
            states.append(_apply_event(rng, states[-1]))
            latent_state[latent:] = len(states) - 1
    return np.stack(states), latent_state


def _occlusion_frames(rng, prompt: PromptSpec, occlusions, n_frames: int):
    coverage = np.zeros(n_frames, np.float32)
    occluder = np.full(n_frames, NO_OCCLUDER, np.int8)
    for start, end in occlusions:
        kind = prompt.occluder or OCCLUDERS[rng.integers(len(OCCLUDERS))]
        f0, f1 = latent_start_frame(start), min(n_frames, latent_start_frame(end))
        i = np.arange(f1 - f0)
        if kind == "blackout":  # lights off: a cut, fully dark at once
            ramp = np.ones(len(i))
        else:  # closes over the first latent frame, opens over the last one
            ramp = np.minimum(1.0, np.minimum((i + 1) / RAMP_FRAMES, (f1 - f0 - i) / RAMP_FRAMES))
        coverage[f0:f1] = ramp
        occluder[f0:f1] = OCCLUDERS.index(kind)
    return coverage, occluder


SPRITE_ORBIT_RADIUS = 20.0
SPRITE_BOUNCE_RANGE = (8.0, 56.0)


def sprite_positions(path: str, period: float, phase: float, n_frames: int) -> np.ndarray:
    """Sprite centre (x, y) for every frame; it keeps moving while the view is hidden."""
    centre = FRAME_SIZE / 2
    cycles = np.arange(n_frames) / FPS / period + phase
    theta = 2 * np.pi * cycles
    if path == "circle":
        x, y = centre + SPRITE_ORBIT_RADIUS * np.cos(theta), centre + SPRITE_ORBIT_RADIUS * np.sin(theta)
    elif path == "figure8":
        x, y = centre + SPRITE_ORBIT_RADIUS * np.sin(theta), centre + SPRITE_ORBIT_RADIUS / 2 * np.sin(2 * theta)
    else:  # bounce: left-right at constant speed
        triangle = 1 - np.abs(2 * (cycles % 1.0) - 1)
        lo, hi = SPRITE_BOUNCE_RANGE
        x, y = lo + (hi - lo) * triangle, np.full(n_frames, centre)
    return np.stack([x, y], axis=1).astype(np.float32)


def simulate(spec: WorldSpec) -> WorldTrack:
    """The world's exact per-frame ground truth; a deterministic function of `spec`."""
    spec.validate()
    prompt = parse_prompt(spec.prompt)
    rng = world_rng(prompt, spec.seed)
    n_frames = frames_for_seconds(spec.seconds)
    n_latents = latents_for_frames(n_frames)
    sprite_path = prompt.sprite_path or SPRITE_PATHS[rng.integers(len(SPRITE_PATHS))]
    period, phase = rng.uniform(*SPRITE_PERIOD_SECONDS), rng.random()
    visible, occlusions = _plan_segments(rng, n_latents, spec.occlusion_seconds, f"{spec.seconds} s")
    objects, latent_state = _schedule_states(rng, visible, n_latents)
    coverage, occluder = _occlusion_frames(rng, prompt, occlusions, n_frames)
    frame_latent = np.concatenate([[0], (np.arange(1, n_frames) + LATENT_STRIDE - 1) // LATENT_STRIDE])
    return WorldTrack(
        prompt=prompt,
        seed=int(spec.seed),
        objects=objects,
        frame_state=latent_state[frame_latent].astype(np.int16),
        coverage=coverage,
        occluder=occluder,
        sprite_xy=sprite_positions(sprite_path, period, phase, n_frames),
        sprite_path=sprite_path,
        spec=spec,
    )
