"""One checkpoint manager over torch.distributed.checkpoint (DCP); resume = rerun the same command.

Layout of a run directory (one stage per run directory):

    RUN/run.json                       {"stage": NAME}: written once; another stage refuses to use RUN
    RUN/config.yaml                    the resolved config of the latest start (a resume may change only
                                       the keys of config.RESUME_CHANGEABLE)
    RUN/.lock                          flock of the job training in RUN (names its pid and host)
    RUN/checkpoints/step_000100/       one DCP checkpoint, written as .tmp_step_000100 and renamed when whole
        .metadata, __0_0.distcp, ...   sharded parts: each trainable group's model + optimizer, EMA, train state
        rank_00000.pt ...              per-rank parts: RNG states and the stage's own state (e.g. error buffer)
        meta.json                      step, stage, groups, EMA flag, every file's size: readable without DCP
                                       (export, listing), written last
    RUN/checkpoints/.broken_step_N/    a checkpoint that failed to load, moved aside on resume

Sharded parts stay sharded on disk (every rank writes its shards); DCP reshards on load, so a run may
resume on another world size (per-rank parts are then taken from rank 0's file when the rank's is absent).
The step directories must be on a filesystem all ranks share. Frozen modules are never saved.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import random
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from contextforcing.errors import UserError, first_line, format_bytes, warn
from contextforcing.io.outputs import OutputLock, free_bytes, fsync_dir, fsync_file, write_json_atomic
from contextforcing.training import distributed as dist

if TYPE_CHECKING:
    from contextforcing.training.run_config import TrainConfig

RUN_MARKER = "run.json"
LOCK = ".lock"
CHECKPOINTS = "checkpoints"
META = "meta.json"
_PREFIX = "step_"
_TMP_PREFIX = ".tmp_"
_BROKEN_PREFIX = ".broken_"


class ModelOptimizer(Stateful):
    """One trainable group as a DCP part: the module's and its optimizer's (sharded) state dicts."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer):
        self.module, self.optimizer = module, optimizer

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


class TrainState(Stateful):
    """Step, data position and stage name: identical on every rank."""

    def __init__(self, stage: str, step: int = 0, data_position: int = 0):
        self.stage, self.step, self.data_position = stage, step, data_position

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "step": self.step, "data_position": self.data_position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] != self.stage:
            raise UserError(f"checkpoint belongs to stage {state['stage']!r}, not {self.stage!r}")
        self.step, self.data_position = int(state["step"]), int(state["data_position"])


