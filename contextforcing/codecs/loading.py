"""Find and load the text encoder and VAE of a local Wan2.1 directory, in either on-disk layout.

    original (Wan-AI/Wan2.1-T2V-1.3B)          diffusers (Wan-AI/Wan2.1-T2V-1.3B-Diffusers)
    models_t5_umt5-xxl-enc-bf16.pth            text_encoder/config.json + model*.safetensors
    google/umt5-xxl/  (tokenizer)              tokenizer/
    Wan2.1_VAE.pth                             vae/config.json + diffusion_pytorch_model.safetensors

diffusers and transformers are imported only when a loader runs (they take seconds to import).
"""

from __future__ import annotations

from pathlib import Path

import torch

from contextforcing.errors import UserError

ORIGINAL, DIFFUSERS = "original", "diffusers"
LAYOUTS = (ORIGINAL, DIFFUSERS)

WAN_T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_T5_TOKENIZER = "google/umt5-xxl"
WAN_VAE_CHECKPOINT = "Wan2.1_VAE.pth"
DIFFUSERS_TEXT_ENCODER = "text_encoder"
DIFFUSERS_TOKENIZER = "tokenizer"
DIFFUSERS_VAE = "vae"


def _check_dir(wan_dir: Path) -> Path:
    wan_dir = Path(wan_dir)
    if not wan_dir.is_dir():
        raise UserError(f"{wan_dir}: Wan2.1 directory not found")
    return wan_dir


def _pick(found: dict[str, bool], layout: str | None, what: str, wan_dir: Path, expected: str) -> str:
    if layout is not None:
        if layout not in LAYOUTS:
            raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        if not found[layout]:
            raise UserError(f"{wan_dir}: no {layout}-layout {what} (expected {expected})")
        return layout
    for candidate in LAYOUTS:  # original first: it is what Wan-AI ships and Self-Forcing loads
        if found[candidate]:
            return candidate
    raise UserError(f"{wan_dir}: no {what} found (expected {expected})")


def text_encoder_layout(wan_dir: Path, layout: str | None = None) -> str:
    wan_dir = _check_dir(wan_dir)
    found = {
        ORIGINAL: (wan_dir / WAN_T5_CHECKPOINT).is_file(),
        DIFFUSERS: (wan_dir / DIFFUSERS_TEXT_ENCODER / "config.json").is_file(),
    }
    expected = f"{WAN_T5_CHECKPOINT} or {DIFFUSERS_TEXT_ENCODER}/config.json"
    return _pick(found, layout, "UMT5 text encoder", wan_dir, expected)


def vae_layout(wan_dir: Path, layout: str | None = None) -> str:
    wan_dir = _check_dir(wan_dir)
    found = {
        ORIGINAL: (wan_dir / WAN_VAE_CHECKPOINT).is_file(),
        DIFFUSERS: (wan_dir / DIFFUSERS_VAE / "config.json").is_file(),
    }
    expected = f"{WAN_VAE_CHECKPOINT} or {DIFFUSERS_VAE}/config.json"
    return _pick(found, layout, "VAE", wan_dir, expected)


def _tokenizer_dir(wan_dir: Path, layout: str) -> Path:
    # Each layout has its own tokenizer folder; accept the other one if only that is present.
    preferred = [WAN_T5_TOKENIZER, DIFFUSERS_TOKENIZER]
    if layout == DIFFUSERS:
        preferred.reverse()
    for name in preferred:
        if (wan_dir / name).is_dir():
            return wan_dir / name
    raise UserError(f"{wan_dir}: no tokenizer folder (expected {WAN_T5_TOKENIZER}/ or {DIFFUSERS_TOKENIZER}/)")


def load_text_encoder(
    wan_dir: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    layout: str | None = None,
    **kwargs,
):
    """The UMT5 encoder + tokenizer of a Wan2.1 directory as a `UMT5TextEncoder`.

    `layout` forces "original" or "diffusers" (default: detected). kwargs (`text_len`, `cache_size`) go to
    `UMT5TextEncoder`.
    """
    from contextforcing.runtime.extras import require

    require("transformers", "wan", "the UMT5 text encoder")
    from contextforcing.codecs import umt5

    layout = text_encoder_layout(wan_dir, layout)
    wan_dir = Path(wan_dir)
    tokenizer = _tokenizer_dir(wan_dir, layout)
    if layout == ORIGINAL:
        return umt5.load_umt5_original(wan_dir / WAN_T5_CHECKPOINT, tokenizer, device, dtype, **kwargs)
    return umt5.load_umt5_diffusers(wan_dir / DIFFUSERS_TEXT_ENCODER, tokenizer, device, dtype, **kwargs)


def load_vae(
    wan_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, layout: str | None = None
):
    """The VAE of a Wan2.1 directory as a `WanVideoCodec`.

    `wan_dir` may also be a VAE weight file with original names (`Wan2.1_VAE.pth` or a `.safetensors`).
    """
    from contextforcing.runtime.extras import require

    require("diffusers", "wan", "the Wan2.1 VAE")
    from contextforcing.codecs import wan_vae

    path = Path(wan_dir)
    if path.is_file():
        return wan_vae.load_vae_original(path, device, dtype)
    layout = vae_layout(path, layout)
    if layout == ORIGINAL:
        return wan_vae.load_vae_original(path / WAN_VAE_CHECKPOINT, device, dtype)
    return wan_vae.load_vae_diffusers(path / DIFFUSERS_VAE, device, dtype)
