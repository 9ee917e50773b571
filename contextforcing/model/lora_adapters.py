"""LoRA adapters merged into a DiT checkpoint's weights at load time: peft files or directories, kohya/ComfyUI
names, LongLive's `lora.pt` / `checkpoint_model_*` training checkpoints (`read_checkpoint(lora=...)`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from contextforcing.errors import UserError
from contextforcing.io.weights import first_line, name_list, read_raw, tensors_only
from contextforcing.model.convert import diffusers_key_to_original, strip_prefixes

log = logging.getLogger(__name__)

# `<module>.lora_A[.<adapter>].weight` (peft; `lora_down`/`lora_up` in kohya/ComfyUI files) and `<module>.alpha`.
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[^.]+))?\.weight$")
_LORA_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")
_LORA_DOWN = ("lora_A", "lora_down")
_ADAPTER_CONFIG = "adapter_config.json"
# Looked for, in order, inside a LoRA directory: a peft adapter, or a LongLive training checkpoint
# (`checkpoint_model_*/model.pt`, a dict with `generator_lora`, `critic_lora` and `step`).
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.pt")
# Entries of a training-style LoRA checkpoint that hold the adapter (LongLive saves `generator_lora`).
_LORA_ENTRIES = ("generator_lora", "lora", "state_dict", "model")
LORA_ONLY_ENTRIES = ("generator_lora", "lora")  # a checkpoint holding these is a LoRA, not base weights
# The generator weights an entry's LoRA was trained on: LongLive trains its LoRA on `generator` and infers
# with use_ema=false, so its `generator_lora` belongs on `generator`, not on `generator_ema`.
_LORA_TRAINED_ON = {"generator_lora": "generator"}
# Entries of a model (not a LoRA) training checkpoint: passed as --lora by mistake.
_MODEL_ENTRIES = ("generator_ema", "generator")


@dataclasses.dataclass
class LoraPair:
    """One adapted weight: delta = scale * up @ down, with scale = alpha / rank (or / sqrt(rank) for rsLoRA)."""

    down: torch.Tensor | None = None  # A: [rank, in, *kernel]
    up: torch.Tensor | None = None  # B: [out, rank, *1]
    alpha: float | None = None  # stored per module by kohya-style files

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclasses.dataclass
class LoraAdapter:
    pairs: dict[str, LoraPair]  # keyed by the module path as stored (prefixes not yet resolved)
    alpha: float | None = None  # adapter-wide `lora_alpha` from adapter_config.json
    use_rslora: bool = False
    trained_on: str | None = None  # generator entry the file says it was trained on (see _LORA_TRAINED_ON)
    source: str = "LoRA"

    def scale(self, pair: LoraPair, alpha: float | None = None) -> float:
        """alpha / rank (rsLoRA: / sqrt(rank)); alpha: explicit > per-module > adapter_config.json > rank."""
        module_alpha = next(a for a in (alpha, pair.alpha, self.alpha, float(pair.rank)) if a is not None)
        return module_alpha / (math.sqrt(pair.rank) if self.use_rslora else pair.rank)

    def alpha_source(self, alpha: float | None = None) -> str:
        if alpha is not None:
            return f"{alpha:g} (explicit)"
        if any(p.alpha is not None for p in self.pairs.values()):
            return "per module (stored)"
        if self.alpha is not None:
            return f"{self.alpha:g} (adapter_config.json)"
        return "not stored: assumed = rank, --lora-alpha sets it"


def _adapter_files(path: Path) -> tuple[Path, Path | None]:
    """(weights, adapter_config.json or None) for a peft adapter directory or a single adapter file."""
    if not path.exists():
        raise UserError(f"{path}: no such LoRA file or directory")
    if path.is_dir():
        found = [path / n for n in _ADAPTER_WEIGHTS if (path / n).is_file()]
        if not found:
            raise UserError(f"{path}: no LoRA weights found (looked for {', '.join(_ADAPTER_WEIGHTS)})")
        weights = found[0]
    else:
        weights = path
    config = weights.parent / _ADAPTER_CONFIG
    return weights, config if config.is_file() else None


def _adapter_config(path: Path | None) -> tuple[float | None, bool]:
    if path is None:
        return None, False
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a valid adapter config ({first_line(exc)})") from None
    if config.get("alpha_pattern"):
        # Per-module alphas by regex would silently mis-scale if ignored; refuse rather than guess.
        raise UserError(f"{path}: per-module alpha_pattern is not supported; pass one alpha with --lora-alpha")
    alpha = config.get("lora_alpha")
    return (float(alpha) if alpha is not None else None), bool(config.get("use_rslora", False))


def _lora_tensors(raw: Mapping[str, Any], source: str) -> tuple[Mapping[str, torch.Tensor], str | None]:
    """The adapter tensors and the entry that held them (None: the file is the adapter itself)."""
    for entry in _LORA_ENTRIES:
        if isinstance(raw.get(entry), Mapping):
            return tensors_only(raw[entry], source), entry
    if any(isinstance(raw.get(k), Mapping) for k in _MODEL_ENTRIES):
        raise UserError(f"{source}: a model checkpoint (generator weights), not a LoRA; pass it with --checkpoint")
    return tensors_only(raw, source), None


def parse_lora(tensors: Mapping[str, torch.Tensor], source: str = "LoRA") -> dict[str, LoraPair]:
    """Group LoRA tensors by module; any key that is not a LoRA matrix or alpha is an error."""
    pairs: dict[str, LoraPair] = {}
    unknown: list[str] = []
    adapters: set[str] = set()
    for key, tensor in tensors.items():
        if match := _LORA_KEY.match(key):
            pair = pairs.setdefault(match["module"], LoraPair())
            if match["kind"] in _LORA_DOWN:
                pair.down = tensor
            else:
                pair.up = tensor
            adapters.add(match["adapter"] or "")
        elif match := _LORA_ALPHA_KEY.match(key):
            pairs.setdefault(match["module"], LoraPair()).alpha = float(tensor)
        else:
            unknown.append(key)
    if unknown:
        raise UserError(
            f"{source}: {len(unknown)} key(s) are not LoRA weights (lora_A/lora_B/alpha): {name_list(unknown)}"
        )
    if len(adapters) > 1:
        raise UserError(f"{source}: holds several adapters ({', '.join(sorted(adapters))}); save one at a time")
    incomplete = sorted(m for m, p in pairs.items() if p.down is None or p.up is None)
    if incomplete:
        raise UserError(f"{source}: LoRA modules without both A and B matrices: {name_list(incomplete)}")
    if not pairs:
        raise UserError(f"{source}: no LoRA weights found")
    return pairs


def read_lora(path: str | Path, *, allow_pickle: bool = False) -> LoraAdapter:
    """A peft adapter directory/file, a LongLive-style `.pt` dict (`generator_lora`), or a kohya-style file."""
    weights, config = _adapter_files(Path(path))
    alpha, use_rslora = _adapter_config(config)
    tensors, entry = _lora_tensors(read_raw(weights, allow_pickle), str(path))
    return LoraAdapter(parse_lora(tensors, str(path)), alpha, use_rslora, _LORA_TRAINED_ON.get(entry), str(path))


def lora_choice(adapter: LoraAdapter, alpha: float | None) -> dict[str, Any]:
    """The WeightChoice fields that describe a merged adapter."""
    pairs = adapter.pairs.values()
    return dict(
        lora=adapter.source,
        lora_trained_on=adapter.trained_on,
        lora_ranks=tuple(sorted({p.rank for p in pairs})),
        lora_alpha=adapter.alpha_source(alpha),
        lora_scales=tuple(sorted({adapter.scale(p, alpha) for p in pairs})),
    )


def _target_name(module: str, state: Mapping[str, torch.Tensor]) -> str | None:
    """Our weight name for a LoRA module path in original, diffusers or prefixed naming (None: no match)."""
    name = strip_prefixes(module + ".weight")
    if name in state:
        return name
    try:
        name = diffusers_key_to_original(name)
    except KeyError:
        return None
    return name if name in state else None


def as_adapter(
    adapter: str | Path | LoraAdapter | Mapping[str, torch.Tensor], *, allow_pickle: bool = False
) -> LoraAdapter:
    """A LoRA given as a path (read_lora), an adapter, or a dict of LoRA tensors."""
    if isinstance(adapter, (str, Path)):
        return read_lora(adapter, allow_pickle=allow_pickle)
    return adapter if isinstance(adapter, LoraAdapter) else LoraAdapter(parse_lora(adapter))


def lora_delta(pair: LoraPair, scale: float, shape: torch.Size) -> torch.Tensor:
    """scale * B @ A in float32, reshaped to the base weight (Conv kernels fold into A's trailing dims)."""
    delta = pair.up.flatten(1).float() @ pair.down.flatten(1).float()
    return (delta * scale).reshape(shape)


def merge_lora(
    state: Mapping[str, torch.Tensor],
    adapter: str | Path | LoraAdapter | Mapping[str, torch.Tensor],
    *,
    alpha: float | None = None,
    allow_pickle: bool = False,
) -> dict[str, torch.Tensor]:
    """A copy of `state` (original names) with W += alpha / rank * B @ A for every adapted module.

    alpha: explicit value > per-module `.alpha` tensors > adapter_config.json `lora_alpha` > rank (scale 1).
    """
    adapter = as_adapter(adapter, allow_pickle=allow_pickle)
    merged = dict(state)
    unmatched, bad_shapes = [], []
    for module, pair in adapter.pairs.items():
        name = _target_name(module, state)
        if name is None:
            unmatched.append(module)
            continue
        base = state[name]
        if pair.up[0].numel() != pair.rank or pair.up.shape[0] * pair.down[0].numel() != base.numel():
            bad_shapes.append(
                f"{module} A {list(pair.down.shape)} B {list(pair.up.shape)} vs weight {list(base.shape)}"
            )
            continue
        merged[name] = (base.float() + lora_delta(pair, adapter.scale(pair, alpha), base.shape)).to(base.dtype)
    if unmatched:
        raise UserError(f"LoRA adapts {len(unmatched)} module(s) the model does not have: {name_list(unmatched)}")
    if bad_shapes:
        raise UserError(f"LoRA shapes do not fit the weights: {name_list(bad_shapes)}")
    log.info("merged LoRA into %d weights", len(adapter.pairs))
    return merged
