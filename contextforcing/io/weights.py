"""Reading weight files and loading them strictly, with one-line `UserError`s for bad files.

Shared by the DiT checkpoint loaders (`model/checkpoints.py`) and the UMT5 / Wan VAE loaders
(`codecs/`). Nothing here imports diffusers or transformers.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contextforcing.errors import UserError, first_line

# How many offending names a key/shape error lists before it says "and N more".
MAX_NAMES_IN_ERROR = 5


def name_list(items: list[str]) -> str:
    """The first few names, comma separated, for one-line error messages."""
    shown = ", ".join(items[:MAX_NAMES_IN_ERROR])
    more = len(items) - MAX_NAMES_IN_ERROR
    return shown + (f" and {more} more" if more > 0 else "")


def _safetensors_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (SafetensorError, OSError, ValueError, RuntimeError)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except _safetensors_errors() as exc:
        raise UserError(f"{path}: corrupted or unreadable safetensors file ({first_line(exc)})") from None


def safetensors_keys(path: Path) -> list[str]:
    """Reads only the header, which safetensors checks against the file size: catches truncated files cheaply."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except _safetensors_errors() as exc:
        raise UserError(f"{path}: corrupted or unreadable safetensors file ({first_line(exc)})") from None


def stage_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str]):
    """One safetensors file, complete under a temporary name beside `path` (an `outputs.StagedFile` to commit
    or publish), with the same bytes for the same tensors.

    safetensors writes its metadata map in hash order, which changes from one process to the next, so the
    same weights could give different files; the header is rewritten in a fixed order (metadata keys sorted,
    tensors by offset). A failed write (a full disk) is one line and leaves `path` as it was."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from contextforcing.io.outputs import stage

    def write(tmp: Path) -> None:
        save_file(dict(tensors), str(tmp), metadata=metadata)
        sort_safetensors_header(tmp)

    return stage(path, write, errors=(OSError, SafetensorError))


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    """`stage_safetensors`, renamed into place."""
    return stage_safetensors(tensors, path, metadata).commit()


def sort_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors header in place in a fixed order. The same entries serialise to the same length,
    so the tensor data does not move (any shortfall is padded with spaces, which the format allows)."""
    with open(path, "r+b") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
        metadata = header.pop("__metadata__", None)
        ordered = {"__metadata__": dict(sorted(metadata.items()))} if metadata is not None else {}
        ordered.update(sorted(header.items(), key=lambda item: (item[1]["data_offsets"], item[0])))
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:
            raise AssertionError(f"{path}: reordered safetensors header grew from {length} to {len(text)} bytes")
        handle.seek(8)
        handle.write(text + b" " * (length - len(text)))


def read_torch(path: Path, allow_pickle: bool = False) -> object:
    """`torch.load`, memory-mapped when the file is in the zip format so multi-GB files cost no RAM up front."""
    errors = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile)
    try:
        try:
            return torch.load(str(path), map_location="cpu", mmap=True, weights_only=not allow_pickle)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)  # legacy format
    except pickle.UnpicklingError as exc:
        if allow_pickle or "weights_only" not in str(exc):
            raise UserError(f"{path}: corrupted or unreadable checkpoint ({first_line(exc)})") from None
        raise UserError(
            f"{path}: holds Python objects besides tensors, which are not unpickled by default; "
            "if you trust the file, allow pickle (--allow-pickle)"
        ) from None
    except errors as exc:
        raise UserError(f"{path}: corrupted or unreadable checkpoint ({first_line(exc)})") from None


def read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A `torch.save`d state dict of tensors (`.pth`/`.pt`)."""
    obj = read_torch(path)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return dict(obj)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """One weight file, or a sharded safetensors `*.index.json`, into a flat name -> tensor dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weight file not found")
    if path.name.endswith(".index.json"):
        return read_sharded_safetensors(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch_file(path)


def shard_map(index_path: Path) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file) of a sharded safetensors `*.index.json`."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{index_path}: not a valid safetensors index ({first_line(exc)})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index_path}: the index has an empty or malformed weight_map")
    return weight_map


def read_sharded_safetensors(index_path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(shard_map(index_path).values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise UserError(f"{shard_path}: shard listed in {index_path.name} is missing")
        state.update(read_safetensors(shard_path))
    return state


def find_safetensors(folder: Path, single_name: str) -> Path:
    """The weights of a diffusers/transformers model folder: `single_name` or its sharded `.index.json`."""
    single = folder / single_name
    index = folder / (single_name + ".index.json")
    if single.is_file():
        return single
    if index.is_file():
        return index
    raise UserError(f"{folder}: no {single_name} (or {index.name}) found")


def check_names(expected, found, source: str) -> None:
    """The same weight names on both sides; else one line naming the first missing or unexpected ones."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise UserError(f"{source}: missing {len(missing)} weight(s): {name_list(missing)}")
    if unexpected:
        raise UserError(f"{source}: unexpected {len(unexpected)} weight(s): {name_list(unexpected)}")


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Every parameter and buffer present with the right shape, nothing extra; else one line naming them."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    check_names(expected, state, source)
    wrong = [
        f"{name} expected {list(shape)} found {list(state[name].shape)}"
        for name, shape in expected.items()
        if tuple(state[name].shape) != shape
    ]
    if wrong:
        raise UserError(f"{source}: shape mismatch in {len(wrong)} weight(s): {name_list(wrong)}")


def load_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str, device: torch.device | str, dtype: torch.dtype
) -> nn.Module:
    """Loads `state` into `module` (typically built on the meta device) on `device`, floats cast to `dtype`.

    Tensors go straight to their final device and dtype one at a time, so a model built on the meta
    device never exists in full twice.
    """
    check_state_dict(module, state, source)
    cast = {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for name, t in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    leftover = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:  # non-persistent buffers are not in a state dict; our models have none
        raise RuntimeError(f"tensors left on the meta device after loading {source}: {leftover[:MAX_NAMES_IN_ERROR]}")
    return module


def read_raw(path: Path, allow_pickle: bool) -> Mapping[str, Any]:
    """Whatever the weight file holds: a flat name -> tensor dict, or a training dict of such dicts."""
    if path.name.endswith(".index.json"):
        return read_sharded_safetensors(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj = read_torch(path, allow_pickle)
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def tensors_only(state: Mapping[str, Any], source: str) -> Mapping[str, torch.Tensor]:
    """`state` itself, checked to hold tensors only (a pickled state dict may hold anything)."""
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{source}: expected a state dict of tensors; non-tensor entries: {name_list(sorted(bad))}")
    return state
