"""Outputs that are whole or absent: atomic files, pairs of files, exclusive claims, and Ctrl-C that waits.

Every writer of the package goes through here (videos and their sidecars, evaluation reports, converted and
exported weights, checkpoint metadata), so one set of rules holds everywhere:

- A file is written under a unique temporary name in its destination's directory (`.NAME.XXXXXXXX.part.EXT`:
  two writers never share one, and a rename within a directory is atomic), flushed to disk, then renamed
  over the destination. Any failure (a full disk, an encoder that could not finish, an exception) removes the
  temporary file, leaves the destination as it was and raises a one-line `UserError` naming the file, the
  reason and the free space left.
- `publish_pair` puts a file and its companion (a video and its sidecar) in place so that a companion on disk
  always describes the file beside it.
- `OutputLock` gives one process an exclusive claim on an output or a run directory; a second one gets one
  line naming the holder.
- `InterruptGuard` holds Ctrl-C wherever files are being written or finished, so neither a first nor a second
  Ctrl-C can cut a write or a cleanup short.

Only a hard kill (SIGKILL, power loss) between two renames of `publish_pair` can leave a file without its
companion; it never leaves a half-written file under a final name. What a killed writer can leave behind is
its temporary file (`.NAME.*.part.EXT`), which is safe to delete.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from contextforcing.errors import Interrupted, UserError, first_line, format_bytes, note, quote

try:  # POSIX; where it is missing (Windows) outputs are still atomic but not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

TEMP_MARK = ".part"
_RANDOM_CHARS = 8  # what tempfile.mkstemp puts between a temporary name's prefix and suffix
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP)  # filesystems that do not support flock


# -- one-line errors -------------------------------------------------------------------------------------------
def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (None if unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def write_error(dest: str | os.PathLike, err: BaseException | str) -> UserError:
    """A failed write as one line: the file, the reason, the free space left (a full disk is the usual cause),
    and what became of the file that was there before."""
    dest = Path(dest)
    reason = (
        err
        if isinstance(err, str)
        else (err.strerror if isinstance(err, OSError) and err.strerror else first_line(err))
    )
    free = free_bytes(dest.parent)
    room = f" ({format_bytes(free)} free in {dest.parent})" if free is not None else ""
    kept = f"the previous {dest.name} is untouched" if dest.exists() else "nothing was written"
    return UserError(f"cannot write {dest}: {reason}{room}; {kept}")


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if file `path` cannot be created."""
    path = Path(path)
    parent = path.parent  # Path("v.mp4").parent is Path(".")
    if path.is_dir():
        raise UserError(f"output path {path} is a directory")
    if not parent.is_dir():
        raise UserError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output directory {parent} is not writable")
    check_name_fits(path)
    return path


def check_name_fits(path: Path, companions: tuple[Path, ...] = ()) -> None:
    """Fail early unless the temporary names `path` and its `companions` (a video's sidecar) are written under
    (`temp_beside`) fit the filesystem's limit on a file name: one that fits only without them would fail after
    the work, at the write."""
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        return
    temporary = max(len(os.fsencode(_temp_name(p, "x" * _RANDOM_CHARS))) for p in (path, *companions))
    if temporary > limit:
        longest = limit - (temporary - len(os.fsencode(path.name)))
        raise UserError(
            f"output name {quote(path.name)} is too long: it is written under a temporary name of {temporary} bytes, "
            f"more than the {limit} a file name may have in {path.parent}; use at most {longest} bytes"
        )


def check_creatable(path: str | os.PathLike, directory: bool = False, what: str = "output") -> Path:
    """Fail early, before any work, unless `path` exists as a writable file (a directory when `directory`) or
    can be created with its missing parents."""
    path = Path(path)
    kind = "a directory" if directory else "a file"
    if path.exists():
        if path.is_dir() != directory:
            raise UserError(f"{what} {path} exists and is not {kind}")
        if not os.access(path if directory else path.parent, os.W_OK):
            raise UserError(f"{what} {path} is not writable")
        return path
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"cannot create {what} {path}: {existing} is not a writable directory")
    return path


