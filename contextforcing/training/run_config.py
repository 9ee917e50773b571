"""Training configs: the generic trainer options plus the stage's own, from one OmegaConf YAML file.

    name: dmd            # optional; must match `train STAGE` when present
    trainer: {run_dir: runs/dmd, max_steps: 600, accumulation: 4, ...}   # TrainerConfig
    stage: {...}         # the registered stage's options dataclass (registry.py)

Command-line `key=value` overrides use dotted paths (`trainer.max_steps=10 stage.guidance=5.0`). Unknown keys
raise a one-line UserError naming the key. The resolved config is written to RUN/config.yaml.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from contextforcing.config import from_dict
from contextforcing.errors import UserError
from contextforcing.io.outputs import write_text_atomic

_SECTIONS = ("name", "trainer", "stage")
LR_SCHEDULES = ("constant", "cosine")
_DEVICES = ("auto", "cpu", "cuda")
RESOLVED_NAME = "config.yaml"


@dataclass
class TrainerConfig:
    """Generic options of the one training loop (every stage)."""

    run_dir: str = ""  # where checkpoints, logs and config.yaml go; "" means runs/<stage>
    max_steps: int = 1000  # optimizer steps (of the whole stage: a DMD step may hold a generator and a critic update)
    accumulation: int = 1  # micro-batches per update and rank; global batch = accumulation x world size x batch
    grad_clip: float = 10.0  # max global grad norm per update; 0 measures the norm without clipping
    ema: bool = True  # keep an EMA of the "generator" group
    ema_decay: float = 0.99  # shadow = decay * shadow + (1 - decay) * weights, per generator update
    ema_start: int = 0  # first step whose generator update feeds the EMA (the shadow is copied from the weights then)
    checkpoint_every: int = 100  # steps between checkpoints (0: only at the end)
    keep_last: int = 3  # checkpoints kept on disk
    log_every: int = 10  # steps between tensorboard / wandb scalars
    sample_every: int = 0  # steps between the stage's sample hook, if it has one (0: never)
    seed: int = 0  # all randomness derives from (seed, step, micro-batch[, rank])
    mixed_precision: bool = False  # bf16 compute, fp32 master weights and gradient reduction
    activation_checkpointing: bool = False  # recompute each transformer block in backward
    wandb: bool = False  # also log to wandb, offline (needs `pip install wandb`)
    device: str = "auto"  # auto (cuda:LOCAL_RANK if available, else cpu), cpu or cuda
    lr_warmup: int = 0  # steps of linear learning-rate warm-up (from lr / lr_warmup to lr)
    lr_schedule: str = "constant"  # after the warm-up: constant, or cosine down to lr * lr_min_ratio
    lr_decay_steps: int = 0  # cosine: steps from the end of the warm-up to the minimum (then it stays there)
    lr_min_ratio: float = 0.1  # cosine: the final lr as a fraction of the configured one

    def lr_factor(self, step: int) -> float:
        """The multiplier of every group's configured lr at `step` (0-based): a pure function of the step, so a
        resumed run continues the schedule exactly."""
        if step < self.lr_warmup:
            return (step + 1) / self.lr_warmup
        if self.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.lr_warmup) / self.lr_decay_steps)
        return self.lr_min_ratio + (1.0 - self.lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def validate(self) -> "TrainerConfig":
        checks = [
            (self.max_steps >= 1, f"trainer.max_steps must be >= 1, got {self.max_steps}"),
            (self.accumulation >= 1, f"trainer.accumulation must be >= 1, got {self.accumulation}"),
            (self.grad_clip >= 0, f"trainer.grad_clip must be >= 0, got {self.grad_clip}"),
            (0.0 <= self.ema_decay < 1.0, f"trainer.ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.checkpoint_every >= 0, f"trainer.checkpoint_every must be >= 0, got {self.checkpoint_every}"),
            (self.keep_last >= 1, f"trainer.keep_last must be >= 1, got {self.keep_last}"),
            (self.log_every >= 1, f"trainer.log_every must be >= 1, got {self.log_every}"),
            (self.sample_every >= 0, f"trainer.sample_every must be >= 0, got {self.sample_every}"),
            (self.device in _DEVICES, f"trainer.device must be one of {', '.join(_DEVICES)}, got {self.device!r}"),
            (0 <= self.seed < 2**64, f"trainer.seed must be in [0, 2**64), got {self.seed}"),
            (self.lr_warmup >= 0, f"trainer.lr_warmup must be >= 0, got {self.lr_warmup}"),
            (
                self.lr_schedule in LR_SCHEDULES,
                f"trainer.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
            ),
            (
                self.lr_schedule != "cosine" or self.lr_decay_steps >= 1,
                "trainer.lr_schedule cosine needs trainer.lr_decay_steps >= 1 (its length, independent of max_steps)",
            ),
            (0.0 <= self.lr_min_ratio <= 1.0, f"trainer.lr_min_ratio must be in [0, 1], got {self.lr_min_ratio}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self


@dataclass
class TrainConfig:
    """A whole training run: stage name, trainer options, stage options (an instance of the stage's dataclass)."""

    name: str
    trainer: TrainerConfig
    stage: Any

    @property
    def run_dir(self) -> Path:
        return Path(self.trainer.run_dir or f"runs/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "trainer": dataclasses.asdict(self.trainer), "stage": dataclasses.asdict(self.stage)}


def _read_yaml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    if not Path(path).is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # yaml and OmegaConf raise many types for broken files
        raise UserError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must be a mapping with trainer: and stage: sections")
    for section in ("trainer", "stage"):  # checked before overrides, which would replace a scalar section
        if values.get(section) is not None and not isinstance(values[section], dict):
            raise UserError(f"config file {path}: {section}: must be a mapping of options, got {values[section]!r}")
    return values


def _merge_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key=value (e.g. trainer.max_steps=10)")
    try:
        merged = OmegaConf.merge(OmegaConf.create(values), OmegaConf.from_dotlist(list(overrides)))
    except Exception as err:  # e.g. overriding a scalar section with a dotted key
        raise UserError(f"cannot apply overrides {' '.join(overrides)}: {str(err).splitlines()[0]}") from None
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def load_train_config(name: str, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The validated config of stage `name` from YAML file `path` (None: all defaults) and dotted overrides."""
    from contextforcing.training.registry import get_stage

    spec = get_stage(name)
    values = _merge_overrides(_read_yaml(path), list(overrides))
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        raise UserError(f"unknown config section(s) {', '.join(unknown)}; known: {', '.join(_SECTIONS)}")
    if values.get("name", name) != name:
        raise UserError(f"config is for stage {values['name']!r}, not {name!r}")
    trainer = from_dict(TrainerConfig, values.get("trainer") or {}, where="trainer").validate()
    options = from_dict(spec.options, values.get("stage") or {}, where=f"stage ({name})")
    if callable(getattr(options, "validate", None)):
        options = options.validate() or options
    return TrainConfig(name, trainer, options)


def save_resolved(cfg: TrainConfig) -> Path:
    """Write the resolved config to RUN/config.yaml (rerunnable with `train NAME --config RUN/config.yaml`)."""
    out = cfg.run_dir / RESOLVED_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out, OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict())))


# -- resuming -----------------------------------------------------------------------------------------------------
# What a resumed run may change: how long it runs, how often it saves, logs and samples, where it logs, and the
# device it runs on. Anything else would change the model, the optimisation or the data stream of a run that
# is already part-trained, so it is refused. A stage's options may name more of their own (relative to
# `stage.`) in a `resume_changeable` class attribute.
RESUME_CHANGEABLE = (
    "trainer.max_steps",
    "trainer.checkpoint_every",
    "trainer.keep_last",
    "trainer.log_every",
    "trainer.sample_every",
    "trainer.wandb",
    "trainer.device",
    "trainer.activation_checkpointing",
)
_ABSENT = "<absent>"


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _as_saved(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A config dict as it reads back from config.yaml: written and parsed as YAML text, as `save_resolved` does,
    because OmegaConf keeps a tuple a tuple in memory (a stage's betas) but it reads back from YAML as a list."""
    text = OmegaConf.to_yaml(OmegaConf.create(cfg_dict))
    return OmegaConf.to_container(OmegaConf.create(text), resolve=True)  # type: ignore[return-value]


def _defaults(cfg: TrainConfig) -> dict[str, Any]:
    """The flat default config of `cfg`'s stage: an option a newer version added reads as its default."""
    try:
        stage = dataclasses.asdict(type(cfg.stage)())
    except (TypeError, UserError):  # a stage whose options have required fields
        stage = {}
    return _flat(_as_saved({"name": cfg.name, "trainer": dataclasses.asdict(TrainerConfig()), "stage": stage}))


def _renamed(old: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """A saved flat config with the stage options a newer version renamed read under their new names: a stage's
    `resume_renamed` maps an old key (relative to `stage.`) to (new key, {old value: new value})."""
    for key, (new_key, values) in getattr(cfg.stage, "resume_renamed", {}).items():
        if f"stage.{key}" in old and f"stage.{new_key}" not in old:
            value = old.pop(f"stage.{key}")
            old[f"stage.{new_key}"] = values.get(value, value)
    return old


def resume_changes(saved: dict[str, Any], cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """The differences between a run's saved config and `cfg`, as "key old -> new": (allowed, refused)."""
    old, new, defaults = _renamed(_flat(saved), cfg), _flat(_as_saved(cfg.to_dict())), _defaults(cfg)
    allowed_keys = {*RESUME_CHANGEABLE, *(f"stage.{k}" for k in getattr(cfg.stage, "resume_changeable", ()))}
    allowed: list[str] = []
    refused: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, defaults.get(key, _ABSENT)), new.get(key, _ABSENT)
        if key == "trainer.run_dir" or before == after:
            continue
        (allowed if key in allowed_keys else refused).append(f"{key} {before!r} -> {after!r}")
    return allowed, refused


def check_resume_config(cfg: TrainConfig) -> list[str]:
    """For a run directory that has checkpoints: refuse (one line listing them) changes to anything but
    `RESUME_CHANGEABLE` against RUN/config.yaml; returns the allowed changes, for the log."""
    path = cfg.run_dir / RESOLVED_NAME
    if not path.is_file():
        return []  # nothing to compare with (an older run directory): the checkpoint shapes still have to fit
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # yaml and OmegaConf raise many types for broken files
        raise UserError(
            f"{path} is unreadable ({str(err).splitlines()[0]}); fix it, or delete it to resume "
            f"with the config given now"
        ) from None
    allowed, refused = resume_changes(saved if isinstance(saved, dict) else {}, cfg)
    if refused:
        raise UserError(
            f"run directory {cfg.run_dir} has checkpoints of another config: {', '.join(refused)}; "
            f"a resume may change only {', '.join(RESUME_CHANGEABLE)} (start a new trainer.run_dir "
            f"for the rest)"
        )
    return allowed
