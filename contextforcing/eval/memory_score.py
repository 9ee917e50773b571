"""`memory_score`: does a video show a part of the room it saw before as it looked then, better than chance?

A revisit (data/world/panorama/revisits.py) compares the returning part of the room (a unit: a 16-px cell
column, the view high) with how the same video last showed it: `error` is the share of its pixels whose colour
class changed. On its own that number rewards videos that remember nothing: a constant image never changes, a
room that repeats every 32 px looks the same wherever the camera turns, blur merges classes. So each revisit is
also compared with places it is *not*, in the same video, at other camera offsets and times (the null):

- if the video showed other places in the last `FAST_MEMORY_SECONDS` before the revisit (what a memoryless
  generator still sees, and could copy): the closest of them (a repeating room always has one alike);
- otherwise (a long blackout): the mean over every other place it had shown, each as last seen (what a
  generator that draws a random plausible place would match).

The revisit scores `1 - error / null` clipped to [0, 1]: 1 for a perfect match with a clearly different null,
0 for a match no better than chance. Where the null itself is under `PLACES_ALIKE` (the video cannot tell
places apart: a constant image) the revisit scores 0. A revisit of the script that did not happen in the video
(the camera did not come back, or the view was not shown lit) scores 0, as forgotten: every row is scored on
every revisit of the script.

`memory_score` of a set of revisits is the sum of the video's revisit scores over the sum of the ground truth's
through the panorama codec (the best a model decoded by it can show) on the same revisits: 1 is the truth
through the codec, and a generator that redraws every returning place scores about 0 (the forgetting oracle,
docs/evaluation.md). It is reported over all revisits, by delay bucket and by cause (the camera came back, the
lights came back, both); "not applicable" where the truth scores 0 on the set (no such revisit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from contextforcing.data.world.panorama.geometry import BUCKETS, CELL, LATENTS_PER_SECOND, ROOM_WIDTH, VIEW
from contextforcing.data.world.panorama.revisits import Revisit
from contextforcing.data.world.track import FAST_MEMORY_SECONDS

RECENT_LATENTS = int(round(FAST_MEMORY_SECONDS * LATENTS_PER_SECOND))  # what the fast memory still holds
PLACES_ALIKE = 0.05  # a null under this: other places differ from this one in under 5% of pixels
MIN_COMPARED = 0.5  # share of a region's pixels that must be free of ball colours to compare it
CAUSES = ("pan", "lights", "pan+lights")


@dataclass(frozen=True)
class Sighting:
    """A place as the video showed it: the 16-px window at screen `x` of latent frame `latent`, which the video's
    own (estimated) camera puts at room x `place`."""

    place: int
    latent: int
    x: int


WINDOW_STEP = VIEW // 8  # places are 16-px windows every 8 px (a latent column), screen and room alike


def video_sightings(estimated_x: np.ndarray, dark_latent: np.ndarray) -> list[list[Sighting]]:
    """Per latent frame, the windows the video shows lit, each with the room place its camera puts there."""
    out = []
    for k, (camera, dark) in enumerate(zip(estimated_x, dark_latent)):
        xs = range(0, VIEW - CELL + 1, WINDOW_STEP) if not dark else ()
        out.append([Sighting(int(round(camera + x)) % ROOM_WIDTH, k, x) for x in xs])
    return out


def _apart(place: int, unit: int) -> bool:
    """The window at room x `place` does not overlap the unit."""
    d = abs((place - unit * CELL + ROOM_WIDTH / 2) % ROOM_WIDTH - ROOM_WIDTH / 2)
    return d >= CELL


def _region(classes: np.ndarray, frame: int, x: int) -> np.ndarray:
    return classes[frame][:, x : x + CELL]


def mismatch(a: np.ndarray, b: np.ndarray, ball_a: np.ndarray, ball_b: np.ndarray) -> float | None:
    """Share of the pixels, ball colours in neither region, whose colour class differs (None: too few left)."""
    keep = ~(ball_a | ball_b)
    if keep.mean() < MIN_COMPARED:
        return None
    return float(np.mean(a[keep] != b[keep]))


@dataclass(frozen=True)
class RevisitMatch:
    """How one revisit of the script fared in one video."""

    made: bool
    error: float | None  # against the place's own last appearance (None: not made, or not comparable)
    null: float | None  # against places it is not (see the module docstring)
    score: float  # in [0, 1]; 0 when not made or not comparable

    def to_json(self) -> dict:
        return {"match_error": self.error, "null_error": self.null, "memory": self.score}


class PlaceMatcher:
    """Compares a video's revisits with its own earlier views of the same place and of places it is not."""

    def __init__(self, classes: np.ndarray, ball_pixels: np.ndarray, frame_of_latent, sightings: list[list[Sighting]]):
        self.classes, self.balls, self.frame_of, self.sightings = classes, ball_pixels, frame_of_latent, sightings

    def _at(self, latent: int, x: int) -> tuple[np.ndarray, np.ndarray]:
        frame = self.frame_of(latent)
        return _region(self.classes, frame, x), _region(self.balls, frame, x)

    def candidates(self, r: Revisit) -> list[Sighting]:
        """Places the revisit is not: every window shown in the last RECENT_LATENTS latent frames, and the last
        showing of each place at the revisit's own screen position (other camera offsets and times)."""
        recent = [s for k in range(max(0, r.back_latent - RECENT_LATENTS), r.back_latent) for s in self.sightings[k]]
        here: dict[int, Sighting] = {}
        for k in range(r.back_latent):
            here.update((s.place, s) for s in self.sightings[k] if s.x == r.x_after)
        return [s for s in recent + list(here.values()) if _apart(s.place, r.unit)]

    def null(self, r: Revisit, after: tuple[np.ndarray, np.ndarray]) -> float | None:
        """The revisit's chance level: how well the closest place it is not matches it."""
        values = [
            mismatch(after[0], o[0], after[1], o[1]) for o in (self._at(s.latent, s.x) for s in self.candidates(r))
        ]
        values = [v for v in values if v is not None]
        return min(values) if values else None

    def match(self, r: Revisit, made: bool) -> RevisitMatch:
        if not made:
            return RevisitMatch(False, None, None, 0.0)
        before, after = self._at(r.seen_latent, r.x_before), self._at(r.back_latent, r.x_after)
        error = mismatch(before[0], after[0], before[1], after[1])
        null = self.null(r, after)
        if error is None or null is None or null < PLACES_ALIKE:
            return RevisitMatch(True, error, null, 0.0)
        return RevisitMatch(True, error, null, float(np.clip(1.0 - error / null, 0.0, 1.0)))