# -- staged files ---------------------------------------------------------------------------------------------
@functools.cache
def _file_mode() -> int:
    """The mode a plain `open(path, 'w')` would give (mkstemp makes 0600 files; outputs should not differ)."""
    try:
        match = re.search(r"^Umask:\s*([0-7]+)$", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match:
        mask = int(match.group(1), 8)
    else:  # pragma: no cover  (no /proc: read the umask by setting it, then restore it)
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def temp_beside(dest: str | os.PathLike) -> Path:
    """A new empty file with a unique name in dest's directory, keeping dest's extension (encoders and
    savers choose their format from it): `.NAME.XXXXXXXX.part.EXT`."""
    dest = Path(dest)
    prefix, suffix = _temp_name(dest).split("/")
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=prefix, suffix=suffix)
    os.close(fd)
    return Path(name)


def _temp_name(dest: Path, random: str = "/") -> str:
    """`temp_beside`'s name for `dest` with `random` where mkstemp puts its random characters."""
    return f".{dest.stem}.{random}{TEMP_MARK}{dest.suffix}"


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable (some filesystems cannot fsync a directory; then it is skipped)."""
    try:
        fsync_file(path)
    except OSError:
        pass


@dataclass
class StagedFile:
    """A complete file, flushed to disk under a temporary name beside `dest`, waiting to be renamed over it."""

    tmp: Path
    dest: Path

    def commit(self) -> Path:
        try:
            os.replace(self.tmp, self.dest)
        except OSError as err:
            self.discard()
            raise write_error(self.dest, err) from None
        fsync_dir(self.dest.parent)
        return self.dest

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def seal(tmp: Path, dest: Path) -> StagedFile:
    """A finished temporary file as a `StagedFile`: the usual file mode, flushed to disk."""
    os.chmod(tmp, _file_mode())
    fsync_file(tmp)
    return StagedFile(tmp, dest)


def stage(
    dest: str | os.PathLike, write: Callable[[Path], Any], errors: tuple[type[BaseException], ...] = (OSError,)
) -> StagedFile:
    """`write(tmp)` into a fresh temporary file beside `dest`, flushed to disk. On any failure the temporary
    file is removed; `errors` (OSError by default; add a library's own I/O error) become a one-line UserError."""
    dest = Path(dest)
    try:
        tmp = temp_beside(dest)
    except OSError as err:
        raise write_error(dest, err) from None
    try:
        write(tmp)
        return seal(tmp, dest)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, errors) and not isinstance(err, UserError):
            raise write_error(dest, err) from None
        raise


def write_atomic(
    dest: str | os.PathLike, write: Callable[[Path], Any], errors: tuple[type[BaseException], ...] = (OSError,)
) -> Path:
    """Write `dest` whole or not at all (see `stage`)."""
    return stage(dest, write, errors).commit()


