"""Metrics for a free-running video of the panorama world, judged against its prompt script.

The generator is given the script only (no frames), so *what* the room looks like is its own choice: every
metric reads the generated pixels and compares them with the script's instructions, or with the same
video's earlier frames. The script says *when*: where the camera goes, when the lights are off, how the
balls move, when a part of the room comes back into view.

- camera, movers, lighting: `eval.panorama_motion` (whether the video moves as the script says).
- revisits (the memory test): for each revisit of the script (`data.world.panorama.revisits`), the
  generated frame when a unit comes back is compared with the generated frame that last showed it, at the
  unit's place in each view, pixel by pixel as palette colour classes, with the balls masked (the only
  thing the script moves out of sight). A revisit counts only if it *happened in the generated video*:
  both frames lit, the unit left the estimated view or the video went dark in between, and the estimated
  camera came back to the script's place. Error and object permanence are bucketed by delay: fast
  (<= 1.5 s), slow (<= 20 s), beyond.

Every number whose event did not happen is None here and "not applicable" in JSON, the report and the
console: no pan in the script, no revisit made, no ball shown, no lights-off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from contextforcing.data.world.panorama.geometry import (
    BALL_COLOURS,
    BALL_NAMES,
    BUCKETS,
    CELL,
    LATENT_STRIDE,
    LATENTS_PER_SECOND,
    OBJECT_COLOURS,
    OBJECT_MARGIN,
    OBJECT_SIZE,
    ROOM_WIDTH,
    ROWS,
    VIEW,
    latent_end_frame,
    panel_colours,
)
from contextforcing.data.world.panorama.revisits import Revisit, track_revisits
from contextforcing.data.world.panorama.simulate import PanoramaTrack
from contextforcing.eval.memory_score import (
    MIN_COMPARED,
    MemoryScore,
    PlaceMatcher,
    RevisitMatch,
    memory_score,
    video_sightings,
)
from contextforcing.eval.panorama_motion import (
    CAMERA_TOLERANCE,
    CameraScore,
    LightingScore,
    MoverScore,
    camera_score,
    dark_frames,
    latent_steps,
    lighting_score,
    mover_score,
)
from contextforcing.eval.world_metrics import check_matches, nearest_colour

PALETTE_TOLERANCE = 40.0  # RGB distance within which a pixel counts as a legal colour
MIN_OBJECT_PIXELS = 30  # of a 12x12 object window: below this, the cell holds no object
BALL_MASK_DILATE = 1  # px around ball pixels left out of revisit comparisons (codec/mp4 blur at its edge)
PSNR_CAP = 99.0  # dB reported for identical regions
NOT_APPLICABLE = "not applicable"


class ColourClasses:
    """Nearest legal colour of a palette: the 3 wall colours, the 6 object colours, the 2 balls."""

    def __init__(self, palette: str):
        names = (
            [f"wall{i}" for i in range(3)] + [f"object:{n}" for n in OBJECT_COLOURS] + [f"ball:{n}" for n in BALL_NAMES]
        )
        colours = np.concatenate(
            [
                panel_colours(palette),
                np.array(list(OBJECT_COLOURS.values()), np.uint8),
                np.array([BALL_COLOURS[n] for n in BALL_NAMES], np.uint8),
            ]
        ).astype(np.float32)
        self.names, self.colours = names, colours
        self.objects = np.array([names.index(f"object:{n}") for n in OBJECT_COLOURS])
        self.balls = np.array([names.index(f"ball:{n}") for n in BALL_NAMES])

    def classify(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class index [T, H, W] uint8 and the RGB distance to that colour [T, H, W]."""
        return nearest_colour(frames, self.colours)


# --------------------------------------------------------------------------------------------- revisits
def _wrap_distance(d: float) -> float:
    return abs((d + ROOM_WIDTH / 2) % ROOM_WIDTH - ROOM_WIDTH / 2)


