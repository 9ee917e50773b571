"""Wan2.1 DiT checkpoints in every layout the field uses, read into our (original Wan2.1) parameter names.

Formats (`detect_format` / `--checkpoint-format`):
  original   Wan2.1 weights: `diffusion_pytorch_model.safetensors`, sharded (`*.safetensors.index.json`), or a
             flat `.pth`/`.pt`/`.bin` state dict; a file or the Wan2.1 model directory.
  diffusers  `WanTransformer3DModel` weights: a directory with config.json (a pipeline root with `transformer/`
             works too) or a single safetensors file with diffusers names; renamed with `model.convert`.
  training   a `.pt` dict of state dicts (Self-Forcing, CausVid, Causal Forcing, LongLive, Context Forcing):
             `generator_ema` by default when present, `generator` with use_ema=False (`model` as a fallback),
             and `generator` by default when the LoRA merged in was trained on it (LongLive's `generator_lora`).
Wrapper prefixes (`model.`, `model.diffusion_model.`, `module.`, FSDP / torch.compile segments...) are
stripped wherever they appear. A peft-style LoRA adapter can be merged into the weights at load time;
`read_checkpoint` also says which weights it used and why (`WeightChoice`).

Nothing is unpickled beyond tensors and plain containers unless `allow_pickle=True` (trusted files only).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contextforcing.config import PRESETS, ModelConfig
from contextforcing.errors import UserError
from contextforcing.io.outputs import publish_with
from contextforcing.io.weights import (
    first_line,
    name_list,
    read_safetensors,
    read_sharded_safetensors,
    read_torch,
    safetensors_keys,
    shard_map,
    stage_safetensors,
    write_safetensors,
)
from contextforcing.model.convert import (
    diffusers_config,
    diffusers_key_to_original,
    model_config_from_diffusers,
    original_key_to_diffusers,
)

log = logging.getLogger(__name__)

FORMATS = ("original", "diffusers", "training")
SAVE_LAYOUTS = ("original", "diffusers")
# Head counts of the released Wan2.1 widths (1.3B: 12 x 128, 14B: 40 x 128); shapes alone cannot give heads.
WAN_HEADS = {1536: 12, 5120: 40}

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
# Looked for, in order, inside a checkpoint directory. `model.pt` is a Self-Forcing `checkpoint_model_*/` dir.
_DIR_CANDIDATES = (WEIGHTS_NAME, WEIGHTS_NAME + ".index.json", "diffusion_pytorch_model.bin", "model.pt")
_PIPELINE_SUBDIR = "transformer"  # a diffusers pipeline root keeps the DiT here

# Training dicts: which entry holds the generator, in order of preference.
_EMA_KEYS = ("generator_ema",)
_RAW_KEYS = ("generator", "model", "state_dict")

# Leading name segments that wrap the DiT in training code, peft or ComfyUI; dropped until a real root remains.
_PREFIX_SEGMENTS = frozenset({"model", "diffusion_model", "module", "base_model", "transformer", "generator"})
# Segments inserted *inside* names by FSDP, activation checkpointing and torch.compile.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_ORIGINAL_ROOTS = frozenset(
    {"patch_embedding", "text_embedding", "time_embedding", "time_projection", "blocks", "head"}
)
_DIFFUSERS_ROOTS = frozenset({"patch_embedding", "condition_embedder", "blocks", "proj_out", "scale_shift_table"})
_DIFFUSERS_MARKERS = ("condition_embedder.", "proj_out.", ".attn1.", ".attn2.", "scale_shift_table")


# -- small helpers -------------------------------------------------------------------------------------
def _check_format(fmt: str | None) -> None:
    if fmt is not None and fmt not in FORMATS:
        raise UserError(
            f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)} (or leave it to detection)"
        )


# -- locating and reading files ------------------------------------------------------------------------
def resolve_weights(path: str | Path) -> Path:
    """The weight file behind `path`: the file itself, or the known weight file inside a checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_file():
        return path
    for name in _DIR_CANDIDATES:
        if (path / name).is_file():
            return path / name
    indexes = sorted(path.glob("*.safetensors.index.json"))
    singles = sorted(path.glob("*.safetensors"))
    if len(indexes) == 1:
        return indexes[0]
    if not indexes and len(singles) == 1:
        return singles[0]
    if (path / _PIPELINE_SUBDIR).is_dir():
        return resolve_weights(path / _PIPELINE_SUBDIR)
    looked = ", ".join([*_DIR_CANDIDATES, "one *.safetensors[.index.json]", f"{_PIPELINE_SUBDIR}/"])
    raise UserError(f"{path}: no Wan2.1 DiT weights found (looked for {looked})")


