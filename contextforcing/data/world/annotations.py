"""Ground-truth annotations of a world video as JSON, and reading them back into a `WorldTrack`.

The JSON carries the compact per-frame arrays the video is rendered from (so the track round-trips
exactly) plus readable derived lists: the scene states with object names and pixel positions, the
events, the occlusions with their length buckets, and each frame's visible objects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from contextforcing.data.world.prompts import parse_prompt
from contextforcing.data.world.render import visible_objects
from contextforcing.data.world.style import (
    FPS,
    FRAME_SIZE,
    LATENT_STRIDE,
    OBJECT_COLOUR_NAMES,
    OCCLUDERS,
    PALETTES,
    SHAPES,
    cell_origin,
    object_json,
)
from contextforcing.data.world.track import (
    CELL,
    COLOUR,
    MAX_OBJECTS,
    NO_OCCLUDER,
    PRESENT,
    SHAPE,
    WorldSpec,
    WorldTrack,
)
from contextforcing.errors import UserError

FORMAT = "contextforcing.world/1"


def _object_json(slot: int, row: np.ndarray) -> dict:
    cell = int(row[CELL])
    return object_json(slot, row[SHAPE], row[COLOUR], cell, cell_origin(cell), "bbox_xywh")


def track_to_json(track: WorldTrack) -> dict:
    spec = track.spec
    states = [[_object_json(s, row) for s, row in enumerate(state) if row[PRESENT]] for state in track.objects]
    occlusions = [
        {
            "start_frame": o.start_frame,
            "end_frame": o.end_frame,
            "kind": o.kind,
            "seconds": o.seconds,
            "bucket": o.bucket,
            "before_frame": o.before_frame,
            "after_frame": o.end_frame if o.end_frame < track.n_frames else None,
        }
        for o in track.occlusions()
    ]
    events = [
        {"frame": e.frame, "time": e.time, "type": e.type, "object": e.object, "old": e.old, "new": e.new}
        for e in track.events()
    ]
    return {
        "format": FORMAT,
        "prompt": track.prompt.canonical,
        "seed": track.seed,
        "seconds": spec.seconds if spec else None,
        "occlusion_seconds": list(spec.occlusion_seconds) if spec and spec.occlusion_seconds else None,
        "scene": {
            "style": track.prompt.style,
            "palette": track.prompt.palette,
            "occluder": track.prompt.occluder,
            "sprite_path": track.sprite_path,
            "background_rgb": [list(c) for c in PALETTES[track.prompt.palette][:2]],
            "away_rgb": list(PALETTES[track.prompt.palette][2]),
        },
        "fps": FPS,
        "latent_stride": LATENT_STRIDE,
        "height": FRAME_SIZE,
        "width": FRAME_SIZE,
        "n_frames": track.n_frames,
        "states": states,
        "events": events,
        "occlusions": occlusions,
        "per_frame": {
            "state": track.frame_state.tolist(),
            "coverage": [round(float(c), 4) for c in track.coverage],
            "occluder": [OCCLUDERS[k] if k != NO_OCCLUDER else None for k in track.occluder],
            "sprite_xy": track.sprite_xy.astype(np.float64).tolist(),  # float32 values, exact
            "visible_objects": [visible_objects(track, t) for t in range(track.n_frames)],
        },
    }


def track_from_json(data: dict, where: str = "annotations") -> WorldTrack:
    """Rebuild the exact track from `track_to_json` output; a malformed file is a `UserError`."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{where} is not a world annotation file (expected format {FORMAT!r})")
    try:
        prompt = parse_prompt(data["prompt"])
        objects = np.zeros((len(data["states"]), MAX_OBJECTS, 4), np.int8)
        for s, state in enumerate(data["states"]):
            for obj in state:
                objects[s, obj["id"]] = (
                    1,
                    obj["cell"],
                    OBJECT_COLOUR_NAMES.index(obj["colour"]),
                    SHAPES.index(obj["shape"]),
                )
        per_frame = data["per_frame"]
        occluder = np.array([NO_OCCLUDER if k is None else OCCLUDERS.index(k) for k in per_frame["occluder"]], np.int8)
        spec = None
        if data.get("seconds") is not None:
            forced = data.get("occlusion_seconds")
            spec = WorldSpec(
                prompt.canonical, int(data["seed"]), float(data["seconds"]), tuple(forced) if forced else None
            )
        track = WorldTrack(
            prompt=prompt,
            seed=int(data["seed"]),
            objects=objects,
            frame_state=np.array(per_frame["state"], np.int16),
            coverage=np.array(per_frame["coverage"], np.float32),
            occluder=occluder,
            sprite_xy=np.array(per_frame["sprite_xy"], np.float32).reshape(-1, 2),
            sprite_path=data["scene"]["sprite_path"],
            spec=spec,
        )
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise UserError(f"{where} is a malformed world annotation file ({type(err).__name__}: {err})")
    if not (
        len(track.coverage) == len(track.occluder) == len(track.sprite_xy) == track.n_frames == data.get("n_frames")
    ):
        raise UserError(f"{where}: per-frame arrays disagree with n_frames")
    return track


def read_annotation_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"world annotations {path} do not exist")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read world annotations {path}: {err}")


def load_annotations(path: str | os.PathLike) -> WorldTrack:
    path = Path(path)
    return track_from_json(read_annotation_json(path), where=str(path))
