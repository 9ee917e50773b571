"""Revisits: when a part of the room comes back into view after being out of sight, and for how long.

The unit of a revisit is a cell column (16 px wide, the full view high: one token column of the DiT with
the wall panels and the four object cells in it). A unit is *seen* at a latent frame when it is wholly in
view and the lights are on at that latent frame's last pixel frame (where the camera sits on the latent
grid). A revisit is a latent frame k at which a unit is seen again, having last been seen at k' < k with
k - k' > one chunk (more than 0.75 s): it left the view, or the lights were off, or both.

The delay k - k' says which memory must have kept the unit: the fast memory (<= 1.5 s), the slow memory's
span (<= 20 s) or neither (beyond). `in_sink` marks units the attention sink (the first chunk) showed:
a memory that keeps only the first frames can serve those revisits and no others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contextforcing.data.world.panorama.geometry import (
    CELL,
    CHUNK_LATENTS,
    LATENTS_PER_SECOND,
    ROOM_WIDTH,
    UNITS,
    VIEW,
    bucket_for_latents,
    latent_end_frame,
)

MIN_GAP_LATENTS = CHUNK_LATENTS + 1  # more than 0.75 s apart


@dataclass(frozen=True)
class Revisit:
    unit: int  # cell column of the room, 0 .. UNITS - 1
    seen_latent: int  # k': the last latent frame that showed it before
    back_latent: int  # k: the latent frame that shows it again
    left_view: bool  # the camera turned it out of view in between
    dark: bool  # the lights were off in between
    in_sink: bool  # the first chunk showed it
    x_before: int  # its left edge in the view at k' (px)
    x_after: int  # ... and at k

    @property
    def gap(self) -> int:
        return self.back_latent - self.seen_latent

    @property
    def delay_seconds(self) -> float:
        return self.gap / LATENTS_PER_SECOND

    @property
    def bucket(self) -> str:
        return bucket_for_latents(self.gap)

    @property
    def frame_before(self) -> int:
        return int(latent_end_frame(self.seen_latent))

    @property
    def frame_after(self) -> int:
        return int(latent_end_frame(self.back_latent))

    @property
    def cause(self) -> str:
        return "pan+lights" if self.left_view and self.dark else ("pan" if self.left_view else "lights")


def unit_screen_x(latent_camera: np.ndarray) -> np.ndarray:
    """Left edge in the view [L, UNITS] of every unit at every latent frame, in [0, ROOM_WIDTH)."""
    return np.mod(np.arange(UNITS)[None, :] * CELL - np.asarray(latent_camera)[:, None], ROOM_WIDTH)


def in_view(latent_camera: np.ndarray) -> np.ndarray:
    """[L, UNITS]: the unit is wholly in view."""
    return unit_screen_x(latent_camera) <= VIEW - CELL


def find_revisits(latent_camera: np.ndarray, latent_lit: np.ndarray) -> list[Revisit]:
    """Every revisit of every unit, in time order (see the module docstring)."""
    visible = in_view(latent_camera)
    seen = visible & np.asarray(latent_lit, bool)[:, None]
    screen = unit_screen_x(latent_camera)
    sink = visible[:CHUNK_LATENTS].any(0)
    found = []
    for unit in range(UNITS):
        latents = np.flatnonzero(seen[:, unit])
        for before, after in zip(latents, latents[1:]):
            if after - before < MIN_GAP_LATENTS:
                continue
            between = slice(before + 1, after)
            found.append(
                Revisit(
                    unit,
                    int(before),
                    int(after),
                    left_view=not visible[between, unit].all(),
                    dark=not np.asarray(latent_lit[between], bool).all(),
                    in_sink=bool(sink[unit]),
                    x_before=int(screen[before, unit]),
                    x_after=int(screen[after, unit]),
                )
            )
    return sorted(found, key=lambda r: (r.back_latent, r.unit))


def track_revisits(track) -> list[Revisit]:
    """The revisits of a `PanoramaTrack`."""
    return find_revisits(track.latent_camera, track.latent_lit)


def seen_units(track) -> np.ndarray:
    """[L, UNITS]: the unit is wholly in view and lit at the latent frame (what a frame shows of the room)."""
    return in_view(track.latent_camera) & np.asarray(track.latent_lit, bool)[:, None]


def memory_cells(track, target: list[int], memory: list[int], recent: list[int], cell_px: int) -> np.ndarray:
    """[len(target), H, W] bool over the latent cells (`cell_px` pixels square) of the `target` latent frames:
    the cells showing a unit that some `memory` frame showed and no `recent` frame did, so that only the memory
    (not the recent frames) can restore it. A memory that retrieves places does better there; one that does not
    cannot."""
    seen = seen_units(track)
    in_memory = seen[memory].any(0) if memory else np.zeros(UNITS, bool)
    in_recent = seen[recent].any(0) if recent else np.zeros(UNITS, bool)
    needed = in_memory & ~in_recent
    screen = unit_screen_x(track.latent_camera)
    size = VIEW // cell_px
    out = np.zeros((len(target), size, size), bool)
    for i, k in enumerate(target):
        for unit in np.flatnonzero(seen[k] & needed):
            first = screen[k, unit] // cell_px
            out[i, :, first : first + CELL // cell_px] = True
    return out


def turned(track, px: int):
    """The same world with the camera turned `px` further round the room at every frame: the same room, lights,
    balls and events seen from elsewhere (other views of the same room, at the same moments)."""
    import dataclasses

    return dataclasses.replace(track, camera_x=track.camera_x + px)
