"""Atomic outputs, pairs that never mislabel, exclusive claims and the Ctrl-C guard (contextforcing/io/outputs.py)."""

import contextlib
import errno
import os
import signal

import pytest

from contextforcing.errors import Interrupted, UserError
from contextforcing.io import outputs


def _full_disk(tmp):
    tmp.write_bytes(b"half")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    dest = tmp_path / "report.json"
    dest.write_text("old")
    with pytest.raises(UserError) as err:
        outputs.write_atomic(dest, _full_disk)
    message = str(err.value)
    assert message.startswith(f"cannot write {dest}: No space left on device (") and "free in" in message
    assert message.endswith("the previous report.json is untouched") and "\n" not in message
    assert dest.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]


def test_other_exceptions_keep_their_type_and_leave_nothing(tmp_path):
    def broken(tmp):
        tmp.write_text("x")
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        outputs.write_atomic(tmp_path / "a.json", broken)
    assert os.listdir(tmp_path) == []


def test_writers_to_one_file_get_their_own_temporary_files_and_the_last_commit_wins(tmp_path):
    dest = tmp_path / "v.json"
    a = outputs.stage(dest, lambda tmp: tmp.write_text("a"))
    b = outputs.stage(dest, lambda tmp: tmp.write_text("b"))
    assert a.tmp != b.tmp and a.tmp.suffix == ".json" and a.tmp.name.startswith(".v.")
    a.commit()
    assert dest.read_text() == "a"
    b.commit()
    assert dest.read_text() == "b" and os.listdir(tmp_path) == ["v.json"]
    assert dest.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("killed_after", [0, 1, 2, 3])
def test_a_pair_never_mislabels_whenever_it_is_killed(tmp_path, monkeypatch, killed_after):
    """A hard kill after any rename of publish_pair: a companion on disk always describes the main file."""
    main, side = tmp_path / "v.mp4", tmp_path / "v.json"
    main.write_text("run 1")
    side.write_text("describes run 1")
    real, calls = os.replace, []

    def replace_then_die(src, dst):
        if len(calls) == killed_after:
            raise SystemExit("killed")
        calls.append(dst)
        real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace_then_die)
    new_main = outputs.stage(main, lambda tmp: tmp.write_text("run 2"))
    new_side = outputs.stage(side, lambda tmp: tmp.write_text("describes run 2"))
    with pytest.raises(SystemExit) if killed_after < 3 else contextlib.nullcontext():
        outputs.publish_pair(new_main, new_side)
    if side.exists():
        assert side.read_text() == f"describes {main.read_text()}"
    assert main.read_text() == ("run 1" if killed_after < 2 else "run 2")


def test_a_second_claim_names_the_holder_and_a_released_lock_is_reusable(tmp_path):
    path = tmp_path / ".lock"
    first = outputs.OutputLock(path, "run directory R").acquire()
    with pytest.raises(UserError) as err:
        outputs.OutputLock(path, "run directory R").acquire()
    assert str(err.value).startswith(f"run directory R is in use by pid {os.getpid()} on ")
    first.release()
    with outputs.OutputLock(path, "run directory R", remove=True):
        assert path.exists()
    assert not path.exists()


def test_interrupts_are_held_outside_interruptible_blocks_and_only_the_first_raises():
    before = signal.getsignal(signal.SIGINT)  # the default handler, or SIG_IGN in a background job of a script
    with outputs.InterruptGuard() as guard:
        signal.raise_signal(signal.SIGINT)  # held: a write or cleanup would go on
        assert guard.count == 1
        with pytest.raises(KeyboardInterrupt):  # ... and raised where the job may stop
            with guard.interruptible():
                pass
        with guard.interruptible():  # later Ctrl-C's are only counted, wherever they come
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        assert guard.count == 3
    with outputs.InterruptGuard() as guard, pytest.raises(KeyboardInterrupt):
        with guard.interruptible():
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == before  # restored


@pytest.fixture
def stop_signals_fail():
    """SIGTERM and SIGHUP fail the test where no guard handles them (their default would end the test run)."""

    def unhandled(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} reached the handler outside the guard")

    previous = {s: signal.signal(s, unhandled) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield unhandled
    for s, handler in previous.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_are_held_and_raised_like_ctrl_c(stop_signals_fail, signum):
    with outputs.InterruptGuard() as guard:
        signal.raise_signal(signum)  # held while a write would go on
        assert guard.count == 1 and guard.signum == signum
        with pytest.raises(Interrupted) as err, guard.interruptible():
            pass
        assert err.value.signum == signum
    assert signal.getsignal(signum) is stop_signals_fail  # restored


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_nothing_acted_on_is_raised_as_the_block_ends(stop_signals_fail, tmp_path, signum):
    with pytest.raises(Interrupted) as err:
        with outputs.InterruptGuard():
            signal.raise_signal(signum)
            outputs.write_text_atomic(tmp_path / "a.txt", "whole")  # the write goes on...
    assert err.value.signum == signum and (tmp_path / "a.txt").read_text() == "whole"  # ... then the stop


def test_a_sighup_ignored_by_nohup_stays_ignored(stop_signals_fail):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with outputs.InterruptGuard() as guard:
        signal.raise_signal(signal.SIGHUP)
        assert guard.count == 0
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
