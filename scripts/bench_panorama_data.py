"""Panorama training clips: how fast they are made, and what their scripts contain.

    python scripts/bench_panorama_data.py [--clips 40] [--seconds 30 60] [--stats 200]

Prints two markdown tables that docs/world.md quotes: clips per second (and frames per second) for each
clip length, for the world alone (script drawn, simulated, rendered) and for `PanoramaClipDataset`
through a `DataLoader` with 0 and 2 worker processes (batch 4); and the statistics of `--stats` random
training scripts per clip length (revisits per minute by bucket, time panning and dark, balls, how much of
what is seen is wall).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from contextforcing.data.world.panorama.dataset import PanoramaDatasetConfig, training_world  # noqa: E402
from contextforcing.data.world.panorama.geometry import BUCKETS, panel_colours  # noqa: E402
from contextforcing.data.world.panorama.loader import PanoramaClipDataset  # noqa: E402
from contextforcing.data.world.panorama.render import render  # noqa: E402
from contextforcing.data.world.panorama.revisits import track_revisits  # noqa: E402
from contextforcing.data.world.panorama.simulate import simulate  # noqa: E402


def _collate(items):
    return torch.stack([i["frames"] for i in items]), [i["chunk_prompts"] for i in items]


def world_only(clips: int, seconds: float) -> float:
    start = time.perf_counter()
    for i in range(clips):
        render(simulate(training_world(0, i, seconds)))
    return clips / (time.perf_counter() - start)


def loader(clips: int, seconds: float, workers: int) -> float:
    ds = PanoramaClipDataset(config=PanoramaDatasetConfig(clips, seconds, seed=1))
    batches = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=_collate)
    start = time.perf_counter()
    n = sum(len(frames) for frames, _ in batches)
    return n / (time.perf_counter() - start)


def script_stats(count: int, seconds: float) -> str:
    per_minute = {b: [] for b in BUCKETS}
    longest, sink, panning, dark, white, black, wall = [], [], [], [], [], [], []
    for i in range(count):
        track = simulate(training_world(0, i, seconds))
        revisits = track_revisits(track)
        minutes = track.n_frames / 16 / 60
        for b in BUCKETS:
            per_minute[b].append(sum(r.bucket == b for r in revisits) / minutes)
        longest.append(max((r.delay_seconds for r in revisits), default=0.0))
        sink.append(np.mean([r.in_sink for r in revisits]) if revisits else 0.0)
        panning.append(np.mean(np.diff(track.latent_camera) != 0))
        dark.append(np.mean(~track.latent_lit))
        frames = render(track)[track.lit]
        wall.append(
            np.isin(frames.reshape(-1, 3) @ [1, 256, 65536], panel_colours(track.palette) @ [1, 256, 65536]).mean()
        )
        white.append(track.spec.script.balls[0])
        black.append(track.spec.script.balls[1])
    fmt = " / ".join(f"{np.mean(per_minute[b]):.1f}" for b in BUCKETS)
    return (
        f"| {seconds:g} s | {count} | {fmt} | {np.mean(longest):.1f} s (max {np.max(longest):.1f} s) | "
        f"{np.mean(sink):.2f} | {np.mean(panning):.2f} | {np.mean(dark):.2f} | {np.mean(white):.2f} / "
        f"{np.mean(black):.2f} | {np.mean(wall):.2f} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--seconds", type=float, nargs="+", default=[30.0, 60.0])
    p.add_argument("--stats", type=int, default=200, help="scripts per clip length for the statistics table")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| clip length | frames | world only (1 process) | DataLoader, 0 workers | DataLoader, 2 workers |")
    print("|---|---|---|---|---|")
    for seconds in args.seconds:
        frames = simulate(training_world(0, 0, seconds)).n_frames
        rates = [world_only(args.clips, seconds), loader(args.clips, seconds, 0), loader(args.clips, seconds, 2)]
        cells = " | ".join(f"{r:.0f} clips/s ({r * frames / 1000:.0f}k frames/s)" for r in rates)
        print(f"| {seconds:g} s | {frames} | {cells} |", flush=True)
    print(
        "\n| clip length | scripts | revisits per minute, fast / slow / beyond | longest revisit (mean) | "
        "share of revisits of the first view | time panning | time dark | white / black ball | wall share of "
        "lit pixels |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for seconds in args.seconds:
        print(script_stats(args.stats, seconds), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