def revisit_happened(r: Revisit, estimated_x: np.ndarray, dark_latent: np.ndarray) -> str | None:
    """Why a script revisit did not happen in the generated video, or None if it did."""
    if dark_latent[r.seen_latent] or dark_latent[r.back_latent]:
        return "not shown lit"
    between = slice(r.seen_latent + 1, r.back_latent)
    went_dark = r.dark and bool(dark_latent[between].any())
    screen = np.mod(r.x_before - (estimated_x[between] - estimated_x[r.seen_latent]), ROOM_WIDTH)
    left = r.left_view and bool((screen > VIEW - CELL).any())
    if not (went_dark or left):
        return "never out of sight"
    moved = estimated_x[r.back_latent] - estimated_x[r.seen_latent]
    if _wrap_distance(moved - (r.x_before - r.x_after)) > CAMERA_TOLERANCE:
        return "camera did not come back"
    return None


def _region(x: int) -> slice:
    return slice(x, x + CELL)


def _objects(classes: np.ndarray, masked: np.ndarray, colours: ColourClasses) -> dict[int, int | None]:
    """Per row of a unit's region (64 x 16): the object colour found there (None: no object); rows a ball
    covers are left out (absent from the dict)."""
    found = {}
    window = slice(OBJECT_MARGIN, OBJECT_MARGIN + OBJECT_SIZE)
    for row in range(ROWS):
        rows = slice(row * CELL + OBJECT_MARGIN, row * CELL + OBJECT_MARGIN + OBJECT_SIZE)
        if masked[rows, window].any():
            continue
        cell = classes[rows, window]
        counts = np.array([(cell == k).sum() for k in colours.objects])
        found[row] = int(counts.argmax()) if counts.max() >= MIN_OBJECT_PIXELS else None
    return found


REVISIT_FIELDS = ("error", "mae", "psnr", "ssim", "objects_before", "objects_kept", "permanence")