# -- RNG states ------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's global RNG states (the trainer reseeds per step anyway; this covers stray draws)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.copy()), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def quiet_single_process():
    """DCP warns on every call without a process group; one process is a supported, intended mode here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


# -- the manager -----------------------------------------------------------------------------------------------
def step_dir_name(step: int) -> str:
    return f"{_PREFIX}{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp dirs of interrupted saves are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and (p / META).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def read_meta(step_dir: Path) -> dict[str, Any]:
    return json.loads((step_dir / META).read_text())


# Why a checkpoint does not load, by what it means for the files (`Problem.kind`):
BROKEN = "broken"  # a file is missing, truncated or garbled: the checkpoint is set aside, the one before is tried
UNREADABLE = "unreadable"  # the files could not be read (permissions, I/O): nothing is renamed, the run stops
MISMATCH = "mismatch"  # whole, but of another model or config than this run's: nothing is renamed, the run stops


@dataclass(frozen=True)
class Problem:
    """Why a checkpoint cannot be loaded, and what kind of reason it is (BROKEN, UNREADABLE or MISMATCH)."""

    kind: str
    message: str


def checkpoint_problem(step_dir: Path) -> Problem | None:
    """Why `step_dir` is not a whole checkpoint (unreadable meta.json, a missing or truncated file), or None.

    meta.json records every file's size at save time, so a truncated shard is caught without reading it;
    checkpoints saved before it did are only checked for DCP's .metadata file. A file the OS refuses to read
    (permissions, an I/O error) is UNREADABLE, not BROKEN: it may be whole."""
    try:
        meta = read_meta(step_dir)
        files = dict(meta.get("files") or {".metadata": None})
    except OSError as err:
        return Problem(UNREADABLE, f"{err.filename or step_dir / META}: {err.strerror or first_line(err)}")
    except (ValueError, TypeError, AttributeError) as err:
        return Problem(BROKEN, f"{step_dir / META} is unreadable ({first_line(err)})")
    for name, size in files.items():
        path = step_dir / name
        if not path.is_file():
            return Problem(BROKEN, f"{path} is missing")
        if size is not None and path.stat().st_size != size:
            return Problem(BROKEN, f"{path} has {path.stat().st_size} bytes, {size} when it was saved")
    try:  # DCP's index of the shards: small, and what every load reads first
        FileSystemReader(str(step_dir)).read_metadata()
    except IO_ERRORS as err:
        kind = UNREADABLE if isinstance(_cause(err), OSError) else BROKEN
        return Problem(kind, f"{step_dir / '.metadata'} is unreadable ({_failure(err)})")
    return None


def _cause(err: BaseException) -> BaseException:
    """The exception behind a failed checkpoint read or write (DCP wraps each rank's exception in its own)."""
    if isinstance(err, CheckpointException) and err.failures:
        return next(iter(err.failures.values()))[0]
    return err


def _failure(err: BaseException) -> str:
    """One line for a failed checkpoint read or write."""
    err = _cause(err)
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return first_line(err)


def load_problem(step_dir: Path, err: BaseException) -> Problem:
    """What a failed load means: DCP's plan step (before any data is read) fails only when the stored tensors
    do not fit the ones asked for (another shape, a missing key: another model); the OS refusing a read is
    UNREADABLE; anything else (truncated or garbled data) is BROKEN."""
    reason = _failure(err)
    reason = reason if reason.startswith(str(step_dir)) else f"{step_dir} cannot be read ({reason})"
    cause = _cause(err)
    if (isinstance(err, CheckpointException) and err.args[0] == "plan") or isinstance(cause, UserError):
        return Problem(MISMATCH, first_line(cause))
    return Problem(UNREADABLE if isinstance(cause, OSError) else BROKEN, reason)


# What a checkpoint read or write may raise when a file is broken or the disk is full (torch's zip writer
# reports a full disk as a RuntimeError; DCP wraps each rank's error in a CheckpointException).
IO_ERRORS = (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, CheckpointException)


def _save_per_rank(obj: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _on_main(action) -> str | None:
    """Run `action()` on rank 0; its failure as one line, on every rank (None when it succeeded)."""
    error = None
    if dist.is_main():
        try:
            action()
        except IO_ERRORS as err:
            error = _failure(err)
    return dist.broadcast_object(error)


class CheckpointManager:
    """Saves and loads named parts of one stage's run directory (call every method on every rank)."""

    def __init__(
        self, run_dir: str | Path, stage: str, keep_last: int = 3, config: "TrainConfig | None" = None
    ) -> None:
        """`config`: the run's resolved config, recorded in every checkpoint's meta.json (so a checkpoint of
        another config is refused naming what differs)."""
        self.run_dir, self.stage, self.keep_last, self.config = Path(run_dir), stage, keep_last, config
        self.root = self.run_dir / CHECKPOINTS

    def lock(self) -> OutputLock | None:
        """Claim RUN for this job: rank 0 holds an flock on RUN/.lock until `release()`; while another job
        holds it, every rank stops with the same one line naming the holder. None on ranks other than 0."""
        held: list[OutputLock] = []

        def take() -> None:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(f"cannot create run directory {self.run_dir}: {err.strerror}") from None
            held.append(OutputLock(self.run_dir / LOCK, f"run directory {self.run_dir}").acquire())

        dist.main_decides(take)
        return held[0] if held else None

    def claim(self) -> None:
        """Mark RUN as this stage's, or refuse (one line) when it already belongs to another stage."""
        dist.main_decides(self._claim_on_main)

    def _claim_on_main(self) -> None:
        owner = self._owner()
        if owner is not None and owner != self.stage:
            raise UserError(
                f"run directory {self.run_dir} belongs to stage {owner!r}, not {self.stage!r}; "
                f"give this stage its own trainer.run_dir"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.run_dir / RUN_MARKER
        if not marker.exists():
            write_json_atomic(marker, {"stage": self.stage}, indent=None)

    def _owner(self) -> str | None:
        marker = self.run_dir / RUN_MARKER
        if marker.is_file():
            try:
                return json.loads(marker.read_text())["stage"]
            except (ValueError, KeyError, TypeError):
                return f"<unreadable {RUN_MARKER}>"
        for step_dir in reversed(list_checkpoints(self.run_dir)):
            if checkpoint_problem(step_dir) is None:
                return read_meta(step_dir).get("stage")
        return None

    def latest(self) -> Path | None:
        found = list_checkpoints(self.run_dir)
        return found[-1] if found else None

    def save(self, step: int, parts: dict[str, Any], per_rank: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write `parts` (Stateful or state dicts, sharded by DCP) and this rank's `per_rank` dict as
        checkpoint `step`, atomically: readers only ever see complete step directories. A failed write (a full
        disk) removes the partial one and stops every rank with one line; the checkpoints before it stay."""
        final = self.root / step_dir_name(step)
        tmp = self.root / f"{_TMP_PREFIX}{final.name}"

        def fresh_tmp() -> None:
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a save that was killed halfway
            tmp.mkdir(parents=True)

        error = _on_main(fresh_tmp)
        if not error:
            error = dist.first_error(self._write_parts(tmp, parts, per_rank))
        if not error:
            error = _on_main(lambda: self._publish(tmp, final, {**meta, **self._identity(step)}))
        if error:
            self._abandon(tmp, step, error)
        if dist.is_main():
            self._prune()
        dist.barrier()
        return final

    def _write_parts(self, tmp: Path, parts: dict[str, Any], per_rank: dict[str, Any]) -> str | None:
        try:
            with quiet_single_process():
                dcp.save(parts, checkpoint_id=str(tmp), no_dist=not dist.initialized())
            _save_per_rank(per_rank, tmp / f"rank_{dist.rank():05d}.pt")
        except IO_ERRORS as err:
            return _failure(err)
        return None

    def _identity(self, step: int) -> dict[str, Any]:
        """What meta.json says of the run that saved a checkpoint."""
        config = None if self.config is None else self.config.to_dict()  # tuples become JSON lists, as in config.yaml
        return {"step": step, "stage": self.stage, "world_size": dist.world_size(), "config": config}

    def _abandon(self, tmp: Path, step: int, error: str) -> None:
        dist.barrier()
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        free = free_bytes(self.root)
        room = f" ({format_bytes(free)} free)" if free is not None else ""
        kept = self.latest()
        raise UserError(
            f"cannot save checkpoint step {step} in {self.root}: {error}{room}; "
            + (f"{kept.name} is kept, rerun to resume from it" if kept else "no checkpoint is kept")
        )

    def _publish(self, tmp: Path, final: Path, meta: dict[str, Any]) -> None:
        # Every rank's files are complete here (after the collective write), so their sizes go in meta.json.
        meta["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        fsync_file(tmp / META)
        if final.exists():  # the same step saved again (e.g. rerun after a crash right after this save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.root)

    def _prune(self) -> None:
        for old in list_checkpoints(self.run_dir)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, step_dir: Path, parts: dict[str, Any]) -> dict[str, Any]:
        """Load `parts` in place (DCP reshards to the current world size); returns this rank's per-rank dict."""
        meta = read_meta(step_dir)
        if meta.get("stage") != self.stage:
            raise UserError(f"checkpoint {step_dir} belongs to stage {meta.get('stage')!r}, not {self.stage!r}")
        groups = sorted(k for k, v in parts.items() if isinstance(v, ModelOptimizer))
        if meta.get("groups") is not None and sorted(meta["groups"]) != groups:
            raise UserError(f"it trains groups {', '.join(sorted(meta['groups']))}, this run {', '.join(groups)}")
        with quiet_single_process():
            dcp.load(parts, checkpoint_id=str(step_dir), no_dist=not dist.initialized())
        mine = step_dir / f"rank_{dist.rank():05d}.pt"
        path = mine if mine.is_file() else step_dir / "rank_00000.pt"
        try:
            return torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by save()
        except OSError:
            raise
        except IO_ERRORS as err:
            raise RuntimeError(f"{path} is unreadable ({_failure(err)})") from None

    def load_latest(self, parts: dict[str, Any], restart: bool = False) -> dict[str, Any] | None:
        """Load the newest whole checkpoint into `parts`; returns this rank's per-rank dict, or None when the run
        starts from step 0.

        A broken one (truncated or missing file, garbled data) is moved aside to checkpoints/.broken_step_N with
        a warning and the one before it is loaded instead (every part is loaded again from it, so nothing of the
        broken one remains). One that cannot be read (permissions, I/O) or that is whole but of another model or
        config stops the run with one line and renames nothing. A run with no checkpoint left to load but
        checkpoints set aside (now or by an earlier run) starts from step 0 only with `restart`."""
        problems = []
        for step_dir in reversed(list_checkpoints(self.run_dir)):
            problem, per_rank = self._try_load(step_dir, parts)
            if problem is None:
                return per_rank
            if problem.kind != BROKEN:
                raise UserError(self._refusal(step_dir, problem))
            problems.append(problem.message)
            aside = self._set_aside(step_dir)
            if dist.is_main():
                warn(
                    f"checkpoint {step_dir.name} is broken: {problem.message}; moved to {aside}, trying the one before"
                )
        if problems and not restart:
            raise UserError(
                f"no checkpoint of {self.run_dir} can be loaded: {'; '.join(problems)}; rerun with --restart to "
                f"train from step 0 (the broken ones stay in {self.root})"
            )
        self.check_restart(restart)
        return None

    def set_aside(self) -> list[Path]:
        """Checkpoints moved aside as broken (by this run or an earlier one), oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(_BROKEN_PREFIX))

    def check_restart(self, restart: bool) -> None:
        """A run with no checkpoint to load but some set aside as broken starts from step 0 only with `restart`
        (one line otherwise, naming them): a second run must not quietly retrain what the first had trained."""
        if list_checkpoints(self.run_dir):
            return
        aside = self.set_aside()
        if not aside:
            return
        names = ", ".join(p.name for p in aside)
        if not restart:
            raise UserError(
                f"run directory {self.run_dir} has no checkpoint to resume from: {names} in {self.root} were set "
                f"aside as broken; rerun with --restart to train from step 0 (they stay where they are)"
            )
        if dist.is_main():
            warn(f"--restart: training {self.run_dir} from step 0; {names} stay in {self.root}")

    def _refusal(self, step_dir: Path, problem: Problem) -> str:
        if problem.kind == UNREADABLE:
            return (
                f"cannot read checkpoint {step_dir.name}: {problem.message}; nothing was renamed: make it readable "
                f"and rerun"
            )
        return (
            f"checkpoint {step_dir} does not fit this run ({problem.message}); {_config_difference(step_dir, self.config)}"
            f"; rerun with that config, or give this one a new trainer.run_dir (nothing was renamed)"
        )

    def _try_load(self, step_dir: Path, parts: dict[str, Any]) -> tuple[Problem | None, dict[str, Any] | None]:
        problem, per_rank = checkpoint_problem(step_dir), None
        if problem is None:
            try:
                per_rank = self.load(step_dir, parts)
            except (*IO_ERRORS, UserError) as err:
                problem = load_problem(step_dir, err)
        return dist.first_error(problem), per_rank

    def _set_aside(self, step_dir: Path) -> Path:
        aside = self.root / f"{_BROKEN_PREFIX}{step_dir.name}"
        for n in itertools.count(2):
            if not aside.exists():
                break
            aside = self.root / f"{_BROKEN_PREFIX}{step_dir.name}_{n}"
        dist.barrier()
        if dist.is_main():
            os.replace(step_dir, aside)
        dist.barrier()
        return aside


def _config_difference(step_dir: Path, config: "TrainConfig | None") -> str:
    """Both configs, as what differs between the checkpoint's (recorded in its meta.json) and this run's."""
    saved = read_meta(step_dir).get("config")
    if saved is None or config is None:
        return "its config is not recorded (saved by an older version) and RUN/config.yaml is missing"
    from contextforcing.training.run_config import resume_changes

    allowed, refused = resume_changes(saved, config)
    changes = refused or allowed  # what a resume may not change, when anything
    if not changes:
        return "its config is this run's"
    return f"it was saved with another config (checkpoint -> this run): {', '.join(changes)}"