@dataclass
class MemoryScore:
    """memory_score over all revisits, by delay bucket, by cause, and beyond the fast memory (None: the truth
    scores 0 on the set, e.g. no such revisit)."""

    overall: float | None
    buckets: dict[str, float | None]
    causes: dict[str, float | None]
    beyond_fast: float | None  # the slow and beyond buckets: what only the sink and the slow memory can serve
    pan_beyond_fast: float | None  # ... of those, where the camera came back (no blackout to hold a view through)
    video_sum: float
    truth_sum: float

    def to_json(self) -> dict:
        return {
            "memory_score": self.overall,
            "buckets": self.buckets,
            "causes": self.causes,
            "beyond_fast": self.beyond_fast,
            "pan_beyond_fast": self.pan_beyond_fast,
            "video_sum": self.video_sum,
            "truth_sum": self.truth_sum,
        }


def _ratio(video: list[float], truth: list[float]) -> float | None:
    total = float(np.sum(truth)) if truth else 0.0
    return float(np.sum(video)) / total if total > 0 else None


def pooled_memory_score(rows: Iterable[dict], truth_key: str = "truth_memory") -> float | None:
    """memory_score pooled over revisit rows of any number of videos (as metrics.json writes them: the video's
    score under "memory", the truth's under `truth_key`): the video's scores summed over the truth's; None where
    the truth scores nothing (no such revisit)."""
    rows = list(rows)
    return _ratio([r["memory"] for r in rows], [r[truth_key] for r in rows])


def memory_score(revisits: list[Revisit], video: list[RevisitMatch], truth: list[RevisitMatch]) -> MemoryScore:
    """The video's revisit scores against the truth's (through the codec), on the same revisits of the script."""

    def over(keep) -> float | None:
        chosen = [i for i, r in enumerate(revisits) if keep(r)]
        return _ratio([video[i].score for i in chosen], [truth[i].score for i in chosen])

    return MemoryScore(
        overall=over(lambda r: True),
        buckets={b: over(lambda r, b=b: r.bucket == b) for b in BUCKETS},
        causes={c: over(lambda r, c=c: r.cause == c) for c in CAUSES},
        beyond_fast=over(lambda r: r.bucket != "fast"),
        pan_beyond_fast=over(lambda r: r.bucket != "fast" and r.cause == "pan"),
        video_sum=float(sum(m.score for m in video)),
        truth_sum=float(sum(m.score for m in truth)),
    )
