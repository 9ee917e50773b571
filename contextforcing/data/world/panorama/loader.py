"""Panorama training clips as a PyTorch `Dataset`, rendered on the fly (see `dataset.py`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from contextforcing.data.world.panorama.dataset import (
    CLIPS,
    FORMAT,
    MANIFEST,
    PanoramaDatasetConfig,
    training_world,
)
from contextforcing.data.world.panorama.render import render
from contextforcing.data.world.panorama.script import script_from_json
from contextforcing.data.world.panorama.simulate import PanoramaSpec, PanoramaTrack, simulate
from contextforcing.errors import UserError


class PanoramaClipDataset(Dataset):
    """`ds[i]` -> the clip's frames, the prompt of every chunk and its per-frame ground truth.

    Items: `frames` uint8 [T, 64, 64, 3]; `chunk_prompts` list[str] (one per chunk of 3 latent frames: what
    the generator is conditioned on); `seed` int; `camera_x` int64 [T]; `lit` bool [T]; `frame_state` int64
    [T]; `balls` float32 [T, 2, 2] (NaN for an absent ball). Either read a directory written by
    `write_panorama_dataset` or, with `config=`, draw the same clips without any files.
    """

    def __init__(self, root: str | os.PathLike | None = None, config: PanoramaDatasetConfig | None = None):
        if (root is None) == (config is None):
            raise UserError("give a dataset directory or a PanoramaDatasetConfig, not both or neither")
        self.specs: list[PanoramaSpec] | None = None
        if config is not None:
            self.config = config.validate()
            return
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise UserError(f"{root} is not a panorama dataset ({MANIFEST} missing)")
        data = json.loads(manifest.read_text())
        if data.get("format") != FORMAT:
            raise UserError(f"{manifest} is not a panorama dataset manifest (format {data.get('format')!r})")
        self.config = PanoramaDatasetConfig(**data["config"])
        clips = root / CLIPS
        if not clips.is_file():
            raise UserError(f"dataset file {clips} is missing")
        lines = [json.loads(line) for line in clips.read_text().splitlines() if line.strip()]
        self.specs = [
            PanoramaSpec(
                script_from_json(c["script"], f"{clips} clip {c['index']}"), int(c["seed"]), self.config.seconds
            )
            for c in lines
        ]

    def __len__(self) -> int:
        return len(self.specs) if self.specs is not None else self.config.count

    def spec(self, index: int) -> PanoramaSpec:
        if self.specs is not None:
            return self.specs[index]
        return training_world(self.config.seed, index, self.config.seconds)

    def track(self, index: int) -> PanoramaTrack:
        """The exact ground truth of clip `index` (what its frames are rendered from)."""
        return simulate(self.spec(index))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        track = self.track(index)
        return {
            "frames": torch.from_numpy(render(track)),
            "chunk_prompts": track.chunk_prompts(),
            "seed": track.seed,
            "camera_x": torch.from_numpy(track.camera_x.astype(np.int64)),
            "lit": torch.from_numpy(track.lit),
            "frame_state": torch.from_numpy(track.frame_state.astype(np.int64)),
            "balls": torch.from_numpy(track.balls),
        }
