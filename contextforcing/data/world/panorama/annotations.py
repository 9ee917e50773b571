"""Ground-truth annotations of a panorama video as JSON, and reading them back.

The JSON holds what the video is a function of (script, seed, seconds) and, for readers without this
package, the per-frame ground truth: camera position, lights, scene state, ball centres, plus the scene
states, events and revisits. Reading re-simulates from (script, seed, seconds) and checks the stored
per-frame arrays against it, so a file written by another version of the world is refused rather than
silently misread.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contextforcing.data.world.panorama.geometry import (
    CHUNK_SECONDS,
    FPS,
    FRAME_SIZE,
    LATENT_STRIDE,
    ROOM_WIDTH,
    UNITS,
    VIEW,
    panel_colours,
)
from contextforcing.data.world.panorama.render import cell_origin
from contextforcing.data.world.panorama.revisits import track_revisits
from contextforcing.data.world.panorama.script import script_from_json
from contextforcing.data.world.panorama.simulate import (
    CELL_INDEX,
    COLOUR,
    PRESENT,
    SHAPE,
    PanoramaSpec,
    PanoramaTrack,
    simulate,
)
from contextforcing.data.world.style import object_json
from contextforcing.errors import UserError

FORMAT = "contextforcing.panorama/1"


def _object_json(slot: int, row: np.ndarray) -> dict:
    cell = int(row[CELL_INDEX])
    described = object_json(slot, row[SHAPE], row[COLOUR], cell, cell_origin(cell), "room_xywh")
    return {**described, "row": cell // UNITS, "unit": cell % UNITS}


def _ball_json(xy: np.ndarray) -> list | None:
    return None if np.isnan(xy[0]) else [float(xy[0]), float(xy[1])]  # float32 values, exact


def track_to_json(track: PanoramaTrack) -> dict:
    spec = track.spec
    return {
        "format": FORMAT,
        "script": spec.script.to_json(),
        "seed": int(spec.seed),
        "seconds": spec.seconds,
        "room": {
            "palette": track.palette,
            "width": ROOM_WIDTH,
            "panels": track.panels.tolist(),
            "panel_rgb": panel_colours(track.palette).tolist(),
        },
        "fps": FPS,
        "latent_stride": LATENT_STRIDE,
        "chunk_seconds": CHUNK_SECONDS,
        "height": FRAME_SIZE,
        "width": VIEW,
        "n_frames": track.n_frames,
        "n_latents": track.n_latents,
        "chunk_prompts": track.chunk_prompts(),
        "states": [[_object_json(s, row) for s, row in enumerate(state) if row[PRESENT]] for state in track.objects],
        "events": [
            {
                "latent": e.latent,
                "frame": e.frame,
                "time": e.frame / FPS,
                "type": e.type,
                "object": e.slot,
                "old": e.old,
                "new": e.new,
            }
            for e in track.events
        ],
        "revisits": [
            {
                "unit": r.unit,
                "seen_latent": r.seen_latent,
                "back_latent": r.back_latent,
                "frame_before": r.frame_before,
                "frame_after": r.frame_after,
                "delay_seconds": r.delay_seconds,
                "bucket": r.bucket,
                "cause": r.cause,
                "in_sink": r.in_sink,
                "x_before": r.x_before,
                "x_after": r.x_after,
            }
            for r in track_revisits(track)
        ],
        "per_frame": {
            "state": track.frame_state.tolist(),
            "camera_x": track.camera_x.tolist(),
            "lit": track.lit.tolist(),
            "balls": [[_ball_json(xy) for xy in frame] for frame in track.balls],
        },
    }


def _check_same(track: PanoramaTrack, per_frame: dict, where: str) -> None:
    stored = {
        "state": np.array(per_frame["state"]),
        "camera_x": np.array(per_frame["camera_x"]),
        "lit": np.array(per_frame["lit"], bool),
    }
    fresh = {"state": track.frame_state, "camera_x": track.camera_x, "lit": track.lit}
    balls = (
        np.array(
            [[np.nan, np.nan] if xy is None else xy for frame in per_frame["balls"] for xy in frame], np.float32
        ).reshape(track.balls.shape)
        if len(per_frame["balls"]) == track.n_frames
        else None
    )
    same = all(stored[k].shape == fresh[k].shape and np.array_equal(stored[k], fresh[k]) for k in stored)
    if not same or balls is None or not np.array_equal(balls, track.balls, equal_nan=True):
        raise UserError(
            f"{where}: its per-frame ground truth differs from what this version of the panorama world "
            f"simulates for its script and seed; re-render it with `contextforcing world render`"
        )


def track_from_json(data: dict, where: str = "annotations") -> PanoramaTrack:
    """The exact track of a `track_to_json` file; a malformed or foreign file is a `UserError`."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{where} is not a panorama annotation file (expected format {FORMAT!r})")
    try:
        spec = PanoramaSpec(script_from_json(data["script"], where), int(data["seed"]), float(data["seconds"]))
        track = simulate(spec)
        _check_same(track, data["per_frame"], where)
    except (KeyError, ValueError, TypeError, IndexError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"{where} is a malformed panorama annotation file ({type(err).__name__}: {err})") from None
    return track


def load_panorama_annotations(path: str | os.PathLike) -> PanoramaTrack:
    from contextforcing.data.world.annotations import read_annotation_json

    data = read_annotation_json(Path(path))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a panorama annotation file (expected format {FORMAT!r})")
    return track_from_json(data, where=str(path))
