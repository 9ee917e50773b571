"""Sharded training clips of the world, written fast, and a PyTorch `Dataset` that reads them.

Layout of a dataset directory:
    manifest.json          format, clip length, frame size, storage mode, shard list, timing and size
    shard-00000.npz ...    `shard_size` clips each (np.savez_compressed)

Each shard holds, per clip: prompt, seed, sprite path, the compact per-frame ground truth
(`frame_state` [T], `coverage` [T], `occluder` [T], `sprite_xy` [T, 2]) and the scene-state table
(`objects` [S_max, 6, 4], `n_states`). With `store="state"` (the default) that is all: frames are
rendered on load, exactly and in ~5 ms per 30 s clip, so 10,000 clips of 30 s take tens of MB instead
of ~59 GB of raw pixels. With `store="frames"` each clip's pixels are also stored (`frames_<i>`,
uint8 [T, 64, 64, 3], compressed separately so one clip can be read without the rest).
The reader is `loader.WorldClipDataset` (kept apart so writing a dataset does not import torch).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from contextforcing.data.world.prompts import EVAL_SEED_BASE, sample_training_prompt
from contextforcing.data.world.render import render
from contextforcing.data.world.style import FPS, FRAME_SIZE, frames_for_seconds
from contextforcing.data.world.track import MAX_OBJECTS, WorldSpec, simulate
from contextforcing.errors import UserError
from contextforcing.io.video import write_json_atomic

FORMAT = "contextforcing.world-dataset/1"
STORE_MODES = ("state", "frames")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DatasetConfig:
    count: int
    seconds: float
    store: str = "state"
    shard_size: int = 100
    workers: int = 0  # 0: one per CPU core
    seed: int = 0  # which training clips (prompt and world seed of clip i derive from (seed, i))

    def validate(self) -> "DatasetConfig":
        if self.count < 1:
            raise UserError(f"--count must be at least 1, got {self.count}")
        if not self.seconds > 0:
            raise UserError(f"--seconds must be positive, got {self.seconds}")
        if self.store not in STORE_MODES:
            raise UserError(f"--store must be one of {', '.join(STORE_MODES)}, got {self.store!r}")
        if self.shard_size < 1:
            raise UserError(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.workers}")
        return self


def training_spec(config: DatasetConfig, index: int) -> WorldSpec:
    """Clip `index` of a dataset: a training prompt and a seed below the held-out range."""
    rng = np.random.default_rng([config.seed, index])
    prompt = sample_training_prompt(rng)
    return WorldSpec(prompt, int(rng.integers(EVAL_SEED_BASE)), config.seconds)


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.npz"


def _write_shard(job: tuple[DatasetConfig, int, Path]) -> tuple[str, int, int]:
    config, shard, out_dir = job
    first = shard * config.shard_size
    indices = range(first, min(config.count, first + config.shard_size))
    tracks = [simulate(training_spec(config, i)) for i in indices]
    max_states = max(len(t.objects) for t in tracks)
    objects = np.zeros((len(tracks), max_states, MAX_OBJECTS, 4), np.int8)
    for k, track in enumerate(tracks):
        objects[k, : len(track.objects)] = track.objects
    arrays = {
        "prompts": np.array([t.prompt.canonical for t in tracks]),
        "seeds": np.array([t.seed for t in tracks], np.int64),
        "sprite_paths": np.array([t.sprite_path for t in tracks]),
        "frame_state": np.stack([t.frame_state for t in tracks]),
        "coverage": np.stack([t.coverage for t in tracks]).astype(np.float16),  # quarters: exact in fp16
        "occluder": np.stack([t.occluder for t in tracks]),
        "sprite_xy": np.stack([t.sprite_xy for t in tracks]),
        "objects": objects,
        "n_states": np.array([len(t.objects) for t in tracks], np.int16),
    }
    if config.store == "frames":
        arrays.update({f"frames_{k}": render(t) for k, t in enumerate(tracks)})
    final = out_dir / _shard_name(shard)
    tmp = out_dir / f".{final.stem}.partial.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, final)
    return final.name, len(tracks), final.stat().st_size


def write_dataset(out_dir: str | os.PathLike, config: DatasetConfig, progress: bool = True) -> dict:
    """Write all shards (in parallel) and then the manifest; returns the manifest."""
    from tqdm import tqdm

    config.validate()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create dataset directory {out_dir}: {err.strerror}")
    if (out_dir / MANIFEST).exists():
        raise UserError(f"{out_dir} already holds a dataset ({MANIFEST} exists); choose another --out")
    n_shards = -(-config.count // config.shard_size)
    workers = min(config.workers or os.cpu_count() or 1, n_shards)
    jobs = [(config, shard, out_dir) for shard in range(n_shards)]
    start = time.perf_counter()
    results = []
    with tqdm(total=config.count, unit="clip", desc="world dataset", disable=not progress) as bar:
        if workers == 1:
            stream = map(_write_shard, jobs)
            pool = None
        else:  # fork is cheap and the job needs nothing but picklable configs
            pool = get_context("fork").Pool(workers)
            stream = pool.imap(_write_shard, jobs)
        try:
            for name, count, size in stream:
                results.append({"file": name, "count": count, "bytes": size})
                bar.update(count)
        finally:
            if pool is not None:
                pool.terminate()
    elapsed = time.perf_counter() - start
    manifest = {
        "format": FORMAT,
        "config": asdict(config),
        "count": config.count,
        "n_frames": frames_for_seconds(config.seconds),
        "fps": FPS,
        "height": FRAME_SIZE,
        "width": FRAME_SIZE,
        "shards": results,
        "seconds_to_write": round(elapsed, 3),
        "workers": workers,
        "bytes": sum(r["bytes"] for r in results),
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest
