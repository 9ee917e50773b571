"""One checkpoint manager over torch.distributed.checkpoint (DCP); resume = rerun the same command.

Layout of a run directory (one stage per run directory):

    RUN/run.json                       {"stage": NAME}: written once; another stage refuses to use RUN
    RUN/config.yaml                    the resolved config of the latest start
    RUN/checkpoints/step_000100/       one DCP checkpoint, written as .tmp_step_000100 and renamed when whole
        .metadata, __0_0.distcp, ...   sharded parts: each trainable group's model + optimizer, EMA, train state
        rank_00000.pt ...              per-rank parts: RNG states and the stage's own state (e.g. error buffer)
        meta.json                      step, stage, groups, EMA flag: readable without DCP (export, listing)

Sharded parts stay sharded on disk (every rank writes its shards); DCP reshards on load, so a run may
resume on another world size (per-rank parts are then taken from rank 0's file when the rank's is absent).
The step directories must be on a filesystem all ranks share. Frozen modules are never saved.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from contextforcing.errors import UserError
from contextforcing.training import distributed as dist

RUN_MARKER = "run.json"
CHECKPOINTS = "checkpoints"
META = "meta.json"
_PREFIX = "step_"
_TMP_PREFIX = ".tmp_"


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
def _quiet_single_process():
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
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def read_meta(step_dir: Path) -> dict[str, Any]:
    return json.loads((step_dir / META).read_text())


class CheckpointManager:
    """Saves and loads named parts of one stage's run directory (call every method on every rank)."""

    def __init__(self, run_dir: str | Path, stage: str, keep_last: int = 3):
        self.run_dir, self.stage, self.keep_last = Path(run_dir), stage, keep_last
        self.root = self.run_dir / CHECKPOINTS

    def claim(self) -> None:
        """Mark RUN as this stage's, or refuse (one line) when it already belongs to another stage."""
        error = None
        if dist.is_main():
            error = self._claim_on_main()
        error = dist.broadcast_object(error)
        if error:
            raise UserError(error)

    def _claim_on_main(self) -> str | None:
        owner = self._owner()
        if owner is not None and owner != self.stage:
            return (f"run directory {self.run_dir} belongs to stage {owner!r}, not {self.stage!r}; "
                    f"give this stage its own trainer.run_dir")
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.run_dir / RUN_MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"stage": self.stage}) + "\n")
        return None

    def _owner(self) -> str | None:
        marker = self.run_dir / RUN_MARKER
        if marker.is_file():
            try:
                return json.loads(marker.read_text())["stage"]
            except (ValueError, KeyError, TypeError):
                return f"<unreadable {RUN_MARKER}>"
        existing = list_checkpoints(self.run_dir)
        return read_meta(existing[-1]).get("stage") if existing else None

    def latest(self) -> Path | None:
        found = list_checkpoints(self.run_dir)
        return found[-1] if found else None

    def save(self, step: int, parts: dict[str, Any], per_rank: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write `parts` (Stateful or state dicts, sharded by DCP) and this rank's `per_rank` dict as
        checkpoint `step`, atomically: readers only ever see complete step directories."""
        final = self.root / step_dir_name(step)
        tmp = self.root / f"{_TMP_PREFIX}{final.name}"
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a save that was killed halfway
            tmp.mkdir(parents=True)
        dist.barrier()
        with _quiet_single_process():
            dcp.save(parts, checkpoint_id=str(tmp), no_dist=not dist.initialized())
        torch.save(per_rank, tmp / f"rank_{dist.rank():05d}.pt")
        dist.barrier()
        if dist.is_main():
            self._publish(tmp, final, {**meta, "step": step, "stage": self.stage, "world_size": dist.world_size()})
            self._prune()
        dist.barrier()
        return final

    def _publish(self, tmp: Path, final: Path, meta: dict[str, Any]) -> None:
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        if final.exists():  # the same step saved again (e.g. rerun after a crash right after this save)
            shutil.rmtree(final)
        os.replace(tmp, final)

    def _prune(self) -> None:
        for old in list_checkpoints(self.run_dir)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, step_dir: Path, parts: dict[str, Any]) -> dict[str, Any]:
        """Load `parts` in place (DCP reshards to the current world size); returns this rank's per-rank dict."""
        meta = read_meta(step_dir)
        if meta.get("stage") != self.stage:
            raise UserError(f"checkpoint {step_dir} belongs to stage {meta.get('stage')!r}, not {self.stage!r}")
        with _quiet_single_process():
            dcp.load(parts, checkpoint_id=str(step_dir), no_dist=not dist.initialized())
        mine = step_dir / f"rank_{dist.rank():05d}.pt"
        path = mine if mine.is_file() else step_dir / "rank_00000.pt"
        return torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by save()


# -- export -----------------------------------------------------------------------------------------------------
def _tensor_keys(step_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Empty full-size tensors for every stored tensor under `prefix` (DCP fills them on load)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(step_dir)).read_metadata()
    return {
        key: torch.empty(tuple(info.size), dtype=info.properties.dtype)
        for key, info in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(info, TensorStorageMetadata)
    }


def _export_group(meta: dict[str, Any], step_dir: Path) -> str:
    groups = meta.get("groups", [])
    if "generator" in groups:
        return "generator"
    if len(groups) == 1:
        return groups[0]
    raise UserError(f"{step_dir}: no 'generator' group to export (groups: {', '.join(groups) or 'none'})")


def generator_state(run_dir: str | Path, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """The latest checkpoint's generator weights as full CPU tensors (EMA where it has started), and which.

    Works in a single process without a process group (DCP reads every shard)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir}: no checkpoints to export (looked in {Path(run_dir) / CHECKPOINTS})")
    step_dir = found[-1]
    meta = read_meta(step_dir)
    group = _export_group(meta, step_dir)
    model_prefix = f"{group}.model."
    state = _tensor_keys(step_dir, model_prefix)
    which = "raw"
    if use_ema and group == "generator" and meta.get("ema_initialized"):
        state.update(_tensor_keys(step_dir, "ema.shadow."))
        which = "ema"
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(step_dir), no_dist=True)
    weights = {k[len(model_prefix):]: v for k, v in state.items() if k.startswith(model_prefix)}
    if which == "ema":  # EMA covers the trainable parameters; buffers and frozen weights stay as saved
        weights.update({k[len("ema.shadow."):]: v for k, v in state.items() if k.startswith("ema.shadow.")})
    return weights, f"{which} {group} of {step_dir.name}"


def export(run_dir: str | Path, out: str | Path, use_ema: bool = True) -> tuple[Path, str]:
    """Write the run's generator (EMA if any) as one safetensors file with original Wan2.1 names."""
    from contextforcing.model.checkpoints import check_complete, infer_model_config, save_safetensors, strip_prefixes

    from contextforcing.training.lora import merge_lora_state

    weights, which = generator_state(run_dir, use_ema)
    state = {strip_prefixes(k): v for k, v in merge_lora_state(weights).items()}
    # A generator that is not a whole Wan2.1 DiT would give a file nothing can load. Head count does not
    # change any shape, so one head stands in for the unknown count.
    check_complete(state, infer_model_config(state, num_heads=1))
    return save_safetensors(state, out), which
