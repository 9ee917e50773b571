"""One rule for torch's CPU threads (contextforcing/runtime/threads.py), used by every entry point: 1 thread on a machine
with at most 2 cores, else the cores not already busy; OMP_NUM_THREADS kept; --threads / threads= win."""

import pytest
import torch

import contextforcing as cf
from contextforcing.cli import main
from contextforcing.runtime import threads


@pytest.fixture
def machine(monkeypatch):
    """A machine of `cores` cores with `busy` of them loaded, and no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def make(cores: int, busy: int = 0) -> None:
        monkeypatch.setattr(threads, "usable_cores", lambda: cores)
        monkeypatch.setattr(threads, "busy_cores", lambda: busy)

    return make


@pytest.mark.parametrize(
    "cores, busy, torch_default, expected",
    [
        (1, 0, 1, 1),
        (2, 0, 2, 1),  # measured: a second thread was never faster on 2 cores (docs/performance.md)
        (2, 5, 2, 1),
        (8, 0, 8, 8),
        (8, 3, 8, 5),  # the cores not already busy
        (8, 12, 8, 1),  # all busy: still one
        (16, 0, 8, 8),  # never more than torch's own default (physical cores)
    ],
)
def test_the_rule(machine, cores, busy, torch_default, expected):
    machine(cores, busy)
    choice = threads.choose_threads(torch_default=torch_default)
    assert choice.count == expected and str(cores) in choice.reason


def test_omp_num_threads_and_an_explicit_count_win(machine, monkeypatch):
    machine(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads() == threads.ThreadChoice(3, "OMP_NUM_THREADS")
    assert threads.choose_threads(2) == threads.ThreadChoice(2, "asked for")
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(cf.UserError, match="threads must be a whole number >= 1"):
            threads.choose_threads(bad)


def test_every_entry_point_applies_it(machine, monkeypatch, tmp_path):
    machine(2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cf.Pipeline.random("tiny")  # the Python API's loaders
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert main(["world", "heldout", "--count", "1"]) == 0  # a command without a --threads flag
        assert torch.get_num_threads() == 1
        argv = ["generate", "--preset", "tiny", "--random-init", "--prompt", "p", "--seconds", "1", "--quiet"]
        assert main([*argv, "--out", str(tmp_path / "v.mp4"), "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        cf.Pipeline.random("tiny", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_commands_that_compute_take_threads():
    from contextforcing.cli import build_parser

    parser = build_parser()
    for argv in (
        ["generate", "--seconds", "1", "--out", "v.mp4"],
        ["bench", "--seconds", "1"],
        ["serve"],
        ["eval", "v.mp4", "--report", "r"],
        ["world", "render", "--heldout", "0", "--out", "o"],
        ["world", "dataset", "--count", "1", "--seconds", "1", "--out", "d"],
        ["train", "dmd"],
    ):
        assert parser.parse_args([*argv, "--threads", "3"]).threads == 3
