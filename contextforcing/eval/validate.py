"""Reproduce the metric-validation table of docs/evaluation.md: `python -m contextforcing.eval.validate`.

Every held-out world (16 x 60 s) is scored as rendered, through mp4, and through each flawed
"generator" of `baselines.py`; the table gives means over the worlds. Takes about a minute on 2 cores.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from contextforcing.data.world.heldout import eval_worlds
from contextforcing.data.world.render import render
from contextforcing.data.world.track import BUCKETS, FPS, WorldTrack, simulate
from contextforcing.eval import baselines
from contextforcing.eval.world_metrics import world_metrics
from contextforcing.io.video import VideoWriter, read_video


def _mp4_round_trip(frames: np.ndarray) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.mp4"
        with VideoWriter(path, FPS) as writer:
            writer.write(frames)
        return read_video(path)[0]


def _first_long(track: WorldTrack) -> int:
    return next(i for i, o in enumerate(track.occlusions()) if o.bucket == "long")


GENERATORS = {
    "ground truth (exact frames)": lambda t, f: f,
    "ground truth (mp4)": lambda t, f: _mp4_round_trip(f),
    "forgetful, W = 1.5 s": lambda t, f: baselines.forgetful(t, 1.5),
    "forgetful, W = 20 s": lambda t, f: baselines.forgetful(t, 20.0),
    "other seed after the long occlusion": lambda t, f: baselines.other_seed_after(t, _first_long(t), t.seed + 1),
    "noise sigma = 10": lambda t, f: baselines.noisy(f, 10),
    "noise sigma = 25": lambda t, f: baselines.noisy(f, 25),
    "frozen sprite": lambda t, f: baselines.frozen_sprite(t),
}


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def validation_rows() -> list[tuple[str, list[float]]]:
    results = {name: [] for name in GENERATORS}
    for spec in eval_worlds():
        track = simulate(spec)
        truth = render(track)
        for name, make in GENERATORS.items():
            results[name].append(world_metrics(make(track, truth), track))
    rows = []
    for name, ms in results.items():
        cells = []
        for bucket in BUCKETS:
            cells.append(_mean(m["restoration"]["buckets"][bucket]["restoration_error"] for m in ms))
        for bucket in BUCKETS:
            cells.append(_mean(m["restoration"]["buckets"][bucket]["permanence"] for m in ms))
        cells += [
            _mean(m["drift"]["mean"] for m in ms),
            _mean(m["dynamics"]["moving_fraction"] for m in ms),
            _mean(m["fidelity"]["palette"] for m in ms),
            _mean(m["fidelity"]["shape_validity"] for m in ms),
        ]
        rows.append((name, cells))
    return rows


HEADER = (
    "| video | restoration error short / mid / long | permanence short / mid / long | drift | "
    "sprite moving | palette fidelity | shape validity |\n|---|---|---|---|---|---|---|"
)


def markdown(rows) -> str:
    lines = [HEADER]
    for name, c in rows:
        lines.append(
            f"| {name} | {c[0]:.3f} / {c[1]:.3f} / {c[2]:.3f} | {c[3]:.2f} / {c[4]:.2f} / {c[5]:.2f} | "
            f"{c[6]:.4f} | {c[7]:.2f} | {c[8]:.3f} | {c[9]:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(validation_rows()))
