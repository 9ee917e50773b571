"""Pluggable per-frame feature extractors for the consistency metrics.

    pixel   weight-free proxy: 16x16 area-averaged RGB, centred, L2-normalised. Not a learned feature;
            results are labelled `proxy` everywhere they are reported.
    dino    DINO ViT-B/16 CLS feature (VBench subject consistency). Resize short side to the model's
            image size (224), bilinear, no crop, ImageNet mean/std.
    dinov2  DINOv2 ViT-B/14 normed CLS feature (Context Forcing's "DINOv2" column, VBench-Long clip2clip).
            Same transform as dino, at 224.
    clip    CLIP ViT-B/32 image embedding (VBench background consistency, "CLIP-F"). Resize short side to
            224 bicubic, centre crop, CLIP mean/std.

Models are built with `transformers` and loaded from a local path only (nothing is downloaded), in
either layout:
    Hugging Face  a directory with config.json and weights (`save_pretrained` output; for clip a full
                  CLIPModel or a CLIPVisionModelWithProjection)
    original      the authors' single file: dino_vitbase16_pretrain.pth, dinov2_vitb14_pretrain.pth,
                  OpenAI ViT-B-32.pt (TorchScript or plain state dict). The architecture is read from
                  the tensor shapes, with the ViT convention of 64-dim attention heads.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from contextforcing.errors import UserError
from contextforcing.runtime.extras import require

EXTRACTORS = ("pixel", "dino", "dinov2", "clip")
PIXEL_GRID = 16  # the pixel proxy's feature is a 16x16x3 thumbnail
PIXEL_CENTRE = 0.5  # fixed offset (not per-frame), so a uniform frame is still a usable vector
HEAD_DIM = 64  # ViT-B/16, ViT-B/14 and CLIP ViT-B/32 all use 64-dim heads
EVAL_IMAGE_SIZE = 224  # VBench's transform size
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
BATCH = 16


@dataclass
class FeatureExtractor:
    """`extractor(frames uint8 [T, H, W, 3]) -> float32 [T, D]`, rows L2-normalised."""

    name: str
    proxy: bool
    description: str
    embed: Callable[[np.ndarray], np.ndarray]

    def __call__(self, frames: np.ndarray, progress: bool = False) -> np.ndarray:
        from tqdm import tqdm

        chunks = [
            self.embed(frames[i : i + BATCH])
            for i in tqdm(range(0, len(frames), BATCH), desc=f"{self.name} features", disable=not progress)
        ]
        feats = np.concatenate(chunks).astype(np.float32)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def pixel_embed(frames: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    thumb = F.adaptive_avg_pool2d(x, PIXEL_GRID) - PIXEL_CENTRE
    return thumb.flatten(1).numpy()


def pixel_extractor() -> FeatureExtractor:
    return FeatureExtractor(
        "pixel", True, "weight-free proxy: 16x16 RGB thumbnail (not a learned feature)", pixel_embed
    )


# ---------------------------------------------------------------- preprocessing


def _to_tensor(frames: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()


def _resize_short_side(x, size: int, mode: str):
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    return F.interpolate(x, size=new, mode=mode, align_corners=False, antialias=False)


def _normalise(x, mean, std):
    import torch

    return (x / 255.0 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def dino_transform(frames: np.ndarray, size: int):
    """VBench subject consistency: Resize(size) on the short side, bilinear, no crop, ImageNet norm."""
    return _normalise(_resize_short_side(_to_tensor(frames), size, "bilinear"), IMAGENET_MEAN, IMAGENET_STD)


def clip_transform(frames: np.ndarray, size: int):
    """VBench background consistency: Resize(size, bicubic), CenterCrop(size), CLIP norm."""
    x = _resize_short_side(_to_tensor(frames), size, "bicubic").clamp(0, 255)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return _normalise(x[..., top : top + size, left : left + size], CLIP_MEAN, CLIP_STD)


# ---------------------------------------------------------------- loading


def _strip_prefixes(state: dict) -> dict:
    """Training checkpoints wrap keys as module./backbone./teacher.; the released files do not."""
    for prefix in ("module.", "backbone.", "teacher.", "student."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _load_state_file(path: Path) -> dict:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # OpenAI's CLIP files are TorchScript archives
        try:
            import warnings

            with warnings.catch_warnings():  # torch.jit is deprecated, but it is how OpenAI ships CLIP
                warnings.simplefilter("ignore")
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
            raise UserError(
                f"cannot read weights file {path}: {str(first).splitlines()[0] if str(first) else type(first).__name__}"
            )
    for key in ("teacher", "model", "state_dict"):  # common checkpoint wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UserError(f"weights file {path} does not hold a state dict")
    return _strip_prefixes(dict(obj))


def _depth(state: dict, pattern: str) -> int:
    found = [int(m.group(1)) for k in state if (m := re.match(pattern, k))]
    if not found:
        raise UserError("weights file does not look like the expected architecture (no transformer blocks found)")
    return max(found) + 1


def _split_qkv(weight, bias, prefix: str, names=("q_proj", "k_proj", "v_proj")) -> dict:
    out = {}
    for name, w, b in zip(names, weight.chunk(3, 0), bias.chunk(3, 0)):
        out[f"{prefix}.{name}.weight"], out[f"{prefix}.{name}.bias"] = w.clone(), b.clone()
    return out


def _need(state: dict, *keys: str, what: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserError(f"weights file is not an original-layout {what} checkpoint (missing {', '.join(missing[:3])})")


def _timm_vit_keys(state: dict, depth: int, layers: str, norms: tuple[str, str]) -> dict:
    """The keys a timm-style ViT (blocks.N.*) shares with transformers' ViT and DINOv2 models: embeddings,
    final norm, and per block the attention, MLP and the two norms (named `norms` in the target)."""
    new = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    for i in range(depth):
        src, dst = f"blocks.{i}", f"{layers}.{i}"
        new.update(_split_qkv(state[f"{src}.attn.qkv.weight"], state[f"{src}.attn.qkv.bias"], f"{dst}.attention"))
        for a, b in (
            ("attn.proj", "attention.o_proj"),
            ("norm1", norms[0]),
            ("norm2", norms[1]),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            new[f"{dst}.{b}.weight"], new[f"{dst}.{b}.bias"] = state[f"{src}.{a}.weight"], state[f"{src}.{a}.bias"]
    return new


def _vit_from_original(state: dict):
    """facebookresearch/dino ViT -> transformers ViTModel (without pooler)."""
    from transformers import ViTConfig, ViTModel

    _need(state, "cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", what="DINO")
    dim, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
    depth = _depth(state, r"blocks\.(\d+)\.")
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    config = ViTConfig(
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=max(1, dim // HEAD_DIM),
        intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
        patch_size=patch,
        image_size=grid * patch,
        layer_norm_eps=1e-6,
        qkv_bias=True,
    )
    new = _timm_vit_keys(state, depth, "layers", ("layernorm_before", "layernorm_after"))
    model = ViTModel(config, add_pooling_layer=False)
    _load_exact(model, new)
    return model


def _ratio(hidden: int, dim: int) -> int | float:
    """Dinov2Config wants an int mlp_ratio when it is one (4 for ViT-B/14)."""
    return hidden // dim if hidden % dim == 0 else hidden / dim


def _dinov2_from_original(state: dict):
    """facebookresearch/dinov2 ViT -> transformers Dinov2Model."""
    from transformers import Dinov2Config, Dinov2Model

    _need(
        state, "cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", "blocks.0.ls1.gamma", what="DINOv2"
    )
    dim, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
    depth = _depth(state, r"blocks\.(\d+)\.")
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    config = Dinov2Config(
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=max(1, dim // HEAD_DIM),
        mlp_ratio=_ratio(state["blocks.0.mlp.fc1.weight"].shape[0], dim),
        patch_size=patch,
        image_size=grid * patch,
        layer_norm_eps=1e-6,
    )
    new = _timm_vit_keys(state, depth, "encoder.layer", ("norm1", "norm2"))
    new["embeddings.mask_token"] = state.get("mask_token", state["cls_token"].new_zeros(1, dim)).reshape(1, dim)
    for i in range(depth):
        src, dst = f"blocks.{i}", f"encoder.layer.{i}"
        new[f"{dst}.layer_scale1.lambda1"] = state[f"{src}.ls1.gamma"]
        new[f"{dst}.layer_scale2.lambda1"] = state[f"{src}.ls2.gamma"]
    model = Dinov2Model(config)
    _load_exact(model, new)
    return model


def _clip_from_original(state: dict):
    """OpenAI CLIP (visual.*) -> transformers CLIPVisionModelWithProjection."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    _need(
        state,
        "visual.class_embedding",
        "visual.positional_embedding",
        "visual.conv1.weight",
        "visual.proj",
        what="OpenAI CLIP",
    )
    dim, patch = state["visual.class_embedding"].shape[0], state["visual.conv1.weight"].shape[-1]
    depth = _depth(state, r"visual\.transformer\.resblocks\.(\d+)\.")
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    config = CLIPVisionConfig(
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=max(1, dim // HEAD_DIM),
        intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        patch_size=patch,
        image_size=grid * patch,
        projection_dim=state["visual.proj"].shape[1],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    v = "vision_model"
    new = {
        f"{v}.embeddings.class_embedding": state["visual.class_embedding"],
        f"{v}.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        f"{v}.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "visual_projection.weight": state["visual.proj"].t().contiguous(),
    }
    for a, b in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        new[f"{v}.{b}.weight"], new[f"{v}.{b}.bias"] = state[f"visual.{a}.weight"], state[f"visual.{a}.bias"]
    for i in range(depth):
        src, dst = f"visual.transformer.resblocks.{i}", f"{v}.encoder.layers.{i}"
        new.update(
            _split_qkv(state[f"{src}.attn.in_proj_weight"], state[f"{src}.attn.in_proj_bias"], f"{dst}.self_attn")
        )
        for a, b in (
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ):
            new[f"{dst}.{b}.weight"], new[f"{dst}.{b}.bias"] = state[f"{src}.{a}.weight"], state[f"{src}.{a}.bias"]
    model = CLIPVisionModelWithProjection(config)
    _load_exact(model, new)
    return model


def _load_exact(model, state: dict) -> None:
    """Load converted weights; every parameter of the model must be covered (buffers may keep defaults)."""
    params = {k for k, _ in model.named_parameters()}
    missing = sorted(params - set(state))
    unknown = sorted(set(state) - set(model.state_dict()))
    if missing or unknown:
        raise UserError(
            f"converted weights do not match the {type(model).__name__} built for them "
            f"(missing {missing[:3]}, unexpected {unknown[:3]}); is this transformers version supported?"
        )
    model.load_state_dict(state, strict=False)


def _from_hf_dir(name: str, path: Path):
    import json

    import transformers

    cls = {
        "dino": transformers.ViTModel,
        "dinov2": transformers.Dinov2Model,
        "clip": transformers.CLIPVisionModelWithProjection,
    }[name]
    kwargs = {"add_pooling_layer": False} if name == "dino" else {}
    try:
        raw = json.loads((path / "config.json").read_text())
        if name == "clip" and raw.get("model_type") == "clip":
            # a full CLIPModel: its vision tower plus the top-level projection size
            vision = dict(raw.get("vision_config") or {})
            vision["projection_dim"] = raw.get("projection_dim", vision.get("projection_dim", 512))
            vision.pop("model_type", None)
            kwargs["config"] = transformers.CLIPVisionConfig(**vision)
        model, info = cls.from_pretrained(str(path), local_files_only=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:  # RuntimeError: shape mismatch
        raise UserError(f"cannot load {name} weights from {path}: {str(err).splitlines()[0]}")
    # transformers re-initialises missing or mis-shaped weights with a warning; features from random
    # weights would be silently meaningless, so refuse instead
    bad = list(info.get("missing_keys", [])) + [
        str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", [])
    ]
    if bad:
        raise UserError(f"{name} weights in {path} do not fit the {name} architecture (e.g. {bad[0]})")
    return model


def _load_model(name: str, weights: str | os.PathLike):
    path = Path(weights)
    if not path.exists():
        raise UserError(f"{name} weights path {path} does not exist")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{name} weights directory {path} has no config.json (Hugging Face layout); "
                "for the original layout pass the checkpoint file itself"
            )
        model = _from_hf_dir(name, path)
    else:
        convert = {"dino": _vit_from_original, "dinov2": _dinov2_from_original, "clip": _clip_from_original}[name]
        model = convert(_load_state_file(path))
    return model.eval()


def load_extractor(name: str, weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """Build extractor `name` ('pixel' needs no weights; the others need a local weights path)."""
    import torch

    if name not in EXTRACTORS:
        raise UserError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    if name == "pixel":
        return pixel_extractor()
    if weights is None:
        raise UserError(
            f"--features {name} needs a local weights path (--{name}-weights PATH); nothing is "
            "downloaded. Use --features pixel for the weight-free proxy"
        )
    require("transformers", "eval", f"--features {name}")
    model = _load_model(name, weights)

    if name == "clip":
        size = model.config.image_size

        def embed(frames):
            with torch.no_grad():
                return model(pixel_values=clip_transform(frames, size)).image_embeds.numpy()

        return FeatureExtractor(name, False, f"CLIP image embedding from {weights}", embed)

    size = model.config.image_size if name == "dino" else EVAL_IMAGE_SIZE
    if name == "dinov2":
        # a multiple of the patch size; 224 for ViT-B/14, smaller for tiny test models
        size = min(EVAL_IMAGE_SIZE, model.config.image_size) // model.config.patch_size * model.config.patch_size

    def embed(frames):
        with torch.no_grad():
            x = dino_transform(frames, size)
            if name == "dino":
                return model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0].numpy()
            return model(pixel_values=x).pooler_output.numpy()

    return FeatureExtractor(name, False, f"{name} CLS feature from {weights}", embed)
