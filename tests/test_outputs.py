"""Atomic outputs, pairs that never mislabel, exclusive claims and the Ctrl-C guard (contextforcing/outputs.py)."""

import contextlib
import errno
import os
import signal

import pytest

from contextforcing import outputs
from contextforcing.errors import UserError


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
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
