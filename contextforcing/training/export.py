"""`contextforcing export`: a run's generator (its EMA weights unless asked otherwise) read from its newest whole
checkpoint without a process group, written as one Wan2.1 safetensors file (or a model directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from contextforcing.errors import UserError, warn
from contextforcing.io.outputs import check_creatable
from contextforcing.training.checkpoint import (
    CHECKPOINTS,
    IO_ERRORS,
    checkpoint_problem,
    list_checkpoints,
    load_problem,
    quiet_single_process,
    read_meta,
)


def _tensor_keys(step_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Empty full-size tensors for every stored tensor under `prefix` (DCP fills them on load)."""
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
    """The newest whole checkpoint's generator weights as full CPU tensors (EMA where it has started), and
    which. A broken checkpoint is skipped with a warning (left where it is); one line when none can be read.

    Works in a single process without a process group (DCP reads every shard)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir}: no checkpoints to export (looked in {Path(run_dir) / CHECKPOINTS})")
    problems = []
    for step_dir in reversed(found):
        problem = checkpoint_problem(step_dir)
        if problem is None:
            try:
                return _read_generator(step_dir, use_ema)
            except IO_ERRORS as err:
                problem = load_problem(step_dir, err)
        problems.append(problem.message)
        warn(f"checkpoint {step_dir.name} is {problem.kind}: {problem.message}; trying the one before")
    raise UserError(f"no checkpoint of {run_dir} can be read: {'; '.join(problems)}")


def _read_generator(step_dir: Path, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    meta = read_meta(step_dir)
    group = _export_group(meta, step_dir)
    model_prefix = f"{group}.model."
    state = _tensor_keys(step_dir, model_prefix)
    which = "raw"
    if use_ema and group == "generator" and meta.get("ema_initialized"):
        state.update(_tensor_keys(step_dir, "ema.shadow."))
        which = "ema"
    with quiet_single_process():
        dcp.load(state, checkpoint_id=str(step_dir), no_dist=True)
    weights = {k[len(model_prefix) :]: v for k, v in state.items() if k.startswith(model_prefix)}
    if which == "ema":  # EMA covers the trainable parameters; buffers and frozen weights stay as saved
        weights.update({k[len("ema.shadow.") :]: v for k, v in state.items() if k.startswith("ema.shadow.")})
    return weights, f"{which} {group} of {step_dir.name}"


def export(run_dir: str | Path, out: str | Path, use_ema: bool = True) -> tuple[Path, str]:
    """Write the run's generator (EMA if any) as one safetensors file with original Wan2.1 names."""
    from contextforcing.model.architecture import infer_model_config
    from contextforcing.model.checkpoints import check_complete, save_safetensors
    from contextforcing.model.convert import strip_prefixes
    from contextforcing.training.lora import merge_lora_state

    check_creatable(out, directory=Path(out).suffix != ".safetensors", what="OUT")
    weights, which = generator_state(run_dir, use_ema)
    state = {strip_prefixes(k): v for k, v in merge_lora_state(weights).items()}
    # A generator that is not a whole Wan2.1 DiT would give a file nothing can load. Head count does not
    # change any shape, so one head stands in for the unknown count.
    check_complete(state, infer_model_config(state, num_heads=1))
    config = _run_model_config(run_dir) if Path(out).suffix != ".safetensors" else None
    return save_safetensors(state, out, config=config), which


def _run_model_config(run_dir: str | Path):
    """The model config of the run's preset (`stage.model` in RUN/config.yaml), for the config.json of a
    directory OUT: the head count is not in the weights' shapes. None when the run does not name one."""
    from omegaconf import OmegaConf

    from contextforcing.config import get_preset

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    model = (OmegaConf.to_container(OmegaConf.load(path)).get("stage") or {}).get("model")
    return get_preset(model).model if isinstance(model, str) else None
