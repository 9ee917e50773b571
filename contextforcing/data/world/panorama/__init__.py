"""The scripted panorama world: a cylindrical room seen through a panning camera, controlled by prompt scripts.

See docs/world.md. Entry points: `parse_panorama_prompt`/`read_script`/`ScriptBuilder` (the grammar and
scripts), `PanoramaSpec` + `simulate` (exact ground truth from script and seed), `render`,
`track_revisits`, `sample_training_script`/`training_world` (random scripts for training),
`heldout_worlds` (the evaluation set), `track_to_json`/`load_panorama_annotations`; the PyTorch dataset
is `loader.PanoramaClipDataset` (imported on its own, so the world itself does not need torch).
"""

from contextforcing.data.world.panorama.annotations import load_panorama_annotations, track_from_json, track_to_json
from contextforcing.data.world.panorama.dataset import PanoramaDatasetConfig, training_world, write_panorama_dataset
from contextforcing.data.world.panorama.generator import ScriptBuilder, chunks_for_seconds, sample_training_script
from contextforcing.data.world.panorama.heldout import heldout_worlds
from contextforcing.data.world.panorama.render import render
from contextforcing.data.world.panorama.revisits import Revisit, track_revisits
from contextforcing.data.world.panorama.script import (
    PanoramaPrompt,
    PanoramaScript,
    WhiteBall,
    parse_panorama_prompt,
    read_script,
    script_from_chunks,
)
from contextforcing.data.world.panorama.simulate import PanoramaSpec, PanoramaTrack, simulate

__all__ = [
    "PanoramaDatasetConfig",
    "PanoramaPrompt",
    "PanoramaScript",
    "PanoramaSpec",
    "PanoramaTrack",
    "Revisit",
    "ScriptBuilder",
    "WhiteBall",
    "chunks_for_seconds",
    "heldout_worlds",
    "load_panorama_annotations",
    "parse_panorama_prompt",
    "read_script",
    "render",
    "sample_training_script",
    "script_from_chunks",
    "simulate",
    "track_from_json",
    "track_revisits",
    "track_to_json",
    "training_world",
    "write_panorama_dataset",
]
