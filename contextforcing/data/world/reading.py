"""Reading any world's annotation file: the occlusion world's or the panorama world's, by its format tag."""

from __future__ import annotations

import os
from pathlib import Path

from contextforcing.data.world import annotations as occlusion
from contextforcing.data.world.panorama import annotations as panorama
from contextforcing.errors import UserError


def load_any_annotations(path: str | os.PathLike):
    """A `WorldTrack` (occlusion world) or a `PanoramaTrack`, whichever world wrote the file."""
    path = Path(path)
    data = occlusion.read_annotation_json(path)
    if isinstance(data, dict) and data.get("format") == panorama.FORMAT:
        return panorama.track_from_json(data, where=str(path))
    if not isinstance(data, dict) or data.get("format") != occlusion.FORMAT:
        raise UserError(
            f"{path} is not a world annotation file (expected format {occlusion.FORMAT!r} or {panorama.FORMAT!r})"
        )
    return occlusion.track_from_json(data, where=str(path))
