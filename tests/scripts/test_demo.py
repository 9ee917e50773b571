"""scripts/demo.py (`make demo`): the tour tests what the demo claims to show, and the side-by-side layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import demo  # noqa: E402

from contextforcing.data.world.panorama import PanoramaSpec, simulate, track_revisits  # noqa: E402


def test_the_tour_pans_away_and_back_blacks_out_and_moves_a_ball():
    spec = PanoramaSpec(demo.tour(), 7, demo.SECONDS).validate()
    track = simulate(spec)
    revisits = track_revisits(track)
    buckets = {b: [r for r in revisits if r.bucket == b] for b in ("fast", "slow", "beyond")}
    assert all(buckets.values())  # revisits inside the fast memory, the slow memory's span, and beyond it
    assert max(r.delay_seconds for r in revisits) > 60  # a view comes back after more than a minute
    assert any("pan" in r.cause for r in buckets["beyond"]) and any(r.cause == "lights" for r in buckets["beyond"])
    assert len(buckets["fast"]) >= 4
    assert sum(not r.in_sink for r in revisits) > len(revisits) / 2  # mostly views the sink never showed
    prompts = track.prompts()
    assert {p.camera for p in prompts} == {"hold", "pan left", "pan right"}
    assert {p.lights_on for p in prompts} == {True, False}
    assert all(p.white and p.white.heading == "rightward" for p in prompts) and all(p.black for p in prompts)


def test_side_by_side_puts_the_videos_next_to_each_other():
    a, b = np.zeros((3, 4, 5, 3), np.uint8), np.full((3, 4, 5, 3), 7, np.uint8)
    both = demo.side_by_side([a, b], gap=2)
    assert both.shape == (3, 4, 12, 3)
    assert (both[:, :, :5] == 0).all() and (both[:, :, 5:7] == 255).all() and (both[:, :, 7:] == 7).all()


@pytest.mark.slow
def test_demo_writes_every_file(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CPU thread(s)" in result.stdout  # the thread count it chose, and how to change it
    assert "demo slow_fast" in result.stderr and "demo rolling" in result.stderr  # progress bars, on stderr only
    assert "chunk/s" not in result.stdout
    for name in (
        "tour.jsonl",
        "truth/annotations.json",
        "slow_fast.mp4",
        "slow_fast.json",
        "rolling.mp4",
        "side_by_side.mp4",
        "sheet_slow_fast.png",
        "slow_fast.npy",
        "rolling.npy",
    ):
        assert (tmp_path / name).is_file(), name
