"""Metrics that compare a generated world video with the world's ground-truth annotations.

The ground truth supplies *when* things happen (occlusions, their lengths, the sprite's true speed) and
the prompt's palette and background. *What* the scene looks like is read from the generated video's own
pixels: each restoration is judged against the generated frame just before the occlusion, so a model
may draw a different but valid scene at the start; it is only punished for not keeping it.

Pixels are classified to the nearest colour of the prompt's palette (`palette_table`), which makes the
comparisons exact on rendered frames and robust to mp4 compression; objects are detected per 16-px grid
cell, as the world places them.

- restoration: per occlusion with a visible frame after it, the fraction of pixels (sprite excluded)
  whose colour class differs between the last frame before and the first frame after; plus the mean
  absolute pixel difference. Grouped by occlusion bucket: short (< 1.5 s, the fast memory), mid (up to
  20 s, the slow memory's span), long (beyond).
- permanence: of the objects detected before the occlusion, the fraction detected after it in the same
  cell with the same colour.
- drift: mean |frame - prompt background| / 255 over background pixels of visible frames, over time.
- dynamics: does the sprite keep moving? Per 1 s window of visible frames, the sprite's detected speed
  against its true speed.
- fidelity: fraction of pixels within `PALETTE_TOLERANCE` of a legal colour (frames fully visible or
  fully hidden), and the fraction of detected objects whose mask matches a world shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contextforcing.data.world.style import (
    CELL,
    FPS,
    FRAME_SIZE,
    GRID,
    N_CELLS,
    OBJECT_COLOUR_NAMES,
    OBJECT_MARGIN,
    OBJECT_SIZE,
    SHAPE_MASKS,
    background_image,
    palette_table,
)
from contextforcing.data.world.track import BUCKETS, WorldTrack
from contextforcing.errors import UserError

MIN_OBJECT_PIXELS = 30  # of a 12x12 object window: below this, the cell holds no object
MIN_SPRITE_PIXELS = 4
SPRITE_DILATE = 1  # px around the sprite ignored by restoration/drift (mp4 blur at its edge)
PALETTE_TOLERANCE = 40.0  # RGB distance within which a pixel counts as a legal colour
SHAPE_MIN_IOU = 0.7  # a detected object is a valid shape if its mask matches a template this well
SPRITE_MOVING_RATIO = 0.5  # a window is "moving" when the detected speed is >= half the true speed
MIN_VISIBLE_PER_WINDOW = FPS // 2  # windows with fewer fully visible frames are skipped
RETURN_WINDOW_SECONDS = 2.0  # how long after an occlusion's end a generated view may take to come back
RETURNED_MAX_HIDDEN = 0.5  # a frame shows the view again when less than this much of it is occluder colour


def check_matches(frames: np.ndarray, track: WorldTrack, video_name: str = "video") -> None:
    t, h, w = frames.shape[:3]
    if (t, h, w) != (track.n_frames, FRAME_SIZE, FRAME_SIZE):
        raise UserError(
            f"{video_name} has {t} frames of {h}x{w}, but the world annotations describe "
            f"{track.n_frames} frames of {FRAME_SIZE}x{FRAME_SIZE}: annotations of a different video?"
        )


class PaletteClassifier:
    def __init__(self, palette: str):
        self.colours, self.roles = palette_table(palette)
        self.object_classes = np.array([self.roles[f"object:{n}"] for n in OBJECT_COLOUR_NAMES])
        self.sprite = self.roles["sprite"]

    def classify(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return nearest_colour(frames, self.colours)


def nearest_colour(frames: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index [T, H, W] (uint8) of the nearest of `colours` [K, 3] and the RGB distance to it [T, H, W] (float32).

    Computed once per distinct RGB value of the video (flat-coloured frames hold few; a decoded video some
    thousands), then spread back to the pixels: the same numbers as per pixel, without a [T, H, W, K] array."""
    flat = frames.reshape(-1, 3).astype(np.int32)
    keys = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    distinct, where = np.unique(keys, return_inverse=True)
    rgb = np.stack([(distinct >> 16) & 255, (distinct >> 8) & 255, distinct & 255], 1)
    classes, distance = _nearest(rgb, colours)
    shape = frames.shape[:3]
    return classes[where].reshape(shape), distance[where].reshape(shape)


