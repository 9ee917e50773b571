"""scripts/train_toy_model.py: a failed gate stops the recipe with one line naming the numbers (exit 3); a passed
gate is recorded and not measured again for the same export; the gates' comparisons."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import gates  # noqa: E402
import train_toy_model as ttm  # noqa: E402

TINY = [
    "--scale",
    "0.0004",
    "--no-ship",
    "--set",
    "teacher:stage.data.pool=1",
    "--set",
    "teacher:stage.data.seconds=6",
    "--set",
    "teacher:stage.history_max=12",
    "--set",
    "teacher:stage.data.micro_batch=1",
]


def test_a_failed_gate_stops_the_recipe_with_one_line(tmp_path, monkeypatch, capsys):
    calls = []

    def failing(exports, cfg, count):
        calls.append(exports)
        return gates.GateResult(False, "teacher loss 0.9 with its memory, 0.9 with the fast frames only (ratio 1.000)")

    monkeypatch.setitem(gates.GATES, "teacher", failing)
    code = ttm.main(["--root", str(tmp_path), "--stages", "teacher,ode", *TINY])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("teacher:")]  # no bars
    assert (
        code == ttm.GATE_FAILED and len(err) == 1 and "gate after teacher failed" in err[0] and "ratio 1.000" in err[0]
    )
    record = json.loads((tmp_path / "recipe.json").read_text())
    assert record["gates"]["teacher"]["passed"] is False and "ode" not in record["stages"]  # the next stage never ran
    assert (tmp_path / "exports" / "teacher.safetensors").is_file() and len(calls) == 1


def test_a_passed_gate_is_recorded_and_not_measured_again(tmp_path, monkeypatch, capsys):
    calls = []

    def passing(exports, cfg, count):
        calls.append(count)
        return gates.GateResult(True, "fine", {"x": 1.0})

    monkeypatch.setitem(gates.GATES, "teacher", passing)
    args = ["--root", str(tmp_path), "--stages", "teacher", "--gate-worlds", "2", *TINY]
    assert ttm.main(args) == 0 and ttm.main(args) == 0
    assert calls == [2]  # the second run found the same export's gate in recipe.json
    gate = json.loads((tmp_path / "recipe.json").read_text())["gates"]["teacher"]
    assert gate["passed"] and gate["numbers"] == {"x": 1.0}


CFG = type("Cfg", (), {"stage": type("S", (), {"memory": {}, "model": "world"})()})()


@pytest.mark.parametrize(
    "teacher, student, passed", [(0.6, 0.4, True), (0.3, 0.4, False), (None, 0.4, False), (0.3, None, False)]
)
def test_the_stage1_gate_asks_the_teacher_to_remember_more_and_fails_on_a_missing_number(
    monkeypatch, teacher, student, passed
):
    def behaviour(weights, cfg, count, sampling=None):
        return {"memory_beyond_fast": teacher if sampling else student}

    monkeypatch.setattr(gates, "behaviour", behaviour)
    result = gates.dmd_gate(Path("exports"), CFG, 2)
    assert result.passed == passed and "teacher" in result.line


@pytest.mark.parametrize(
    "stage2, passed",
    [
        ({"m": 0.4, "camera_pans": 0.5, "movers": 0.5}, True),
        ({"m": 0.3, "camera_pans": 0.5, "movers": 0.5}, False),
        ({"m": 0.5, "camera_pans": 0.3, "movers": 0.5}, False),
        ({"m": None, "camera_pans": 0.5, "movers": 0.5}, False),
        ({"m": 0.5, "camera_pans": 0.5, "movers": None}, False),
    ],
)
def test_the_stage2_gate_asks_to_remember_as_much_without_losing_motion(monkeypatch, stage2, passed):
    stage1 = {"m": 0.4, "camera_pans": 0.5, "movers": 0.5}

    def behaviour(weights, cfg, count, sampling=None):
        m = stage2 if "cdmd" in str(weights) else stage1
        return {"memory_beyond_fast": m["m"], "camera_pans": m["camera_pans"], "movers": m["movers"]}

    monkeypatch.setattr(gates, "behaviour", behaviour)
    result = gates.cdmd_gate(Path("exports"), CFG, 2)
    assert result.passed == passed
