"""Training clips of the panorama world: which (script, seed) clip i is, and a dataset directory listing them.

Clip `i` of a dataset with seed `S` is a deterministic function of (S, i, seconds): a random training
script (`sample_training_script`) and a world seed below `EVAL_SEED_BASE`, so held-out seeds never
appear. Frames are rendered on load (a 30 s clip simulates and renders in about 10 ms), so a dataset
directory only lists the clips:

    manifest.json   format, config (count, seconds, seed), clip length in frames
    clips.jsonl     one line per clip: {"index", "seed", "script": [{"at", "prompt"}, ...]}

The reader is `loader.PanoramaClipDataset` (kept apart so writing a dataset does not import torch).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from contextforcing.data.world.panorama.generator import sample_training_script
from contextforcing.data.world.panorama.geometry import FPS, FRAME_SIZE, frames_for_seconds
from contextforcing.data.world.panorama.simulate import PanoramaSpec
from contextforcing.data.world.prompts import EVAL_SEED_BASE
from contextforcing.errors import UserError
from contextforcing.io.outputs import write_json_atomic, write_text_atomic

FORMAT = "contextforcing.panorama-dataset/1"
MANIFEST, CLIPS = "manifest.json", "clips.jsonl"
_TRAINING_STREAM = 3  # keys training clips apart from every other random stream of the world


@dataclass(frozen=True)
class PanoramaDatasetConfig:
    count: int
    seconds: float
    seed: int = 0  # which training clips

    def validate(self) -> "PanoramaDatasetConfig":
        if self.count < 1:
            raise UserError(f"--count must be at least 1, got {self.count}")
        if not self.seconds > 0:
            raise UserError(f"--seconds must be positive, got {self.seconds}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        return self


def training_world(seed: int, index: int, seconds: float) -> PanoramaSpec:
    """Training clip `index` of dataset seed `seed`: a random script and a world seed below the held-out range."""
    rng = np.random.default_rng([int(seed), int(index), _TRAINING_STREAM])
    script = sample_training_script(rng, seconds)
    return PanoramaSpec(script, int(rng.integers(EVAL_SEED_BASE)), float(seconds))


def write_panorama_dataset(out_dir: str | os.PathLike, config: PanoramaDatasetConfig) -> dict:
    """Write clips.jsonl, then manifest.json (both atomically); returns the manifest."""
    config.validate()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create dataset directory {out_dir}: {err.strerror}") from None
    if (out_dir / MANIFEST).exists():
        raise UserError(f"{out_dir} already holds a dataset ({MANIFEST} exists); choose another --out")
    start = time.perf_counter()
    lines = []
    for i in range(config.count):
        spec = training_world(config.seed, i, config.seconds)
        lines.append(json.dumps({"index": i, "seed": spec.seed, "script": spec.script.to_json()}) + "\n")
    write_text_atomic(out_dir / CLIPS, "".join(lines))
    manifest = {
        "format": FORMAT,
        "config": asdict(config),
        "count": config.count,
        "n_frames": frames_for_seconds(config.seconds),
        "fps": FPS,
        "height": FRAME_SIZE,
        "width": FRAME_SIZE,
        "clips": CLIPS,
        "seconds_to_write": round(time.perf_counter() - start, 3),
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest
