"""The synthetic worlds: procedural scenes a video generator can only keep consistent by remembering them.

See docs/world.md. The panorama world (the benchmark) lives in `panorama/`. The occlusion world's entry
points, here: `WorldSpec` + `simulate` (exact per-frame ground truth),
`render` (uint8 frames), `track_to_json`/`load_annotations`, `eval_worlds` (held-out set),
`write_dataset`/`WorldClipDataset` (sharded training clips).
"""

from contextforcing.data.world.annotations import load_annotations, track_from_json, track_to_json
from contextforcing.data.world.heldout import eval_worlds
from contextforcing.data.world.prompts import PromptSpec, parse_prompt
from contextforcing.data.world.render import render
from contextforcing.data.world.track import WorldSpec, WorldTrack, simulate

__all__ = [
    "PromptSpec",
    "WorldSpec",
    "WorldTrack",
    "eval_worlds",
    "load_annotations",
    "parse_prompt",
    "render",
    "simulate",
    "track_from_json",
    "track_to_json",
]
