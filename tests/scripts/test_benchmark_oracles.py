"""scripts/benchmark_oracles.py end to end on one short world: the table, the doc markers, the cache, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import benchmark_oracles as bo  # noqa: E402

from contextforcing.data.world.panorama import heldout  # noqa: E402
from contextforcing.data.world.panorama.generator import ScriptBuilder, chunks_for_seconds  # noqa: E402
from contextforcing.data.world.panorama.script import WhiteBall  # noqa: E402
from contextforcing.data.world.panorama.simulate import PanoramaSpec  # noqa: E402


@pytest.fixture
def one_short_world(monkeypatch):
    script = (
        ScriptBuilder("slate", WhiteBall("rightward", "fast"), False)
        .hold(2)
        .pan("right", 1)
        .pan("left", 1)
        .pan("right", 4)
        .hold(2)
        .lights_off(2)
        .pan("left", 4)
        .hold(2)
        .build(chunks_for_seconds(14))
    )
    monkeypatch.setattr(heldout, "heldout_worlds", lambda count: [PanoramaSpec(script, 5, 14)][:count])


def test_table_goes_between_the_markers_and_reruns_read_the_cache(one_short_world, tmp_path, monkeypatch, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{bo.BEGIN}\nold table\n{bo.END}\nafter\n")
    args = ["--codec", "none", "--worlds", "1", "--out", str(tmp_path / "cache"), "--doc", str(doc)]
    assert bo.main(args) == 0
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old table" not in text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    # memory score over every revisit (the truth's exact frames against the truth through the panorama codec,
    # which codec none still uses as the reference), then the old revisit error, made, camera, movers, lights
    truth = rows["| ground truth, exact frames (no codec)"].split(" | ")
    assert float(truth[1].split(" / ")[0]) >= 1.0
    assert truth[3:] == ["0.000 / 0.000 / n/a", "1.00 / 1.00 / n/a", "1.00 / 1.00", "1.00", "1.00 |"]
    assert "1 held-out worlds of 14 s" in text
    still = rows["| **still picture** (first frame)"].split(" | ")
    assert still[1] == "0.00 / 0.00 / 0.00 / n/a" and still[3:5] == ["n/a / n/a / n/a", "0.00 / 0.00 / n/a"]
    monkeypatch.setattr(bo, "world_cell", lambda *a: pytest.fail("cached world recomputed"))
    assert bo.main(args) == 0
    assert doc.read_text() == text


def test_a_doc_without_markers_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "doc.md").write_text("no markers\n")
    assert bo.main(["--codec", "none", "--worlds", "1", "--doc", str(tmp_path / "doc.md")]) == 2
    err = capsys.readouterr().err
    assert "has no <!-- BEGIN panorama-oracles -->" in err and err.count("\n") == 1
