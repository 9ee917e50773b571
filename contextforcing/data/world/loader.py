"""Reading a world dataset (see `dataset.py` for the layout) as a PyTorch `Dataset`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from contextforcing.data.world.dataset import FORMAT, MANIFEST
from contextforcing.data.world.prompts import parse_prompt
from contextforcing.data.world.render import render
from contextforcing.data.world.track import WorldSpec, WorldTrack
from contextforcing.errors import UserError


class WorldClipDataset(Dataset):
    """Training clips from a dataset directory; `ds[i]` -> dict of torch tensors and the prompt.

    Items: `frames` uint8 [T, H, W, 3], `prompt` str, `seed` int, and the per-frame ground truth
    (`frame_state`, `coverage`, `occluder`, `sprite_xy`). Works with DataLoader workers: each worker
    opens shards on its own.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise UserError(f"{self.root} is not a world dataset ({MANIFEST} missing)")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise UserError(f"{path} is not a world dataset manifest (format {self.manifest.get('format')!r})")
        self.store = self.manifest["config"]["store"]
        self._index = [(s, k) for s, shard in enumerate(self.manifest["shards"]) for k in range(shard["count"])]
        self._open: tuple[int, object] | None = None

    def __len__(self) -> int:
        return len(self._index)

    def _shard(self, shard: int):
        if self._open is None or self._open[0] != shard:
            file = self.root / self.manifest["shards"][shard]["file"]
            if not file.is_file():
                raise UserError(f"dataset shard {file} is missing")
            self._open = (shard, np.load(file))
        return self._open[1]

    def track(self, index: int) -> WorldTrack:
        """The exact ground truth of clip `index` (what its frames are rendered from)."""
        shard, k = self._index[index]
        data = self._shard(shard)
        return WorldTrack(
            prompt=parse_prompt(str(data["prompts"][k])),
            seed=int(data["seeds"][k]),
            objects=data["objects"][k, : data["n_states"][k]],
            frame_state=data["frame_state"][k],
            coverage=data["coverage"][k].astype(np.float32),
            occluder=data["occluder"][k],
            sprite_xy=data["sprite_xy"][k],
            sprite_path=str(data["sprite_paths"][k]),
            spec=WorldSpec(str(data["prompts"][k]), int(data["seeds"][k]), float(self.manifest["config"]["seconds"])),
        )

    def frames(self, index: int) -> np.ndarray:
        if self.store == "frames":
            shard, k = self._index[index]
            return self._shard(shard)[f"frames_{k}"]
        return render(self.track(index))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        track = self.track(index)
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(self.frames(index))),
            "prompt": track.prompt.canonical,
            "seed": track.seed,
            "frame_state": torch.from_numpy(track.frame_state.astype(np.int64)),
            "coverage": torch.from_numpy(track.coverage),
            "occluder": torch.from_numpy(track.occluder.astype(np.int64)),
            "sprite_xy": torch.from_numpy(track.sprite_xy),
        }
