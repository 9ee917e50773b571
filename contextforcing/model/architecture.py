"""A DiT's architecture (`ModelConfig`) from its weights: every field the tensor shapes determine, and the
attention head count, which they cannot show (a config.json beside the weights, a preset, `--num-heads`, or the
released Wan2.1 widths; nothing else is guessed)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from contextforcing.config import PRESETS, ModelConfig
from contextforcing.errors import UserError
from contextforcing.io.weights import name_list
from contextforcing.model.convert import model_config_from_diffusers

# Head counts of the released Wan2.1 widths (1.3B: 12 x 128, 14B: 40 x 128); shapes alone cannot give heads.
WAN_HEADS = {1536: 12, 5120: 40}
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


def check_heads(num_heads: int) -> int:
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
    heads = check_heads(num_heads) if num_heads is not None else _heads_for(arch["dim"], base)
    return dataclasses.replace(base or ModelConfig(), **arch, num_heads=heads).validate()


def _original_config_to_model(config: Mapping[str, Any], base: ModelConfig | None) -> ModelConfig:
    """Wan's own config.json (`_class_name: WanModel`) uses our field names; keep the ones we know."""
    if config.get("model_type", "t2v") != "t2v":
        raise UserError(f"config.json describes a Wan {config['model_type']!r} model; only t2v is supported")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in known}
    return dataclasses.replace(base or ModelConfig(), **values)


def config_from_json(config: Mapping[str, Any], base: ModelConfig | None = None) -> ModelConfig | None:
    """The ModelConfig a config.json describes (diffusers' or Wan's own layout); None for another model's."""
    if "num_attention_heads" in config or config.get("_class_name") == "WanTransformer3DModel":
        return model_config_from_diffusers(config, base)
    if "dim" in config and "num_heads" in config:
        return _original_config_to_model(config, base)
    return None  # some other model's config.json: not ours to interpret


def describe_config(cfg: ModelConfig) -> str:
    match = next((name for name, p in PRESETS.items() if same_shapes(p.model, cfg)), None)
    text = f"dim {cfg.dim}, ffn {cfg.ffn_dim}, {cfg.num_layers} layers"
    return text + (f" (preset {match})" if match else "")


def same_shapes(a: ModelConfig, b: ModelConfig) -> bool:
    fields = ("dim", "ffn_dim", "num_layers", "text_dim", "in_dim", "out_dim", "patch_size", "freq_dim")
    return all(getattr(a, f) == getattr(b, f) for f in fields)
