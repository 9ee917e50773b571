"""Stage registry: `train STAGE` looks the stage up here by name.

Each entry is (options dataclass, build function). The options dataclass types the `stage:` section of a
training config (every field with a default; nested dataclasses allowed); the build function turns the
parsed options into a `Stage` (see `stage.py`). Stage modules register themselves on import:

    register_stage("dmd", DMDOptions, build_dmd)

`contextforcing.training.stages` is imported lazily on first lookup, so its modules can register
without this file importing them (and without import cycles).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from contextforcing.errors import UserError

_STAGES_PACKAGE = "contextforcing.training.stages"


@dataclass(frozen=True)
class BuildContext:
    """What a stage's build function may need besides its options."""

    device: torch.device  # this rank's device; build the modules here (the trainer shards them afterwards)
    rank: int
    world_size: int
    seed: int  # the trainer seed: seed model initialisation from it so every rank starts identical
    run_dir: Path  # the stage's run directory (samples, buffers, caches)


class StageSpec(NamedTuple):
    options: type  # dataclass of the `stage:` config section
    build: Callable[[Any, BuildContext], Any]  # (options, BuildContext) -> Stage


STAGES: dict[str, StageSpec] = {}


def register_stage(name: str, options: type, build: Callable[[Any, BuildContext], Any]) -> None:
    """Add (or replace, e.g. in tests) the stage `name`."""
    STAGES[name] = StageSpec(options, build)


def _load_builtin_stages() -> None:
    try:
        importlib.import_module(_STAGES_PACKAGE)
    except ModuleNotFoundError as err:
        if err.name != _STAGES_PACKAGE:
            raise  # a real import error inside the stages, not their absence


def get_stage(name: str) -> StageSpec:
    """The registered stage `name`; a one-line UserError listing the known stages otherwise."""
    if name not in STAGES:
        _load_builtin_stages()
    if name not in STAGES:
        known = ", ".join(sorted(STAGES)) or "none registered"
        raise UserError(f"unknown training stage {name!r}; known: {known}")
    return STAGES[name]
