"""scripts/demo.py (`make demo`): the tour tests what the demo claims to show, and the side-by-side layout."""

from __future__ import annotations

import errno
import json
import os
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


def _fills_the_disk_halfway(write):
    """`write(path, ...)` as on a full disk: part of the file is written, then ENOSPC."""

    def full(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x93NUMPY" + b"\0" * 122)  # the 128 bytes a full disk left as slow_fast.npy
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return full


@pytest.mark.parametrize("writer", ["numpy.save", "pathlib.Path.write_text"])
def test_a_full_disk_stops_the_demo_with_one_line_and_no_partial_file(tmp_path, monkeypatch, capsys, writer):
    """Every file the demo writes goes through the atomic writers: a failed write leaves no file under its final
    name (`make demo` would evaluate it) and no temporary file."""
    module, name = writer.rsplit(".", 1)
    if module == "numpy":
        monkeypatch.setattr(np, "save", _fills_the_disk_halfway(np.save))
    else:
        real = Path.write_text

        def write_text(self, text, *args, **kwargs):
            if self.name.endswith(".jsonl"):
                return _fills_the_disk_halfway(real)(self)
            return real(self, text, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    assert demo.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"demo: error: cannot write {tmp_path}") and err.count("\n") == 1, err
    assert "No space left on device" in err and "nothing was written" in err
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    failed = "truth.npy" if module == "numpy" else "tour.jsonl"  # the first file of each kind the demo writes
    assert failed not in written and not any(".part" in p for p in written), written
    for path in tmp_path.rglob("*.json"):  # what was written before the failure is whole
        json.loads(path.read_text())
    for path in tmp_path.rglob("*.jsonl"):
        assert all(json.loads(line) for line in path.read_text().splitlines() if line.strip()), path
