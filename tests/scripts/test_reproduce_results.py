"""scripts/reproduce_results.py: the statistics it reports, and one small end-to-end run (cells, resume, doc)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "reproduce_results.py"
sys.path.insert(0, str(SCRIPT.parent))
import results_tables as rr  # noqa: E402


@pytest.mark.parametrize("wins,losses", [(0, 0), (0, 1), (3, 3), (1, 7), (8, 2), (0, 9)])
def test_sign_test_matches_enumerating_every_outcome(wins, losses):
    n = wins + losses
    observed = abs(wins - losses)
    outcomes = list(itertools.product((0, 1), repeat=n))
    as_uneven = sum(abs(2 * sum(o) - n) >= observed for o in outcomes)
    assert rr.sign_test(wins, losses) == pytest.approx(as_uneven / len(outcomes))


def test_paired_difference_pairs_worlds_by_prompt_and_seed_not_by_order():
    base = {("a", 1): 0.5, ("b", 2): 0.9, ("c", 3): 0.2}
    row = {("c", 3): 0.1, ("a", 1): 0.5, ("b", 2): 1.0, ("d", 4): 0.0}  # ("d", 4) has no partner
    text = rr.paired_difference(row, base)
    assert text.startswith("+0.000 ")  # differences -0.1, 0, +0.1: median 0
    assert "lower in 1/3, higher in 1 " in text and "(p = 1)" in text
    assert rr.paired_difference({("x", 0): 1.0}, base) == "n/a"


def run_script(tmp_path, *args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--doc", str(tmp_path / "doc.md"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


SMALL = ("--worlds", "1", "--seconds", "12", "--rows", "truth_codec,still,slow_fast,rolling", "--workers", "1")


def test_small_run_writes_cells_resumes_and_fills_the_document(tmp_path):
    (tmp_path / "doc.md").write_text((REPO / "docs" / "results.md").read_text())
    first = run_script(tmp_path, *SMALL)
    assert first.returncode == 0, first.stderr[-2000:]
    cells = sorted((tmp_path / "out" / "cells").rglob("*.json"))
    assert len(cells) == 4  # rows x 1 world
    truth = json.loads((tmp_path / "out/cells/12s/truth_codec/000.json").read_text())
    assert truth["headline"]["camera_pans"] == 1.0 and truth["headline"]["memory_score"] == 1.0  # the ceiling
    assert truth["revisits"] and all(r["made"] and r["memory"] == r["truth"] for r in truth["revisits"])
    still = json.loads((tmp_path / "out/cells/12s/still/000.json").read_text())
    # never leaves the view: every revisit of the script counts, as forgotten
    assert still["headline"]["camera_pans"] == 0.0 and len(still["revisits"]) == len(truth["revisits"])
    assert still["headline"]["memory_score"] == 0.0 and not any(r["made"] for r in still["revisits"])
    model = json.loads((tmp_path / "out/cells/12s/rolling/000.json").read_text())
    assert model["memory"]["policy"] == "rolling" and model["memory"]["window"] == 12
    doc = (tmp_path / "doc.md").read_text()
    assert "| perfect memory: the ground truth through the codec | 1 | 1.00 / " in doc
    assert "| still picture (first frame) | 1 | 0.00 / 0.00 / " in doc
    assert "| rolling window, 12 frames = 3 s (Self-Forcing) | 1 | " in doc
    assert "above the slow tier emptied: not measured (slow_empty has no cells)" in doc  # targets: a row not run
    assert (tmp_path / "results" / "memory_by_delay.png").is_file()

    stamps = [p.stat().st_mtime_ns for p in cells]
    again = run_script(tmp_path, *SMALL)
    assert again.returncode == 0 and "0 cells to generate" in again.stdout
    assert [p.stat().st_mtime_ns for p in cells] == stamps  # nothing regenerated


@pytest.mark.parametrize(
    "args,doc_text,message",
    [
        (("--rows", "slow_fast,nonsense"), None, "unknown row: nonsense"),
        (("--seconds", "100"), None, "--seconds in (0, 90]"),
        ((), "# no markers here\n", "has no '<!-- BEGIN headline -->'"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_any_cell(tmp_path, args, doc_text, message):
    (tmp_path / "doc.md").write_text(doc_text or (REPO / "docs" / "results.md").read_text())
    result = run_script(tmp_path, *SMALL, *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "cells").exists()