def write_text_atomic(dest: str | os.PathLike, text: str) -> Path:
    return write_atomic(dest, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_text(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(obj, indent=indent) + "\n"


def write_json_atomic(dest: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    return write_text_atomic(dest, json_text(obj, indent))


def _set_aside(path: Path) -> Path | None:
    """Rename `path` to a temporary name beside it (None when there is no such file)."""
    if not path.exists():
        return None
    aside = temp_beside(path)
    os.replace(path, aside)
    return aside


def publish_pair(main: StagedFile, companion: StagedFile) -> None:
    """Rename `main` and its `companion` (e.g. a video and the sidecar that describes it) into place.

    Order: the old companion is set aside, `main` is renamed in, then the new companion, then the old one is
    deleted. At every instant a companion under its final name describes the main file beside it: a hard kill
    between two renames leaves a main file without a companion (the previous one under a `.part` name), never
    a mismatched pair. Call it with Ctrl-C held (inside `InterruptGuard`) so only a hard kill can part them.
    """
    try:
        old = _set_aside(companion.dest)
    except OSError as err:
        main.discard()
        companion.discard()
        raise write_error(companion.dest, err) from None
    try:
        main.commit()
    except UserError:
        companion.discard()
        if old is not None:
            os.replace(old, companion.dest)
        raise
    companion.commit()
    if old is not None:
        old.unlink(missing_ok=True)


def publish_with(main: StagedFile, companion_dest: str | os.PathLike, write_companion: Callable[[Path], Any]) -> None:
    """Stage the companion of a staged `main` (which is discarded if that fails), then `publish_pair` both."""
    try:
        companion = stage(companion_dest, write_companion)
    except BaseException:
        main.discard()
        raise
    publish_pair(main, companion)


@contextmanager
def staged_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary directory beside `dest` for a job that writes several files; it is removed when the
    block ends (move the finished files out with `publish_files` inside the block)."""
    dest = Path(dest)
    try:
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=TEMP_MARK))
    except OSError as err:
        raise write_error(dest, err) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_files(tmp_dir: Path, dest: Path) -> list[Path]:
    """Rename every file written in `tmp_dir` into directory `dest` (created if needed), flushed first. Files of
    `dest` that `tmp_dir` does not hold stay; call it with Ctrl-C held so the set is renamed in one go."""
    files = sorted(p for p in tmp_dir.iterdir() if p.is_file())
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for path in files:
            fsync_file(path)
        for path in files:
            os.replace(path, dest / path.name)
    except OSError as err:
        raise write_error(dest, err) from None
    fsync_dir(dest)
    return [dest / p.name for p in files]


# -- exclusive claims -------------------------------------------------------------------------------------------
def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class OutputLock:
    """An exclusive claim on something (an output file, a run directory) through an flock on `path`.

    The lock file names its holder ("pid N on HOST"); a second claimant gets a one-line UserError naming it.
    The kernel drops an flock when its process dies, so a killed holder never blocks the next run (its lock
    file is simply reused). `remove=True` deletes the lock file on release; the claimant then checks it locked
    the file that is still at `path`, so a release racing a new claim can never let two holders in.
    """

    def __init__(self, path: str | os.PathLike, what: str, remove: bool = False):
        self.path, self.what, self.remove = Path(path), what, remove
        self.fd: int | None = None

    def acquire(self) -> "OutputLock":
        if fcntl is None:  # pragma: no cover
            return self
        while self.fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"cannot create lock file {self.path}: {err.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise UserError(
                    f"{self.what} is in use by {holder} (lock {self.path}); wait for it to finish or stop it"
                ) from None
            except OSError as err:
                if err.errno not in _NO_LOCKS:
                    os.close(fd)
                    raise
                self.fd = fd  # a filesystem without flock: unlocked, the outputs are still atomic
                break
            if _same_file(fd, self.path):
                self.fd = fd
            else:  # the previous holder removed the file between our open and our lock: try again
                os.close(fd)
        try:  # who holds it, for the next claimant's message (on a full disk the lock works without it)
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        if self.remove:
            self.path.unlink(missing_ok=True)  # while still locked: see the class docstring
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- Ctrl-C, SIGTERM, SIGHUP -------------------------------------------------------------------------------------
# What stops a job from outside: a terminal's Ctrl-C (SIGINT), a job scheduler or `kill` (SIGTERM; torchrun forwards
# it to every worker), a closed terminal or ssh session (SIGHUP). Each is handled like Ctrl-C.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class InterruptGuard:
    """The stop-signal policy (Ctrl-C, SIGTERM, SIGHUP: `STOP_SIGNALS`) of a job that writes files, for the
    duration of a `with` block.

    Inside the block a stop signal is held: counted, never raised, so no write or cleanup can be cut short; the job
    checks `interrupted` where it can stop (a trainer after each step, a writer before publishing). Inside
    `interruptible()`, around long work that writes nothing (loading, computing a chunk), the first signal raises
    `Interrupted` (a KeyboardInterrupt that knows its signal) at once, and one held before the block raises on
    entering it. Only the first signal ever raises; later ones are only counted, so a second Ctrl-C can never cut
    the cleanup of the first short. A signal held to the end of the block that nothing acted on is raised as the
    block ends, after its writes: a SIGTERM is never swallowed. `notice`, if given, is printed to stderr on the
    first signal. A SIGTERM or SIGHUP the process was started with ignored (`nohup`) stays ignored. Signal
    handlers belong to the main thread: in another thread the guard changes nothing.
    """

    def __init__(self, notice: str | None = None):
        self.count, self.notice, self.signum = 0, notice, signal.SIGINT
        self._open, self._raised, self._previous = 0, False, {}

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signum != signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous = {}
        if self.count and not self._raised and kind is None:
            self._raised = True
            raise Interrupted("", self.signum)

    @property
    def interrupted(self) -> bool:
        return self.count > 0

    def _on_signal(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1:
            return
        self.signum = signum
        if self.notice:
            note(self.notice)
        if self._open:
            self._raised = True
            raise Interrupted("", signum)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block that the first stop signal ends at once (it must leave no file half-written)."""
        if self.count and not self._raised:  # a signal held until now: act on it here
            self._raised = True
            raise Interrupted("", self.signum)
        self._open += 1
        try:
            yield
        finally:
            self._open -= 1