def _read_raw(path: Path, allow_pickle: bool) -> Mapping[str, Any]:
    """Whatever the weight file holds: a flat name -> tensor dict, or a training dict of such dicts."""
    if path.name.endswith(".index.json"):
        return read_sharded_safetensors(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj = read_torch(path, allow_pickle)
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


# -- names ------------------------------------------------------------------------------------------------
def strip_prefixes(key: str) -> str:
    """`model.diffusion_model.blocks.0...` -> `blocks.0...`: drop wrapper segments and known leading prefixes."""
    for segment in _WRAPPER_SEGMENTS:
        key = key.replace(segment, "")
    parts = key.split(".")
    roots = _ORIGINAL_ROOTS | _DIFFUSERS_ROOTS
    while len(parts) > 1 and parts[0] not in roots and parts[0] in _PREFIX_SEGMENTS:
        parts.pop(0)
    return ".".join(parts)


def _naming(keys: Iterable[str]) -> str:
    """'diffusers' when any (prefix-stripped) name is diffusers-only, else 'original'."""
    return "diffusers" if any(m in k for k in keys for m in _DIFFUSERS_MARKERS) else "original"


def _to_original_names(state: Mapping[str, torch.Tensor], naming: str, source: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state.items():
        name = strip_prefixes(key)
        if naming == "diffusers":
            try:
                name = diffusers_key_to_original(name)
            except KeyError:
                unmapped.append(key)
                continue
        if name in out:
            raise UserError(f"{source}: two weights map to {name!r} once prefixes are removed")
        out[name] = tensor
    if unmapped:
        raise UserError(
            f"{source}: {len(unmapped)} diffusers weight(s) have no Wan2.1 equivalent: {name_list(unmapped)}"
        )
    return out


def _is_training_dict(raw: Mapping[str, Any]) -> bool:
    return any(isinstance(raw.get(k), Mapping) for k in (*_EMA_KEYS, *_RAW_KEYS))


def _select_generator(
    raw: Mapping[str, Any], use_ema: bool | None, source: str, trained_on: str | None = None
) -> tuple[str, str]:
    """(entry, why) of the generator weights to use: an explicit `use_ema` always wins; without one, the entry
    a LoRA says it was trained on (LongLive's `generator_lora` -> `generator`), else EMA when stored."""
    present = [k for k in (*_EMA_KEYS, *_RAW_KEYS) if isinstance(raw.get(k), Mapping)]
    if not present:
        stored = sorted(k for k, v in raw.items() if isinstance(v, Mapping))
        raise UserError(
            f"{source}: no generator weights in this training checkpoint (entries: {', '.join(stored) or 'none'})"
        )
    ema = [k for k in present if k in _EMA_KEYS]
    plain = [k for k in present if k in _RAW_KEYS]
    if use_ema is False:
        if not plain:
            raise UserError(f"{source}: only EMA weights ({', '.join(present)}) are stored; drop --no-ema to use them")
        return plain[0], "explicit --no-ema"
    if use_ema is True:
        if not ema:
            raise UserError(f"{source}: no EMA weights stored (entries: {', '.join(present)}); drop --ema to use them")
        return ema[0], "explicit --ema"
    if trained_on is not None:
        if trained_on in present:
            return trained_on, "the LoRA was trained on it; --ema / --no-ema override"
        return present[0], f"the LoRA was trained on {trained_on!r}, which this checkpoint does not store"
    return present[0], "EMA weights by default (--no-ema for the raw generator)" if ema else "no EMA weights stored"


def _tensors_only(state: Mapping[str, Any], source: str) -> Mapping[str, torch.Tensor]:
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{source}: expected a state dict of tensors; non-tensor entries: {name_list(sorted(bad))}")
    return state


# -- format detection and loading ------------------------------------------------------------------------
def detect_format(path: str | Path, *, allow_pickle: bool = False) -> str:
    """'original', 'diffusers' or 'training' for a checkpoint file or directory (safetensors: header only)."""
    weights = resolve_weights(path)
    if weights.name.endswith(".index.json"):
        return _naming(strip_prefixes(k) for k in shard_map(weights))
    if weights.suffix == ".safetensors":
        return _naming(strip_prefixes(k) for k in safetensors_keys(weights))
    return _format_of(_read_raw(weights, allow_pickle))


def _format_of(raw: Mapping[str, Any]) -> str:
    return "training" if _is_training_dict(raw) else _naming(strip_prefixes(k) for k in raw)


@dataclasses.dataclass(frozen=True)
class WeightChoice:
    """Which weights a load used and why: the console line and the `weights_choice` of a generate sidecar."""

    checkpoint: str
    entry: str | None = None  # training-dict entry read ('generator', 'generator_ema', 'model'); None: flat weights
    entry_reason: str | None = None
    lora: str | None = None
    lora_trained_on: str | None = None  # the base entry the LoRA file names (LongLive's generator_lora: 'generator')
    lora_ranks: tuple[int, ...] = ()
    lora_alpha: str | None = None  # where alpha came from
    lora_scales: tuple[float, ...] = ()  # distinct alpha / rank factors applied

    def describe(self) -> str:
        text = f"weights: {self.checkpoint}"
        if self.entry is not None:
            text += f" [{self.entry!r}: {self.entry_reason}]"
        if self.lora is not None:
            ranks = "/".join(str(r) for r in self.lora_ranks)
            scales = "/".join(f"{s:g}" for s in self.lora_scales)
            trained = f"trained on {self.lora_trained_on!r}; " if self.lora_trained_on else ""
            text += f" + LoRA {self.lora} ({trained}rank {ranks}; alpha {self.lora_alpha}; scale {scales})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class LoadedCheckpoint:
    state: dict[str, torch.Tensor]  # original names
    choice: WeightChoice


def read_checkpoint(
    path: str | Path,
    fmt: str | None = None,
    use_ema: bool | None = None,
    *,
    lora: str | Path | LoraAdapter | Mapping[str, torch.Tensor] | None = None,
    lora_alpha: float | None = None,
    allow_pickle: bool = False,
) -> LoadedCheckpoint:
    """A Wan2.1 DiT checkpoint in any supported layout as {original name: tensor}, `lora` merged in, and which
    weights were used. `use_ema`: True/False pick `generator_ema`/`generator` of a training dict; None (default)
    takes the entry the LoRA was trained on when its file says (LongLive), else EMA when stored.
    `fmt` overrides detection: 'original' takes names as they are (after prefix stripping), 'diffusers'
    renames them, 'training' requires a dict with generator entries. Tensors keep their stored dtype.
    """
    _check_format(fmt)
    weights = resolve_weights(path)
    source = str(path)
    raw = _read_raw(weights, allow_pickle)
    detected = _format_of(raw)
    fmt = fmt or detected
    # The LoRA is read first: which generator entry to take can depend on what it was trained on.
    adapter = as_adapter(lora, allow_pickle=allow_pickle) if lora is not None else None
    trained_on = adapter.trained_on if adapter is not None else None
    choice = WeightChoice(source)
    if fmt == "training":
        if detected != "training":
            raise UserError(f"{source}: not a training checkpoint (no generator / generator_ema entries)")
        entry, why = _select_generator(raw, use_ema, source, trained_on)
        raw, choice = raw[entry], dataclasses.replace(choice, entry=entry, entry_reason=why)
    elif detected == "training":
        raise UserError(f"{source}: this is a training checkpoint (generator entries), not {fmt!r} weights")
    elif any(isinstance(raw.get(k), Mapping) for k in _LORA_ONLY_ENTRIES):
        raise UserError(
            f"{source}: holds only LoRA weights; pass it with --lora and the base weights with --checkpoint"
        )
    raw = _tensors_only(raw, source)
    naming = fmt if fmt in SAVE_LAYOUTS else _naming(strip_prefixes(k) for k in raw)
    state = _to_original_names(raw, naming, source)
    if not state:
        raise UserError(f"{source}: the checkpoint holds no weights")
    if adapter is not None:
        state = merge_lora(state, adapter, alpha=lora_alpha)
        choice = dataclasses.replace(choice, **_lora_choice(adapter, lora_alpha))
    log.info("%s", choice.describe())
    return LoadedCheckpoint(state, choice)


def load_state_dict(
    path: str | Path,
    fmt: str | None = None,
    use_ema: bool | None = None,
    *,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
    allow_pickle: bool = False,
) -> dict[str, torch.Tensor]:
    """The weights of `read_checkpoint` alone."""
    return read_checkpoint(path, fmt, use_ema, lora=lora, lora_alpha=lora_alpha, allow_pickle=allow_pickle).state


# -- LoRA ---------------------------------------------------------------------------------------------------
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
_LORA_ONLY_ENTRIES = ("generator_lora", "lora")  # a checkpoint holding these is a LoRA, not base weights
# The generator weights an entry's LoRA was trained on: LongLive trains its LoRA on `generator` and infers
# with use_ema=false, so its `generator_lora` belongs on `generator`, not on `generator_ema`.
_LORA_TRAINED_ON = {"generator_lora": "generator"}


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
            return _tensors_only(raw[entry], source), entry
    if any(isinstance(raw.get(k), Mapping) for k in (*_EMA_KEYS, "generator")):
        raise UserError(f"{source}: a model checkpoint (generator weights), not a LoRA; pass it with --checkpoint")
    return _tensors_only(raw, source), None


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
    tensors, entry = _lora_tensors(_read_raw(weights, allow_pickle), str(path))
    return LoraAdapter(parse_lora(tensors, str(path)), alpha, use_rslora, _LORA_TRAINED_ON.get(entry), str(path))


def _lora_choice(adapter: LoraAdapter, alpha: float | None) -> dict[str, Any]:
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


# -- model configs ------------------------------------------------------------------------------------------
_REQUIRED_FOR_SHAPES = (
    "patch_embedding.weight",
    "text_embedding.0.weight",
    "time_embedding.0.weight",
    "head.head.weight",
)
_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


def _architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ModelConfig fields that tensor shapes determine (everything but the head count)."""
    missing = [k for k in _REQUIRED_FOR_SHAPES if k not in state]
    if missing:
        raise UserError(f"not a Wan2.1 DiT state dict: missing {name_list(missing)}")
    layers = {int(m[1]) for k in state if (m := _BLOCK_INDEX.match(k))}
    if "blocks.0.ffn.0.weight" not in state:
        raise UserError("not a Wan2.1 DiT state dict: missing blocks.0.ffn.0.weight")
    patch = state["patch_embedding.weight"]
    dim, in_dim, *patch_size = patch.shape
    return dict(
        dim=int(dim),
        in_dim=int(in_dim),
        patch_size=tuple(int(p) for p in patch_size),
        out_dim=int(state["head.head.weight"].shape[0]) // math.prod(patch_size),
        ffn_dim=int(state["blocks.0.ffn.0.weight"].shape[0]),
        num_layers=max(layers) + 1,
        text_dim=int(state["text_embedding.0.weight"].shape[1]),
        freq_dim=int(state["time_embedding.0.weight"].shape[1]),
        qk_norm="blocks.0.self_attn.norm_q.weight" in state,
        cross_attn_norm="blocks.0.norm3.weight" in state,
    )


def _heads_for(dim: int, base: ModelConfig | None) -> int:
    """Heads are invisible in the shapes (q/k/v are dim x dim): take them from a config that describes this
    width (config.json beside the weights, or a preset the user named), else from the released Wan2.1
    widths. Any other width is an error. A preset of the same width is not evidence: a 64-wide checkpoint
    with 2 heads loaded as the `tiny` preset's 4 computes something else without a word."""
    if base is not None and base.dim == dim:
        return base.num_heads
    if dim in WAN_HEADS:
        return WAN_HEADS[dim]
    raise UserError(
        f"cannot tell the attention head count of a {dim}-wide model (not a Wan2.1 width: "
        f"{', '.join(f'{w} has {h}' for w, h in WAN_HEADS.items())}); pass --num-heads "
        f"(num_heads= in Python) or a config.json beside the weights"
    )


def _check_heads(num_heads: int) -> int:
    if num_heads < 1:
        raise UserError(f"the head count must be at least 1, got {num_heads}")
    return num_heads


def infer_model_config(
    state: Mapping[str, torch.Tensor], *, num_heads: int | None = None, base: ModelConfig | None = None
) -> ModelConfig:
    """The ModelConfig of a state dict (original names) from its tensor shapes.

    Head count: `num_heads` if given, else see `_heads_for`. Fields shapes cannot show (text_len, eps,
    rope_theta) come from `base` (e.g. a preset, or config.json via `checkpoint_config`), else the defaults.
    """
    arch = _architecture(state)
    heads = _check_heads(num_heads) if num_heads is not None else _heads_for(arch["dim"], base)
    return dataclasses.replace(base or ModelConfig(), **arch, num_heads=heads).validate()


def _original_config_to_model(config: Mapping[str, Any], base: ModelConfig | None) -> ModelConfig:
    """Wan's own config.json (`_class_name: WanModel`) uses our field names; keep the ones we know."""
    if config.get("model_type", "t2v") != "t2v":
        raise UserError(f"config.json describes a Wan {config['model_type']!r} model; only t2v is supported")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in known}
    return dataclasses.replace(base or ModelConfig(), **values)


def checkpoint_config(path: str | Path, base: ModelConfig | None = None) -> ModelConfig | None:
    """The ModelConfig from a config.json next to the checkpoint's weights (diffusers or Wan style), if any."""
    config_path = resolve_weights(path).parent / CONFIG_NAME
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_path}: not valid JSON ({first_line(exc)})") from None
    if "num_attention_heads" in config or config.get("_class_name") == "WanTransformer3DModel":
        return model_config_from_diffusers(config, base)
    if "dim" in config and "num_heads" in config:
        return _original_config_to_model(config, base)
    return None  # some other model's config.json: not ours to interpret