def _nearest(rgb: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest of `colours` [K, 3] for each of rgb [N, 3]: a running minimum over the K colours (ties: the first)."""
    channels = [rgb[:, c].astype(np.float32) for c in range(3)]
    best = np.full(len(rgb), np.inf, np.float32)
    classes = np.zeros(len(rgb), np.uint8)
    for k, colour in enumerate(np.asarray(colours, np.float32)):
        d = (channels[0] - colour[0]) ** 2 + (channels[1] - colour[1]) ** 2 + (channels[2] - colour[2]) ** 2
        closer = d < best
        best[closer] = d[closer]
        classes[closer] = k
    return classes, np.sqrt(best)


@dataclass(frozen=True)
class DetectedObject:
    cell: int
    colour: int  # index into OBJECT_COLOUR_NAMES
    shape: int  # index into SHAPES
    iou: float  # match of its mask with that shape's template


def _object_windows(class_map: np.ndarray) -> np.ndarray:
    """[N_CELLS, 12, 12] class windows where objects are drawn."""
    cells = class_map.reshape(GRID, CELL, GRID, CELL).transpose(0, 2, 1, 3).reshape(N_CELLS, CELL, CELL)
    return cells[:, OBJECT_MARGIN : OBJECT_MARGIN + OBJECT_SIZE, OBJECT_MARGIN : OBJECT_MARGIN + OBJECT_SIZE]


def detect_objects(class_map: np.ndarray, classifier: PaletteClassifier) -> list[DetectedObject]:
    """Objects per grid cell: the dominant object colour, if it covers enough of the cell's object window.

    Pixels next to the sprite are left out of the shape match: compression smears the white sprite into
    its neighbours, which would otherwise grow a disc into a square.
    """
    windows = _object_windows(class_map)
    near_sprite = _object_windows(_dilate(class_map == classifier.sprite, SPRITE_DILATE + 1))
    masks = windows[:, None] == classifier.object_classes[:, None, None]  # [cells, colours, 12, 12]
    counts = masks.sum((2, 3))
    found = []
    for cell in np.flatnonzero(counts.max(1) >= MIN_OBJECT_PIXELS):
        colour = int(counts[cell].argmax())
        mask, use = masks[cell, colour], ~near_sprite[cell]
        inter = (SHAPE_MASKS & mask & use).sum((1, 2))
        union = ((SHAPE_MASKS | mask) & use).sum((1, 2))
        ious = inter / np.maximum(union, 1)
        found.append(DetectedObject(int(cell), colour, int(ious.argmax()), float(ious.max())))
    return found


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for axis in (-1, -2):
        grown = out.copy()
        for r in range(1, radius + 1):
            grown |= np.roll(out, r, axis) | np.roll(out, -r, axis)
        out = grown
    return out


def _object_cell_mask(objects: list[DetectedObject]) -> np.ndarray:
    mask = np.zeros((GRID, GRID), bool)
    for obj in objects:
        mask[obj.cell // GRID, obj.cell % GRID] = True
    return np.kron(mask, np.ones((CELL, CELL), bool))


def _compare(frames, classes, b: int, a: int, classifier: PaletteClassifier) -> dict:
    """Restoration error, pixel MAE and object permanence of frame `a` against frame `b`."""
    sprite = _dilate((classes[b] == classifier.sprite) | (classes[a] == classifier.sprite), SPRITE_DILATE)
    keep = ~sprite
    before = detect_objects(classes[b], classifier)
    # place and colour, as the issue defines permanence; shape is judged by fidelity (mp4 chroma
    # subsampling can round a 12-px disc's corners into a square's, so shape is the noisier call)
    after = {(o.cell, o.colour) for o in detect_objects(classes[a], classifier)}
    kept = sum((o.cell, o.colour) in after for o in before)
    return {
        "error": float(np.mean(classes[b][keep] != classes[a][keep])),
        "mae": float(np.abs(frames[b].astype(np.int16) - frames[a].astype(np.int16))[keep].mean() / 255.0),
        "objects_before": len(before),
        "objects_kept": kept,
        "permanence": kept / len(before) if before else None,
    }


def return_frame(classes, occ, track: WorldTrack, classifier: PaletteClassifier) -> int | None:
    """The first frame from the occlusion's end on (within RETURN_WINDOW_SECONDS, before the next
    occlusion) that is no longer mostly the occluder's colour: when a *generated* view comes back.

    A generator that is given the hidden frames of an occlusion (eval.protocols) is not told when it
    ends, so it may hold the occluder a little longer; its memory is judged where it does come back."""
    role = {"blackout": "blackout", "curtain": "curtain", "turn-away": "away"}[occ.kind]
    colour = classifier.roles[role]
    limit = min(track.n_frames, occ.end_frame + int(RETURN_WINDOW_SECONDS * FPS))
    hidden_later = np.flatnonzero(track.coverage[occ.end_frame : limit] > 0)
    if hidden_later.size:
        limit = occ.end_frame + int(hidden_later[0])
    for f in range(occ.end_frame, limit):
        if np.mean(classes[f] == colour) < RETURNED_MAX_HIDDEN:
            return f
    return None


def restoration(frames, classes, track: WorldTrack, classifier: PaletteClassifier) -> list[dict]:
    """Per occlusion: the frame after against the frame before, at the annotated end of the occlusion and
    where the view actually comes back (`return_*`; a view that never comes back within the window
    counts as error 1 and permanence 0 there)."""
    rows = []
    for occ in track.occlusions():
        if occ.end_frame >= track.n_frames or occ.before_frame < 0:
            continue  # the clip ends hidden: nothing to compare
        b, a = occ.before_frame, occ.end_frame
        fixed = _compare(frames, classes, b, a, classifier)
        back = return_frame(classes, occ, track, classifier)
        late = _compare(frames, classes, b, back, classifier) if back is not None else None
        rows.append(
            {
                "start_frame": occ.start_frame,
                "end_frame": occ.end_frame,
                "kind": occ.kind,
                "seconds": occ.seconds,
                "bucket": occ.bucket,
                "before_frame": b,
                "after_frame": a,
                "restoration_error": fixed["error"],
                "restoration_mae": fixed["mae"],
                "objects_before": fixed["objects_before"],
                "objects_kept": fixed["objects_kept"],
                "permanence": fixed["permanence"],
                "return_frame": back,
                "returned": back is not None,
                "return_error": late["error"] if late else 1.0,
                "return_permanence": (late["permanence"] if late else 0.0) if fixed["objects_before"] else None,
            }
        )
    return rows


def _bucket_summary(rows: list[dict]) -> dict:
    out = {}
    for bucket in BUCKETS:
        mine = [r for r in rows if r["bucket"] == bucket]
        perm = [r["permanence"] for r in mine if r["permanence"] is not None]
        back = [r for r in mine if r["returned"]]
        return_perm = [r["return_permanence"] for r in mine if r["return_permanence"] is not None]
        back_perm = [r["return_permanence"] for r in back if r["return_permanence"] is not None]
        out[bucket] = {
            "count": len(mine),
            "restoration_error": float(np.mean([r["restoration_error"] for r in mine])) if mine else None,
            "restoration_mae": float(np.mean([r["restoration_mae"] for r in mine])) if mine else None,
            "permanence": float(np.mean(perm)) if perm else None,
            "return_rate": float(np.mean([r["returned"] for r in mine])) if mine else None,
            "return_error": float(np.mean([r["return_error"] for r in mine])) if mine else None,
            "return_permanence": float(np.mean(return_perm)) if return_perm else None,
            "error_when_back": float(np.mean([r["return_error"] for r in back])) if back else None,
            "permanence_when_back": float(np.mean(back_perm)) if back_perm else None,
        }
    return out


def drift(frames, classes, track: WorldTrack, classifier: PaletteClassifier) -> dict:
    background = background_image(track.prompt.style, track.prompt.palette).astype(np.int16)
    per_frame = np.full(track.n_frames, np.nan)
    for t in np.flatnonzero(track.coverage == 0):
        hidden = _object_cell_mask(detect_objects(classes[t], classifier))
        hidden |= _dilate(classes[t] == classifier.sprite, SPRITE_DILATE)
        if (~hidden).any():
            per_frame[t] = np.abs(frames[t].astype(np.int16) - background)[~hidden].mean() / 255.0
    times, curve = _per_second(per_frame)
    valid = curve[~np.isnan(curve)]
    edge = max(1, min(5, len(valid) // 2))  # compare the first and last 5 s
    return {
        "mean": float(np.nanmean(per_frame)) if valid.size else None,
        "increase": float(valid[-edge:].mean() - valid[:edge].mean()) if valid.size else None,
        "curve_t": times.tolist(),
        "curve": [None if np.isnan(v) else float(v) for v in curve],
    }


def _per_second(per_frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    second = np.arange(len(per_frame)) // FPS
    bins = np.unique(second)
    with np.errstate(all="ignore"):
        vals = np.array(
            [np.nanmean(per_frame[second == s]) if np.isfinite(per_frame[second == s]).any() else np.nan for s in bins]
        )
    return bins + 0.5, vals


def sprite_centres(classes: np.ndarray, classifier: PaletteClassifier) -> np.ndarray:
    """Detected sprite centre (x, y) per frame, NaN where not found."""
    mask = classes == classifier.sprite
    count = mask.sum((1, 2))
    ys, xs = np.arange(FRAME_SIZE)[None, :, None], np.arange(FRAME_SIZE)[None, None, :]
    with np.errstate(all="ignore"):
        centres = np.stack([(mask * xs).sum((1, 2)) / count, (mask * ys).sum((1, 2)) / count], 1) + 0.5
    centres[count < MIN_SPRITE_PIXELS] = np.nan
    return centres


def dynamics(classes, track: WorldTrack, classifier: PaletteClassifier) -> dict:
    seen = sprite_centres(classes, classifier)
    visible = track.coverage == 0
    windows, moving, gen_total, true_total = 0, 0, 0.0, 0.0
    speeds = []
    for start in range(0, track.n_frames - 1, FPS):
        idx = np.arange(start, min(track.n_frames, start + FPS + 1))
        idx = idx[visible[idx]]
        if len(idx) < MIN_VISIBLE_PER_WINDOW:
            continue
        steps = np.diff(idx) == 1  # consecutive visible frames only
        true_path = np.linalg.norm(np.diff(track.sprite_xy[idx], axis=0), axis=1)[steps].sum()
        # between successive detections: a sprite passing behind an object is missed for a few frames
        found = seen[idx][~np.isnan(seen[idx, 0])]
        gen_path = float(np.linalg.norm(np.diff(found, axis=0), axis=1).sum()) if len(found) > 1 else 0.0
        windows += 1
        moving += gen_path >= SPRITE_MOVING_RATIO * true_path
        gen_total += gen_path
        true_total += true_path
        speeds.append((float(start / FPS), gen_path, float(true_path)))
    return {
        "moving_fraction": moving / windows if windows else None,
        "speed_ratio": float(gen_total / true_total) if true_total else None,
        "windows": windows,
        "curve_t": [s[0] + 0.5 for s in speeds],
        "speed": [s[1] for s in speeds],
        "true_speed": [s[2] for s in speeds],
    }  # px per 1 s window


def fidelity(classes, nearest, track: WorldTrack, classifier: PaletteClassifier, stride: int = 4) -> dict:
    settled = (track.coverage == 0) | (track.coverage >= 1)  # skip curtain/pan transitions
    per_frame = np.where(settled, (nearest <= PALETTE_TOLERANCE).mean((1, 2)), np.nan)
    ious = [
        o.iou for t in np.flatnonzero(track.coverage == 0)[::stride] for o in detect_objects(classes[t], classifier)
    ]
    times, curve = _per_second(per_frame)
    return {
        "palette": float(np.nanmean(per_frame)),
        "shape_validity": float(np.mean(np.array(ious) >= SHAPE_MIN_IOU)) if ious else None,
        "curve_t": times.tolist(),
        "curve": [None if np.isnan(v) else float(v) for v in curve],
    }


def world_metrics(frames: np.ndarray, track: WorldTrack, video_name: str = "video") -> dict:
    """All world metrics of `frames` (uint8 [T, 64, 64, 3]) against the world `track`."""
    check_matches(frames, track, video_name)
    classifier = PaletteClassifier(track.prompt.palette)
    classes, nearest = classifier.classify(frames)
    rows = restoration(frames, classes, track, classifier)
    perms = [r["permanence"] for r in rows if r["permanence"] is not None]
    return {
        "prompt": track.prompt.canonical,
        "seed": track.seed,
        "restoration": {
            "buckets": _bucket_summary(rows),
            "occlusions": rows,
            "mean_error": float(np.mean([r["restoration_error"] for r in rows])) if rows else None,
        },
        "permanence": float(np.mean(perms)) if perms else None,
        "drift": drift(frames, classes, track, classifier),
        "dynamics": dynamics(classes, track, classifier),
        "fidelity": fidelity(classes, nearest, track, classifier),
    }