def compare_revisit(frames, classes, r: Revisit, colours: ColourClasses) -> dict:
    """Error, mean absolute difference, PSNR and SSIM (the field's numbers for a revisited view against its
    earlier appearance), and permanence of the unit's region when back, against before. Ball pixels are left
    out (PSNR, error) or made equal in both (SSIM); a region mostly ball-coloured is not compared (None)."""
    b, a = r.frame_before, r.frame_after
    cb, ca = classes[b][:, _region(r.x_before)], classes[a][:, _region(r.x_after)]
    balls = np.isin(cb, colours.balls) | np.isin(ca, colours.balls)
    masked = dilate_frames(balls[None], BALL_MASK_DILATE)[0]
    keep = ~masked
    pb = frames[b][:, _region(r.x_before)].astype(np.int16)
    pa = frames[a][:, _region(r.x_after)].astype(np.int16)
    before, after = _objects(cb, masked, colours), _objects(ca, masked, colours)
    held = [row for row, colour in before.items() if colour is not None and row in after]
    kept = sum(after[row] == before[row] for row in held)
    comparable = keep.mean() >= MIN_COMPARED
    return {
        "error": float(np.mean(cb[keep] != ca[keep])) if comparable else None,
        "mae": float(np.abs(pb - pa)[keep].mean() / 255.0) if comparable else None,
        "psnr": _psnr(pb[keep], pa[keep]) if comparable else None,
        "ssim": _ssim(pb, np.where(masked[..., None], pb, pa)) if comparable else None,
        "objects_before": len(held),
        "objects_kept": int(kept),
        "permanence": kept / len(held) if held else None,
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 pixel sets; identical sets give PSNR_CAP (JSON has no infinity)."""
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, float(10 * np.log10(255.0**2 / mse)))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, scikit-image's: 7x7 windows, colour channels averaged) of two uint8 regions."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a.astype(np.uint8), b.astype(np.uint8), channel_axis=-1, data_range=255))


def dilate_frames(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation of masks [N, H, W] in their two last axes, without wrapping at the borders."""
    out = mask.copy()
    for axis in (1, 2):
        grown = out.copy()
        for r in range(1, radius + 1):
            lo, hi = [slice(None)] * 3, [slice(None)] * 3
            lo[axis], hi[axis] = slice(r, None), slice(None, -r)
            grown[tuple(lo)] |= out[tuple(hi)]
            grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


@dataclass
class BucketScore:
    revisits: int  # in the script
    made: int  # that happened in the generated video
    error: float | None  # mean over those made
    mae: float | None
    psnr: float | None  # dB, of the revisited region against its earlier appearance (the field's number)
    ssim: float | None
    permanence: float | None  # over made revisits with an object before
    error_other_views: float | None  # over made revisits of units the sink did not show

    @property
    def made_rate(self) -> float | None:
        return self.made / self.revisits if self.revisits else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def bucket_scores(rows: list[dict]) -> dict[str, BucketScore]:
    out = {}
    for bucket in BUCKETS:
        mine = [r for r in rows if r["bucket"] == bucket]
        made = [r for r in mine if r["made"]]
        out[bucket] = BucketScore(
            revisits=len(mine),
            made=len(made),
            error=_mean(r["error"] for r in made),
            mae=_mean(r["mae"] for r in made),
            psnr=_mean(r["psnr"] for r in made),
            ssim=_mean(r["ssim"] for r in made),
            permanence=_mean(r["permanence"] for r in made),
            error_other_views=_mean(r["error"] for r in made if not r["in_sink"]),
        )
    return out


# -------------------------------------------------------------------------------------------- the views
DRIFT_SHARE = 0.15  # drift compares the first and the last 15% of the video (HeliosBench's protocol)


@dataclass
class ViewScores:
    """What the views hold over time: objects per view against the truth's, and drift (last 15% minus first 15%
    of the lit latent frames) of palette fidelity and of objects per view."""

    objects_per_view: float | None  # mean over lit latent frames, per full view (4 x 4 cells)
    truth_objects_per_view: float | None
    palette_drift: float | None  # palette fidelity, last 15% minus first 15% (negative: the video decays)
    objects_drift: float | None  # objects per view, last 15% minus first 15%
    curve_t: list[float] = field(default_factory=list)  # seconds, per lit latent frame (plots)
    objects_curve: list[float] = field(default_factory=list)


def objects_in_view(classes: np.ndarray, colours: ColourClasses, camera_x: int) -> float:
    """Cells of one frame's class map [H, W] holding an object, per full view: the cells on the room's grid
    (where the camera at `camera_x` puts them) wholly in view, each read like a revisit's (`_objects`)."""
    first = (-int(camera_x)) % CELL
    starts = range(first, VIEW - CELL + 1, CELL)
    found = 0
    for x in starts:
        region = classes[:, x : x + CELL]
        found += sum(c is not None for c in _objects(region, np.zeros_like(region, bool), colours).values())
    return found * (VIEW // CELL) / len(starts)


def _objects_per_latent(classes, colours, track: PanoramaTrack, dark_latent) -> tuple[np.ndarray, np.ndarray]:
    """The lit latent frames and the objects per view each shows."""
    lit = np.flatnonzero(~dark_latent)
    ends = latent_end_frame(lit)
    counts = np.array([objects_in_view(classes[f], colours, track.camera_x[f]) for f in ends])
    return lit, counts


def _drift(values: np.ndarray) -> float | None:
    n = int(round(DRIFT_SHARE * len(values)))
    return float(values[-n:].mean() - values[:n].mean()) if n >= 1 and len(values) >= 2 * n else None


def view_scores(classes, nearest, dark_latent, colours, track: PanoramaTrack, truth_objects) -> ViewScores:
    lit, counts = _objects_per_latent(classes, colours, track, dark_latent)
    palette = (nearest[latent_end_frame(lit)] <= PALETTE_TOLERANCE).mean((1, 2)) if lit.size else np.zeros(0)
    return ViewScores(
        objects_per_view=float(counts.mean()) if counts.size else None,
        truth_objects_per_view=truth_objects,
        palette_drift=_drift(palette),
        objects_drift=_drift(counts),
        curve_t=(lit / LATENTS_PER_SECOND).tolist(),
        objects_curve=counts.tolist(),
    )


# ---------------------------------------------------------------------------------------------- summary
HEADLINE = (  # (key, label, higher is better)
    ("memory_score", "memory score (1: the truth through the codec, 0: chance)", True),
    *((f"memory_{b}", f"memory score ({b})", True) for b in BUCKETS),
    ("memory_pan_beyond_fast", "memory score (camera came back, beyond the fast memory)", True),
    ("camera_pans", "camera obeyed (pans)", True),
    ("camera_holds", "camera obeyed (holds)", True),
    ("movers", "mover motion obeyed", True),
    ("lighting", "lighting obeyed", True),
)


@dataclass
class PanoramaScores:
    camera: CameraScore
    buckets: dict[str, BucketScore]
    movers: MoverScore
    lighting: LightingScore
    palette: float | None  # fraction of lit pixels within PALETTE_TOLERANCE of a legal colour
    revisits: list[dict]
    memory: MemoryScore
    views: ViewScores

    def headline(self) -> dict[str, float | None]:
        """The numbers the benchmark is judged by (see HEADLINE for which way is better)."""
        out = {"memory_score": self.memory.overall}
        out.update({f"memory_{b}": self.memory.buckets[b] for b in BUCKETS})
        out["memory_pan_beyond_fast"] = self.memory.pan_beyond_fast
        out.update({"camera_pans": self.camera.pans, "camera_holds": self.camera.holds})
        out.update({"movers": self.movers.obeyed, "lighting": self.lighting.lighting})
        return out

    def to_json(self) -> dict:
        """JSON-ready, every missing number written as "not applicable"."""
        data = {
            "headline": self.headline(),
            "memory": self.memory.to_json(),
            "camera": asdict(self.camera),
            "revisit_buckets": {b: dict(asdict(s), made_rate=s.made_rate) for b, s in self.buckets.items()},
            "movers": asdict(self.movers),
            "lighting": asdict(self.lighting),
            "views": asdict(self.views),
            "palette": self.palette,
            "revisits": self.revisits,
        }
        return not_applicable(data)


def not_applicable(obj):
    """None -> "not applicable", recursively (the JSON edge of the Python scores)."""
    if isinstance(obj, dict):
        return {k: not_applicable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [not_applicable(v) for v in obj]
    return NOT_APPLICABLE if obj is None else obj


def palette_fidelity(nearest: np.ndarray, dark: np.ndarray, stride: int = LATENT_STRIDE) -> float | None:
    lit = np.flatnonzero(~dark)[::stride]
    return float((nearest[lit] <= PALETTE_TOLERANCE).mean()) if lit.size else None


@dataclass
class VideoRevisits:
    """Where a video's camera went and what it showed at each revisit of its script (the measurements every
    revisit number is built from)."""

    revisits: list[Revisit]
    why_not: list[str | None]  # None: the revisit happened in the video
    matches: list[RevisitMatch]
    estimated_x: np.ndarray
    dark_latent: np.ndarray


def video_revisits(frames: np.ndarray, classes: np.ndarray, colours: "ColourClasses", track: PanoramaTrack):
    """The revisits of the script as this video shows them, and the video's camera (see `VideoRevisits`)."""
    dark = dark_frames(frames)
    dark_latent = dark[latent_end_frame(np.arange(track.n_latents))]
    camera, estimated_x = camera_score(latent_steps(frames, dark, track.n_latents), track)
    balls = dilate_frames(np.isin(classes, colours.balls), BALL_MASK_DILATE)
    matcher = PlaceMatcher(classes, balls, latent_end_frame, video_sightings(estimated_x, dark_latent))
    revisits = track_revisits(track)
    why_not = [revisit_happened(r, estimated_x, dark_latent) for r in revisits]
    matches = [matcher.match(r, w is None) for r, w in zip(revisits, why_not)]
    return VideoRevisits(revisits, why_not, matches, estimated_x, dark_latent), camera, dark


@dataclass
class Reference:
    """What a video's numbers are relative to, from the world alone: the ground truth's revisit matches through
    the panorama codec (`memory_score`'s denominator) and the exact truth's objects per view."""

    matches: list[RevisitMatch]
    objects_per_view: float | None


_REFERENCE: dict = {}  # world -> its Reference (the last world asked for: scoring goes world by world)


def reference_for(track: PanoramaTrack) -> Reference:
    """The `Reference` of a world (computed once per world and process)."""
    key = (track.spec.script.to_jsonl(), track.seed, track.n_frames)
    if key not in _REFERENCE:
        from contextforcing.codecs.world import PANORAMA_PATH, load_world_codec
        from contextforcing.data.world.panorama.render import render

        exact = render(track)
        coded = load_world_codec(PANORAMA_PATH).round_trip(exact)
        colours = ColourClasses(track.palette)
        matches = video_revisits(coded, colours.classify(coded)[0], colours, track)[0].matches
        dark_latent = dark_frames(exact)[latent_end_frame(np.arange(track.n_latents))]
        _, counts = _objects_per_latent(colours.classify(exact)[0], colours, track, dark_latent)
        _REFERENCE.clear()
        _REFERENCE[key] = Reference(matches, float(counts.mean()) if counts.size else None)
    return _REFERENCE[key]


def panorama_scores(
    frames: np.ndarray,
    track: PanoramaTrack,
    video_name: str = "video",
    reference: Reference | None = None,
) -> PanoramaScores:
    """All panorama metrics of `frames` (uint8 [T, 64, 64, 3]) against the world's script, relative to
    `reference` (default: `reference_for(track)`)."""
    check_matches(frames, track, video_name)
    colours = ColourClasses(track.palette)
    classes, nearest = colours.classify(frames)
    seen, camera, dark = video_revisits(frames, classes, colours, track)
    reference = reference_for(track) if reference is None else reference
    rows = [
        revisit_row(frames, classes, colours, r, why_not, match, truth)
        for r, why_not, match, truth in zip(seen.revisits, seen.why_not, seen.matches, reference.matches)
    ]
    return PanoramaScores(
        camera=camera,
        buckets=bucket_scores(rows),
        movers=mover_score(classes, dark, frames, track, colours.balls),
        lighting=lighting_score(seen.dark_latent, track),
        palette=palette_fidelity(nearest, dark),
        revisits=rows,
        memory=memory_score(seen.revisits, seen.matches, reference.matches),
        views=view_scores(classes, nearest, seen.dark_latent, colours, track, reference.objects_per_view),
    )


def revisit_row(frames, classes, colours, r: Revisit, why_not, match: RevisitMatch, truth: RevisitMatch) -> dict:
    """One revisit of the script in JSON terms: what it is, whether and how it happened, what it scored."""
    row = {
        "unit": r.unit,
        "seen_latent": r.seen_latent,
        "back_latent": r.back_latent,
        "delay_seconds": r.delay_seconds,
        "bucket": r.bucket,
        "cause": r.cause,
        "in_sink": r.in_sink,
        "made": why_not is None,
        "not_made_because": why_not,
        **match.to_json(),
        "truth_memory": truth.score,
    }
    if why_not is not None:
        return row | {k: None for k in REVISIT_FIELDS}
    row.update(compare_revisit(frames, classes, r, colours))
    if row["error"] is None:
        row["not_scored_because"] = "the region is mostly ball-coloured in one of the two frames"
    return row


def panorama_metrics(frames: np.ndarray, track: PanoramaTrack, video_name: str = "video") -> dict:
    """`panorama_scores(...).to_json()`, plus what the video was judged against."""
    scores = panorama_scores(frames, track, video_name)
    return {"world": "panorama", "seed": track.seed, "script": track.spec.script.to_json(), **scores.to_json()}
