"""Typed configs with one source of defaults, named presets, and OmegaConf dotlist overrides.

This module imports nothing from the package, so every other module may import it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from omegaconf import OmegaConf

from contextforcing.errors import UserError, option

T = TypeVar("T")


ROPE_WIDTHS = ("screen", "room")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Wan2.1 DiT. Field names follow the original Wan2.1 `WanModel` constructor."""

    dim: int = 1536  # hidden size
    ffn_dim: int = 8960  # feed-forward hidden size
    num_layers: int = 30  # transformer blocks
    num_heads: int = 12  # attention heads; head_dim = dim // num_heads
    text_dim: int = 4096  # width of the text encoder's output (UMT5-XXL)
    text_len: int = 512  # text tokens, zero padded
    in_dim: int = 16  # latent channels in
    out_dim: int = 16  # latent channels out
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) patch of the Conv3d embedding
    freq_dim: int = 256  # sinusoidal timestep embedding width
    eps: float = 1e-6  # norm epsilon
    qk_norm: bool = True  # RMSNorm over the full dim on q and k
    cross_attn_norm: bool = True  # affine LayerNorm before cross-attention (`norm3`)
    rope_theta: float = 10000.0
    # Width positions of the 3D RoPE. `screen` (Wan): token columns of the frame. `room`: the column plus the
    # camera's heading (tokens, given per frame), on a circle of `room_tokens` tokens whose frequencies are its
    # first harmonics, so a wall seen again after a pan or a full turn has the position it had before
    # (a camera-aware model; WorldMem and Context-as-Memory condition on pose the same way).
    rope_width: str = "screen"
    room_tokens: int = 0  # rope_width room: tokens once around the room

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def room_anchored(self) -> bool:
        """Width positions follow the room (the model reads a camera heading per frame)."""
        return self.rope_width == "room"

    def validate(self) -> "ModelConfig":
        if self.dim % self.num_heads:
            raise UserError(f"model dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise UserError(f"head_dim {self.head_dim} must be even and at least 6 for 3D RoPE")
        if self.patch_size[0] != 1:
            raise UserError("temporal patch size must be 1 for frame-wise causal generation")
        if self.rope_width not in ROPE_WIDTHS:
            raise UserError(f"model rope_width must be one of {', '.join(ROPE_WIDTHS)}, got {self.rope_width!r}")
        if self.room_anchored and self.room_tokens < 1:
            raise UserError(f"rope_width room needs room_tokens >= 1 (tokens around the room), got {self.room_tokens}")
        return self


@dataclass(frozen=True)
class VideoConfig:
    """The latent video grid a preset generates, and how it maps to seconds and pixels."""

    latent_height: int = 60  # 480 px / VAE stride 8
    latent_width: int = 104  # 832 px / VAE stride 8
    chunk_frames: int = 3  # latent frames denoised together
    fps: int = 16  # pixel frames per second
    vae_stride_t: int = 4  # pixel frames per latent frame (the first latent gives 1)
    vae_stride_hw: int = 8  # pixels per latent cell

    @property
    def latent_fps(self) -> float:
        """Latent frames per second of video: 4 for Wan (16 fps / temporal stride 4)."""
        return self.fps / self.vae_stride_t

    def latent_frames_for(self, seconds: float) -> int:
        """Latent frames for `seconds` of video, rounded up to whole chunks."""
        if not 0 < seconds < math.inf:
            raise UserError(f"{option('seconds')} must be positive and finite, got {seconds}")
        frames = round(seconds * self.latent_fps)
        chunks = max(1, -(-frames // self.chunk_frames))
        return chunks * self.chunk_frames

    def pixel_frames_for(self, latent_frames: int) -> int:
        """Wan's causal VAE: the first latent frame decodes to 1 pixel frame, each later one to 4."""
        return 1 + (latent_frames - 1) * self.vae_stride_t if latent_frames else 0

    def tokens_per_frame(self, model: ModelConfig) -> int:
        _, ph, pw = model.patch_size
        return (self.latent_height // ph) * (self.latent_width // pw)


@dataclass(frozen=True)
class SamplingConfig:
    """Few-step flow-matching sampling (Self-Forcing / Context Forcing defaults)."""

    shift: float = 5.0
    num_train_timesteps: int = 1000
    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    warp_denoising_steps: bool = True
    commit_timestep: float = 0.0  # timestep label of the clean commit pass
    guidance_scale: float = 1.0  # only for multi-step teacher sampling (standard CFG form)
    euler_steps: int = 0  # > 0: multi-step Euler sampling with this many steps (a non-distilled teacher)

    def __post_init__(self):
        if self.euler_steps < 0:
            raise UserError(f"sampling euler_steps must be >= 0 (0: the few-step list), got {self.euler_steps}")


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    video: VideoConfig = field(default_factory=VideoConfig)


WORLD_DIM, WORLD_FFN, WORLD_LAYERS, WORLD_HEADS = 192, 768, 6, 6
WORLD_ROOM_TOKENS = 16
WORLD_MODEL = ModelConfig(
    dim=WORLD_DIM,
    ffn_dim=WORLD_FFN,
    num_layers=WORLD_LAYERS,
    num_heads=WORLD_HEADS,
    text_dim=64,
    text_len=24,
    freq_dim=64,
)
WORLD_VIDEO = VideoConfig(latent_height=8, latent_width=8, chunk_frames=3, fps=16)

PRESETS: dict[str, Preset] = {
    "wan2.1-t2v-1.3b": Preset(ModelConfig()),
    "wan2.1-t2v-14b": Preset(ModelConfig(dim=5120, ffn_dim=13824, num_layers=40, num_heads=40)),
    # Small enough that a chunk takes milliseconds on one CPU core; same code paths as the real sizes.
    "tiny": Preset(
        ModelConfig(dim=64, ffn_dim=128, num_layers=2, num_heads=4, text_dim=32, text_len=16, freq_dim=32),
        VideoConfig(latent_height=8, latent_width=8),
    ),
    # The embedded default model: trained on the synthetic world (docs/world.md) through the learned world
    # codec (16 channels, strides 4/8) at 64x64 px = an 8x8 latent grid. Patch (1, 2, 2) makes each token one
    # 16-px object cell of the world (16 tokens per latent frame); text from the built-in HashTextEncoder.
    # Width positions are anchored to the panorama room: 256 px around = 16 tokens of 16 px
    # (data/world/panorama/geometry.py; a test checks the two agree), the heading integrated from the script's
    # camera actions.
    "world": Preset(replace(WORLD_MODEL, rope_width="room", room_tokens=WORLD_ROOM_TOKENS), WORLD_VIDEO),
    # The same with Wan's screen-column width positions: the embedded model before room anchoring (an ablation).
    "world-screen": Preset(WORLD_MODEL, WORLD_VIDEO),
}


def get_preset(name: str) -> Preset:
    if name.endswith((".json", ".yaml", ".yml")):
        return load_preset_file(name)
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]
    preset.model.validate()
    return preset


def load_preset_file(path: str) -> Preset:
    """A custom preset from a YAML/JSON file `{model: {...}, video: {...}}` (fields as ModelConfig and
    VideoConfig; missing fields keep their defaults). Lets tests and experiments use sizes no named preset has."""
    from pathlib import Path

    if not Path(path).is_file():
        raise UserError(f"preset file {path} does not exist")
    try:
        values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # OmegaConf raises yaml and its own errors for broken files
        raise UserError(f"preset file {path} is not valid YAML/JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict) or set(values) - {"model", "video"}:
        raise UserError(f"preset file {path} must be a mapping with only 'model' and 'video' sections")
    model = from_dict(ModelConfig, values.get("model") or {}, where="preset model")
    video = from_dict(VideoConfig, values.get("video") or {}, where="preset video")
    return Preset(model.validate(), video)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Parse `key=value` strings (OmegaConf dotlist syntax, values typed by YAML rules) into a dict."""
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key=value")
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(items)), resolve=True)  # type: ignore[return-value]


def from_dict(cls: type[T], values: dict[str, Any], *, where: str) -> T:
    """Build dataclass `cls` from `values` (YAML, JSON, `key=value` overrides): the one place where configs
    are coerced. Unknown keys are rejected, simple types coerced, and a field typed as a dataclass is built
    from its mapping the same way (then validated, when it has `validate()`)."""
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"unknown {where} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    defaults = cls() if _has_defaults(cls) else None
    coerced = {}
    for key, value in values.items():
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub) and isinstance(sub, type):
            coerced[key] = value if isinstance(value, sub) else _section(sub, value, f"{where}.{key}")
        else:
            coerced[key] = _coerce(value, getattr(defaults, key, None), f"{where} option {key!r}")
    try:
        return cls(**coerced)
    except TypeError as err:  # a dataclass with a required field that the values leave out
        raise UserError(f"{where}: {err}") from None


def _section(cls: type[T], value: Any, where: str) -> T:
    out = from_dict(cls, value, where=where)
    validate = getattr(out, "validate", None)
    if not callable(validate):
        return out
    try:
        return validate() or out
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _coerce(value: Any, default: Any, what: str) -> Any:
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise UserError(f"{what} must be true or false, got {value!r}")
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{what} must be a number, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool):
            if not math.isfinite(value) or float(value) != int(value):
                raise UserError(f"{what} must be an integer, got {value!r}")
            return int(value)
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{what} must be a list, got {value!r}")
        # Each item like the default's (a list of timesteps holds numbers); an empty default says nothing.
        return tuple(_coerce(v, default[0], what) for v in value) if default else tuple(value)
    return value