def describe_config(cfg: ModelConfig) -> str:
    match = next((name for name, p in PRESETS.items() if _same_shapes(p.model, cfg)), None)
    text = f"dim {cfg.dim}, ffn {cfg.ffn_dim}, {cfg.num_layers} layers"
    return text + (f" (preset {match})" if match else "")


def _same_shapes(a: ModelConfig, b: ModelConfig) -> bool:
    fields = ("dim", "ffn_dim", "num_layers", "text_dim", "in_dim", "out_dim", "patch_size", "freq_dim")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


# -- strict loading -----------------------------------------------------------------------------------------
def state_problems(
    expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor], strict: bool = True
) -> list[str]:
    """Human-readable problems (missing, unexpected, wrong shape), each with its first few names."""
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if strict and missing:
        problems.append(f"{len(missing)} missing: {name_list(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected: {name_list(unexpected)}")
    wrong = [
        f"{name} expected {list(shape)} found {list(state[name].shape)}"
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != tuple(shape)
    ]
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape: {name_list(wrong)}")
    return problems


def _shape_config(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    # Parameter shapes do not depend on the head count, so a single head stands in when it is unknown.
    return infer_model_config(state, num_heads=1)


def _mismatch_message(model_cfg: ModelConfig | None, state: Mapping[str, torch.Tensor], problems: list[str]) -> str:
    """One line; when both configs are known, say which architectures disagree (e.g. 14B weights, 1.3B model)."""
    head = "checkpoint does not fit the model"
    if model_cfg is not None:
        try:
            ckpt_cfg = _shape_config(state)
        except UserError:
            ckpt_cfg = None
        if ckpt_cfg is not None and not _same_shapes(ckpt_cfg, model_cfg):
            head += f": checkpoint is {describe_config(ckpt_cfg)}, model is {describe_config(model_cfg)}"
    return f"{head}; " + "; ".join(problems)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> nn.Module:
    """Copy `state` into `model` after checking every name and shape first, so a bad checkpoint leaves the
    model untouched. A model built on the meta device gets the tensors assigned (cast to its dtypes)."""
    current = model.state_dict()
    expected = {name: tuple(t.shape) for name, t in current.items()}
    problems = state_problems(expected, state, strict)
    if problems:
        raise UserError(_mismatch_message(getattr(model, "config", None), state, problems))
    state = {k: v for k, v in state.items() if k in expected}
    if any(t.is_meta for t in current.values()):
        state = {k: v.to(current[k].dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=strict, assign=True)
        left = [name for name, t in model.state_dict().items() if t.is_meta]
        if left:  # only possible with strict=False: a meta tensor would fail far from here
            raise UserError(f"checkpoint leaves {len(left)} weight(s) of the model unset: {name_list(left)}")
    else:
        with torch.no_grad():
            model.load_state_dict(state, strict=strict)
    return model


def check_complete(state: Mapping[str, torch.Tensor], cfg: ModelConfig | None = None) -> ModelConfig:
    """Raise unless `state` is exactly a full Wan2.1 DiT (of `cfg`, or of the shapes it implies).

    Builds the reference on the meta device, so a 14B check allocates nothing.
    """
    cfg = cfg or _shape_config(state)
    with torch.device("meta"):
        from contextforcing.model.wan import CausalWanModel

        reference = CausalWanModel(cfg)
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    problems = state_problems(expected, state)
    if problems:
        raise UserError(_mismatch_message(cfg, state, problems))
    return cfg


def load_model(
    path: str | Path,
    model_cfg: ModelConfig | None = None,
    *,
    fmt: str | None = None,
    use_ema: bool | None = None,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
    num_heads: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
):
    """A CausalWanModel with the checkpoint's weights (which ones: see `read_checkpoint`). Without `model_cfg`
    the config comes from shapes plus config.json / presets; `num_heads` sets the head count either way.
    Built on the meta device and filled once, so the weights exist in memory once."""
    loaded = read_checkpoint(path, fmt, use_ema, lora=lora, lora_alpha=lora_alpha, allow_pickle=allow_pickle)
    return model_from_state(loaded.state, model_config(path, loaded.state, model_cfg, num_heads), device, dtype)


def model_config(
    path: str | Path, state: Mapping[str, torch.Tensor], model_cfg: ModelConfig | None, num_heads: int | None
) -> ModelConfig:
    """`model_cfg` (with `num_heads` if given), or the checkpoint's own config from shapes and config.json."""
    if model_cfg is None:
        return infer_model_config(state, num_heads=num_heads, base=checkpoint_config(path))
    if num_heads is None:
        check_heads_agree(path, model_cfg)
        return model_cfg
    return dataclasses.replace(model_cfg, num_heads=_check_heads(num_heads)).validate()


def check_heads_agree(path: str | Path, model_cfg: ModelConfig) -> None:
    """A config.json beside the weights that gives the same width another head count than the preset is a
    contradiction the shapes cannot settle; refuse rather than pick one."""
    stored = checkpoint_config(path)
    if stored is not None and stored.dim == model_cfg.dim and stored.num_heads != model_cfg.num_heads:
        raise UserError(
            f"{path}: its config.json gives {stored.num_heads} attention heads, the preset "
            f"{model_cfg.num_heads}; pass --num-heads (num_heads= in Python) to say which"
        )


def model_from_state(
    state: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """A CausalWanModel of `cfg` holding `state` (checked first), on `device` in `dtype`, in eval mode."""
    from contextforcing.model.wan import CausalWanModel

    with torch.device("meta"):
        model = CausalWanModel(cfg)
    model = model.to(dtype=dtype)
    load_into(model, {k: v.to(device=device, dtype=dtype) for k, v in state.items()})
    return model.eval()


# -- saving ---------------------------------------------------------------------------------------------------
def _original_config_json(cfg: ModelConfig) -> dict[str, Any]:
    """Wan2.1's own config.json layout (`WanModel` constructor arguments)."""
    return {"_class_name": "WanModel", "model_type": "t2v", **dataclasses.asdict(cfg), "window_size": [-1, -1]}


def _diffusers_config_json(cfg: ModelConfig) -> dict[str, Any]:
    try:
        import diffusers

        version = diffusers.__version__
    except ImportError:  # diffusers is optional; the file is still valid for it
        version = "0.35.0"
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in diffusers_config(cfg).items()}
    return {"_class_name": "WanTransformer3DModel", "_diffusers_version": version, **config}


def _output_names(state: Mapping[str, torch.Tensor], to: str) -> dict[str, str]:
    if to == "original":
        return {k: k for k in state}
    names, unmapped = {}, []
    for key in state:
        try:
            names[key] = original_key_to_diffusers(key)
        except KeyError:
            unmapped.append(key)
    if unmapped:
        raise UserError(f"{len(unmapped)} weight(s) have no diffusers name: {name_list(unmapped)}")
    return names


def save_safetensors(
    state: Mapping[str, torch.Tensor],
    out: str | Path,
    to: str = "original",
    *,
    config: ModelConfig | None = None,
) -> Path:
    """Write `state` (original names) as one safetensors file in `to` naming; returns the weight file.

    `out` ending in `.safetensors` is that file. Any other `out` is a model directory: it gets
    `diffusion_pytorch_model.safetensors` plus a config.json (diffusers' `WanTransformer3DModel` config for
    to='diffusers', so `from_pretrained(out)` works; Wan's own for 'original'). The config is `config`, or
    inferred from the shapes (heads as in `infer_model_config`).
    """
    if to not in SAVE_LAYOUTS:
        raise UserError(f"unknown output layout {to!r}; choose one of {', '.join(SAVE_LAYOUTS)}")
    out = Path(out)
    names = _output_names(state, to)
    # safetensors refuses views and shared storage; contiguous copies of checkpoint tensors are cheap enough.
    tensors = {names[k]: v.detach().to("cpu").contiguous() for k, v in state.items()}
    metadata = {"format": "pt", "contextforcing.naming": to}
    if out.suffix == ".safetensors":
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_safetensors(tensors, out, metadata)
    cfg = config or infer_model_config(state)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_NAME
    config_json = _diffusers_config_json(cfg) if to == "diffusers" else _original_config_json(cfg)
    text = json.dumps(config_json, indent=2) + "\n"
    # A pair: config.json always describes the weights beside it.
    publish_with(stage_safetensors(tensors, weights, metadata), out / CONFIG_NAME, lambda tmp: tmp.write_text(text))
    return weights
