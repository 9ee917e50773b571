"""Parameter names: the wrappers training code, peft and compilers put around them stripped (`strip_prefixes`),
and the mapping between original Wan2.1 (our names) and diffusers' WanTransformer3DModel.

Note the swap: the affine LayerNorm before cross-attention is `norm3` in Wan and `norm2` in diffusers
(the parameter-free FFN norm has no weights, so only one direction carries tensors).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

import torch

from contextforcing.config import ModelConfig
from contextforcing.errors import UserError
from contextforcing.io.weights import name_list

# Leading name segments that wrap the DiT in training code, peft or ComfyUI; dropped until a real root remains.
_PREFIX_SEGMENTS = frozenset({"model", "diffusion_model", "module", "base_model", "transformer", "generator"})
# Segments inserted *inside* names by FSDP, activation checkpointing and torch.compile.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_ORIGINAL_ROOTS = frozenset(
    {"patch_embedding", "text_embedding", "time_embedding", "time_projection", "blocks", "head"}
)
_DIFFUSERS_ROOTS = frozenset({"patch_embedding", "condition_embedder", "blocks", "proj_out", "scale_shift_table"})
_DIFFUSERS_MARKERS = ("condition_embedder.", "proj_out.", ".attn1.", ".attn2.", "scale_shift_table")

# (original pattern, diffusers replacement); applied in order, first match wins.
_ORIGINAL_TO_DIFFUSERS: list[tuple[str, str]] = [
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^blocks\.(\d+)\.self_attn\.q\.", r"blocks.\1.attn1.to_q."),
    (r"^blocks\.(\d+)\.self_attn\.k\.", r"blocks.\1.attn1.to_k."),
    (r"^blocks\.(\d+)\.self_attn\.v\.", r"blocks.\1.attn1.to_v."),
    (r"^blocks\.(\d+)\.self_attn\.o\.", r"blocks.\1.attn1.to_out.0."),
    (r"^blocks\.(\d+)\.self_attn\.norm_([qk])\.", r"blocks.\1.attn1.norm_\2."),
    (r"^blocks\.(\d+)\.cross_attn\.q\.", r"blocks.\1.attn2.to_q."),
    (r"^blocks\.(\d+)\.cross_attn\.k\.", r"blocks.\1.attn2.to_k."),
    (r"^blocks\.(\d+)\.cross_attn\.v\.", r"blocks.\1.attn2.to_v."),
    (r"^blocks\.(\d+)\.cross_attn\.o\.", r"blocks.\1.attn2.to_out.0."),
    (r"^blocks\.(\d+)\.cross_attn\.norm_([qk])\.", r"blocks.\1.attn2.norm_\2."),
    (r"^blocks\.(\d+)\.norm3\.", r"blocks.\1.norm2."),
    (r"^blocks\.(\d+)\.ffn\.0\.", r"blocks.\1.ffn.net.0.proj."),
    (r"^blocks\.(\d+)\.ffn\.2\.", r"blocks.\1.ffn.net.2."),
    (r"^blocks\.(\d+)\.modulation$", r"blocks.\1.scale_shift_table"),
    (r"^head\.head\.", "proj_out."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^patch_embedding\.", "patch_embedding."),
]

_DIFFUSERS_TO_ORIGINAL: list[tuple[str, str]] = [
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^blocks\.(\d+)\.attn1\.to_q\.", r"blocks.\1.self_attn.q."),
    (r"^blocks\.(\d+)\.attn1\.to_k\.", r"blocks.\1.self_attn.k."),
    (r"^blocks\.(\d+)\.attn1\.to_v\.", r"blocks.\1.self_attn.v."),
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"^blocks\.(\d+)\.attn2\.to_q\.", r"blocks.\1.cross_attn.q."),
    (r"^blocks\.(\d+)\.attn2\.to_k\.", r"blocks.\1.cross_attn.k."),
    (r"^blocks\.(\d+)\.attn2\.to_v\.", r"blocks.\1.cross_attn.v."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^patch_embedding\.", "patch_embedding."),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    raise KeyError(f"no mapping for parameter {key!r}")


def original_to_diffusers(state: dict) -> dict:
    return {_rename(k, _ORIGINAL_TO_DIFFUSERS): v for k, v in state.items()}


def diffusers_to_original(state: dict) -> dict:
    return {_rename(k, _DIFFUSERS_TO_ORIGINAL): v for k, v in state.items()}


def diffusers_config(model_cfg) -> dict:
    """WanTransformer3DModel constructor arguments for one of our ModelConfigs."""
    return dict(
        patch_size=tuple(model_cfg.patch_size),
        num_attention_heads=model_cfg.num_heads,
        attention_head_dim=model_cfg.head_dim,
        in_channels=model_cfg.in_dim,
        out_channels=model_cfg.out_dim,
        text_dim=model_cfg.text_dim,
        freq_dim=model_cfg.freq_dim,
        ffn_dim=model_cfg.ffn_dim,
        num_layers=model_cfg.num_layers,
        cross_attn_norm=model_cfg.cross_attn_norm,
        qk_norm="rms_norm_across_heads" if model_cfg.qk_norm else None,
        eps=model_cfg.eps,
    )


def diffusers_key_to_original(key: str) -> str:
    """One diffusers parameter name in original Wan2.1 naming; KeyError when the name has no mapping."""
    return _rename(key, _DIFFUSERS_TO_ORIGINAL)


def original_key_to_diffusers(key: str) -> str:
    """One original Wan2.1 parameter name in diffusers naming; KeyError when the name has no mapping."""
    return _rename(key, _ORIGINAL_TO_DIFFUSERS)


def model_config_from_diffusers(config: dict, base: ModelConfig | None = None) -> ModelConfig:
    """Our ModelConfig from a diffusers `WanTransformer3DModel` config.json (the inverse of `diffusers_config`).

    Fields diffusers does not store (text_len, rope_theta) come from `base` (default: ModelConfig defaults).
    Image-conditioned (I2V) variants are rejected: this model has no image branch.
    """
    if config.get("image_dim") or config.get("added_kv_proj_dim"):
        raise UserError(
            "diffusers config describes an image-conditioned (I2V) Wan model; only text-to-video is supported"
        )
    qk_norm = config.get("qk_norm", "rms_norm_across_heads")
    if qk_norm not in (None, "rms_norm_across_heads"):
        raise UserError(
            f"diffusers config has qk_norm={qk_norm!r}; only 'rms_norm_across_heads' (Wan's) or none is supported"
        )
    heads = int(config.get("num_attention_heads", 40))  # diffusers' own defaults are the 14B model's
    values = dict(
        dim=heads * int(config.get("attention_head_dim", 128)),
        ffn_dim=int(config.get("ffn_dim", 13824)),
        num_layers=int(config.get("num_layers", 40)),
        num_heads=heads,
        text_dim=int(config.get("text_dim", 4096)),
        in_dim=int(config.get("in_channels", 16)),
        out_dim=int(config.get("out_channels") or config.get("in_channels", 16)),
        patch_size=tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),
        freq_dim=int(config.get("freq_dim", 256)),
        eps=float(config.get("eps", 1e-6)),
        qk_norm=qk_norm is not None,
        cross_attn_norm=bool(config.get("cross_attn_norm", True)),
    )
    return dataclasses.replace(base if base is not None else ModelConfig(), **values)


def strip_prefixes(key: str) -> str:
    """`model.diffusion_model.blocks.0...` -> `blocks.0...`: drop wrapper segments and known leading prefixes."""
    for segment in _WRAPPER_SEGMENTS:
        key = key.replace(segment, "")
    parts = key.split(".")
    roots = _ORIGINAL_ROOTS | _DIFFUSERS_ROOTS
    while len(parts) > 1 and parts[0] not in roots and parts[0] in _PREFIX_SEGMENTS:
        parts.pop(0)
    return ".".join(parts)


def naming_of(keys: Iterable[str]) -> str:
    """'diffusers' when any (prefix-stripped) name is diffusers-only, else 'original'."""
    return "diffusers" if any(m in k for k in keys for m in _DIFFUSERS_MARKERS) else "original"


def to_original_names(state: Mapping[str, torch.Tensor], naming: str, source: str) -> dict[str, torch.Tensor]:
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
