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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contextforcing.config import ModelConfig
from contextforcing.errors import UserError
from contextforcing.io.outputs import publish_with
from contextforcing.io.weights import (
    first_line,
    name_list,
    read_raw,
    safetensors_keys,
    shard_map,
    stage_safetensors,
    tensors_only,
    write_safetensors,
)
from contextforcing.model.architecture import (
    check_heads,
    config_from_json,
    describe_config,
    infer_model_config,
    same_shapes,
)
from contextforcing.model.convert import (
    diffusers_config,
    naming_of,
    original_key_to_diffusers,
    strip_prefixes,
    to_original_names,
)
from contextforcing.model.lora_adapters import LORA_ONLY_ENTRIES, LoraAdapter, as_adapter, lora_choice, merge_lora

log = logging.getLogger(__name__)

FORMATS = ("original", "diffusers", "training")
SAVE_LAYOUTS = ("original", "diffusers")

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
# Looked for, in order, inside a checkpoint directory. `model.pt` is a Self-Forcing `checkpoint_model_*/` dir.
_DIR_CANDIDATES = (WEIGHTS_NAME, WEIGHTS_NAME + ".index.json", "diffusion_pytorch_model.bin", "model.pt")
_PIPELINE_SUBDIR = "transformer"  # a diffusers pipeline root keeps the DiT here

# Training dicts: which entry holds the generator, in order of preference.
_EMA_KEYS = ("generator_ema",)
_RAW_KEYS = ("generator", "model", "state_dict")


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


# -- format detection and loading ------------------------------------------------------------------------
def detect_format(path: str | Path, *, allow_pickle: bool = False) -> str:
    """'original', 'diffusers' or 'training' for a checkpoint file or directory (safetensors: header only)."""
    weights = resolve_weights(path)
    if weights.name.endswith(".index.json"):
        return naming_of(strip_prefixes(k) for k in shard_map(weights))
    if weights.suffix == ".safetensors":
        return naming_of(strip_prefixes(k) for k in safetensors_keys(weights))
    return _format_of(read_raw(weights, allow_pickle))


def _format_of(raw: Mapping[str, Any]) -> str:
    return "training" if _is_training_dict(raw) else naming_of(strip_prefixes(k) for k in raw)


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
    raw = read_raw(weights, allow_pickle)
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
    elif any(isinstance(raw.get(k), Mapping) for k in LORA_ONLY_ENTRIES):
        raise UserError(
            f"{source}: holds only LoRA weights; pass it with --lora and the base weights with --checkpoint"
        )
    raw = tensors_only(raw, source)
    naming = fmt if fmt in SAVE_LAYOUTS else naming_of(strip_prefixes(k) for k in raw)
    state = to_original_names(raw, naming, source)
    if not state:
        raise UserError(f"{source}: the checkpoint holds no weights")
    if adapter is not None:
        state = merge_lora(state, adapter, alpha=lora_alpha)
        choice = dataclasses.replace(choice, **lora_choice(adapter, lora_alpha))
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


def checkpoint_config(path: str | Path, base: ModelConfig | None = None) -> ModelConfig | None:
    """The ModelConfig from a config.json next to the checkpoint's weights (diffusers or Wan style), if any."""
    config_path = resolve_weights(path).parent / CONFIG_NAME
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_path}: not valid JSON ({first_line(exc)})") from None
    return config_from_json(config, base)


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
        if ckpt_cfg is not None and not same_shapes(ckpt_cfg, model_cfg):
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
    return dataclasses.replace(model_cfg, num_heads=check_heads(num_heads)).validate()


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
