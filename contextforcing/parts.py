"""Where a pipeline comes from: the embedded world model, a Wan2.1 directory (+ a distilled checkpoint), or
random weights of a preset. Each loader returns the `Parts` a `Pipeline` is made of, with the memory and
sampling the model was trained with (the defaults of every call), and checks that the parts fit before the
big weights are read.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from contextforcing.config import ModelConfig, Preset, SamplingConfig, VideoConfig, from_dict, get_preset
from contextforcing.errors import UserError, option
from contextforcing.memory.spec import MemorySpec, make_spec

REAL_DEFAULT_PRESET, RANDOM_DEFAULT_PRESET, EMBEDDED_PRESET = "wan2.1-t2v-1.3b", "tiny", "world"
# The embedded default model (trained by `make toy-model` on the synthetic world, docs/world.md).
ASSETS = Path(__file__).resolve().parent / "assets"
EMBEDDED_WEIGHTS = ASSETS / "world_student.safetensors"
EMBEDDED_CONFIG = ASSETS / "world_student.json"
# What a model of the field was trained with when nothing says otherwise: Context Forcing's memory, Self-Forcing's
# few-step sampling.
FIELD_MEMORY = "slow_fast"


@dataclass
class Parts:
    """What a pipeline is made of: the model and the parts around it, and what it was trained with."""

    preset_name: str
    preset: Preset
    model: torch.nn.Module
    text_encoder: object
    codec: object
    device: torch.device
    weights: str  # where the weights came from
    memory: MemorySpec  # the memory the model was trained with: the default of every call
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    weights_choice: dict | None = None  # which checkpoint entry and LoRA scale were used
    prompt_check: object = None  # callable(prompt) raising UserError for prompts the model cannot read
    example_prompt: str = "a benchmark prompt"  # one the model reads (benchmarks, smoke tests)
    camera: object = None  # room-anchored model: callable(prompt) -> heading step per latent frame (tokens)


def resolve_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:  # not a device string torch knows
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"unknown {option('device')} {name!r}; choose cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option('device')} cuda was asked for but no CUDA device is available")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{option('device')} {name} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    name = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    if name not in ("float32", "bfloat16", "float16"):
        raise UserError(f"unknown {option('dtype')} {name!r}; choose float32, bfloat16 or float16")
    return dev, getattr(torch, name)


def load_random(preset_name: str, seed: int = 0, device: str | None = None, dtype: str | None = None) -> Parts:
    """A randomly initialised model with the built-in hashed text encoder and the preview codec."""
    from contextforcing.codecs.preview import PreviewCodec
    from contextforcing.codecs.text import HashTextEncoder
    from contextforcing.model.wan import build_model

    preset = get_preset(preset_name)
    dev, dt = resolve_device(device, dtype)
    model = build_model(preset.model, device=dev, dtype=dt, seed=seed)
    encoder = HashTextEncoder(preset.model.text_dim, preset.model.text_len)
    codec = PreviewCodec(preset.model.out_dim, preset.video.vae_stride_t, preset.video.vae_stride_hw)
    return Parts(preset_name, preset, model, encoder, codec, dev, "random-init", make_spec(FIELD_MEMORY))


def embedded_config(path: Path | None = None) -> dict:
    """The shipped student's config (preset, model/video shapes, memory defaults, codec), without its weights."""
    path = Path(path or EMBEDDED_CONFIG)
    if not path.is_file() or not (path.parent / path.name.replace(".json", ".safetensors")).is_file():
        raise UserError(
            f"the embedded model is missing ({path.with_suffix('.safetensors')}); build it with "
            f"`make toy-model`, or pass --random-init or --wan-dir [--checkpoint FILE]"
        )
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in ("preset", "model", "video", "memory", "codec") if k not in config]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}")
    return config


def check_embedded_preset(preset: str) -> None:
    if preset != EMBEDDED_PRESET:
        raise UserError(
            f"the embedded model is the {EMBEDDED_PRESET!r} preset; preset {preset!r} needs "
            f"{option('random_init')} or {option('source', '--wan-dir')} [{option('checkpoint')}]"
        )


def embedded_memory(config: dict) -> MemorySpec:
    """The memory the shipped model was trained with."""
    memory = config["memory"]
    return make_spec(memory.get("policy", FIELD_MEMORY), memory.get("options", {}))


def embedded_sampling(config: dict) -> SamplingConfig:
    return from_dict(SamplingConfig, config.get("sampling", {}), where="embedded sampling")


def embedded_prompt_check(config: dict):
    """The prompt grammar the shipped model was trained on, as a function that raises on a prompt it cannot
    read (None: any text)."""
    grammar = config.get("prompt_grammar")
    if grammar is None:
        return None
    if grammar == "world":
        from contextforcing.data.world.prompts import parse_prompt

        return parse_prompt
    if grammar == "panorama":
        from contextforcing.data.world.panorama import parse_panorama_prompt

        return parse_panorama_prompt
    raise UserError(f"embedded model config: unknown prompt_grammar {grammar!r}")


def embedded_camera(config: dict, preset: Preset):
    """What turns the shipped model's prompts into camera headings (None: a model whose width positions are
    screen columns). A room-anchored model names its camera in its config: `panorama`, the panorama world's."""
    camera = config.get("camera")
    if camera is None:
        if preset.model.room_anchored:
            raise UserError('embedded model config: a room-anchored model needs a camera (e.g. "camera": "panorama")')
        return None
    if camera != "panorama":
        raise UserError(f"embedded model config: unknown camera {camera!r}")
    from contextforcing.data.world.panorama.camera import PanoramaCamera

    return PanoramaCamera.for_model(preset.model, preset.video)


def embedded_codec(config: dict, config_path: Path, model_cfg: ModelConfig, preset: Preset, device):
    """The codec the shipped model was trained with: `preview`, or a learned world codec, named `world` (the
    occlusion world's, contextforcing/assets/world_codec.safetensors) or by its file name in the assets, and
    checked against the sha256 the model recorded: its latents mean something only through that codec."""
    if config["codec"] == "preview":
        from contextforcing.codecs.preview import PreviewCodec

        return PreviewCodec(model_cfg.out_dim, preset.video.vae_stride_t, preset.video.vae_stride_hw)
    from contextforcing.codecs.world import DEFAULT_PATH, load_world_codec

    path = Path(DEFAULT_PATH) if config["codec"] == "world" else ASSETS / str(config["codec"])
    if not path.is_file():
        raise UserError(f"{config_path}: codec {config['codec']!r} not found ({path})")
    expected = config.get("codec_sha256")
    if expected:
        import hashlib

        if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise UserError(
                f"{path} is not the codec the embedded model was trained with (sha256 {expected[:12]}...); "
                f"retrain the model with `make toy-model`"
            )
    return load_world_codec(path, device=device)


def load_embedded(device: str | None = None, dtype: str | None = None, path: Path | None = None) -> Parts:
    """The embedded default: the shipped world student with the hashed text encoder and the codec it was
    trained with (the learned world codec, or the preview codec if it was trained on that)."""
    from contextforcing.codecs.text import HashTextEncoder
    from contextforcing.model.checkpoints import load_model

    config_path = Path(path).with_suffix(".json") if path else EMBEDDED_CONFIG
    config = embedded_config(config_path)
    weights = config_path.with_suffix(".safetensors")
    model_cfg = from_dict(ModelConfig, config["model"], where="embedded model").validate()
    preset = Preset(model_cfg, from_dict(VideoConfig, config["video"], where="embedded video"))
    dev, dt = resolve_device(device, dtype)
    codec = embedded_codec(config, config_path, model_cfg, preset, dev)
    encoder = HashTextEncoder(model_cfg.text_dim, model_cfg.text_len)
    check_parts_fit(preset, encoder, codec)
    model = load_model(weights, model_cfg, device=dev, dtype=dt)  # stored fp32/fp16/bf16, cast to dt
    return Parts(
        config["preset"],
        preset,
        model,
        encoder,
        codec,
        dev,
        f"embedded:{weights.name}",
        embedded_memory(config),
        embedded_sampling(config),
        prompt_check=embedded_prompt_check(config),
        example_prompt=config.get("example_prompt", "a benchmark prompt"),
        camera=embedded_camera(config, preset),
    )


def load_wan(
    wan_dir: str,
    checkpoint: str | None,
    preset_name: str,
    *,
    checkpoint_format: str | None = None,
    use_ema: bool | None = None,
    lora: str | None = None,
    lora_alpha: float | None = None,
    num_heads: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Parts:
    """The DiT from `checkpoint` (or the base Wan weights in `wan_dir`), UMT5 and the Wan VAE from `wan_dir`.

    The text encoder is loaded on the CPU: `encode_prompts` moves it to the GPU only while it encodes, so
    during generation GPU memory holds the DiT, its cache and the VAE. Which weights were used is printed
    (one line on stderr) and kept in `Parts.weights_choice`.
    """
    from contextforcing.codecs.loading import load_text_encoder, load_vae
    from contextforcing.model.checkpoints import model_config, model_from_state, read_checkpoint

    preset = get_preset(preset_name)
    dev, dt = resolve_device(device, dtype)
    # Small parts first, so a wan dir that does not fit the preset fails before the big DiT is read.
    encoder = load_text_encoder(wan_dir, "cpu", dt, text_len=preset.model.text_len)
    codec = load_vae(wan_dir, dev, dt)
    check_parts_fit(preset, encoder, codec)
    source = checkpoint or wan_dir
    loaded = read_checkpoint(source, checkpoint_format, use_ema, lora=lora, lora_alpha=lora_alpha)
    print(loaded.choice.describe(), file=sys.stderr)
    preset = dataclasses.replace(preset, model=model_config(source, loaded.state, preset.model, num_heads))
    model = model_from_state(loaded.state, preset.model, dev, dt)
    return Parts(
        preset_name,
        preset,
        model,
        encoder,
        codec,
        dev,
        str(source),
        make_spec(FIELD_MEMORY),
        weights_choice=loaded.choice.to_dict(),
    )


def check_parts_fit(preset: Preset, encoder, codec) -> None:
    m, v = preset.model, preset.video
    if encoder.text_dim != m.text_dim:
        raise UserError(
            f"the text encoder gives {encoder.text_dim}-wide embeddings, the preset's model takes {m.text_dim}"
        )
    if (codec.latent_channels, codec.stride_t, codec.stride_hw) != (m.in_dim, v.vae_stride_t, v.vae_stride_hw):
        raise UserError(
            f"the VAE ({codec.latent_channels} channels, strides {codec.stride_t}/{codec.stride_hw}) does not "
            f"fit the preset ({m.in_dim} channels, strides {v.vae_stride_t}/{v.vae_stride_hw})"
        )


@dataclass(frozen=True)
class ModelSource:
    """Which model a pipeline is made of (`Pipeline.from_pretrained`'s weight keywords, the CLI's weight flags):
    nothing given, the embedded model; `source` a Wan2.1 directory (UMT5, VAE, base DiT) with `checkpoint` a
    distilled DiT; `weights` a checkpoint of a `world` preset with the embedded model's parts; `random_init`
    random weights of `preset` (drawn from `seed`). Never two of them: a silent choice would hide a typo."""

    preset: str | None = None  # None: the source's own (wan2.1-t2v-1.3b, world, tiny with random_init)
    source: str | Path | None = None
    checkpoint: str | Path | None = None
    weights: str | Path | None = None
    random_init: bool = False
    seed: int = 0  # random_init's weights
    checkpoint_format: str | None = None
    use_ema: bool | None = None  # None: EMA, unless the LoRA was trained on the raw generator (LongLive)
    lora: str | Path | None = None
    lora_alpha: float | None = None  # None: stored in the adapter, else alpha = rank
    num_heads: int | None = None  # None: the preset's

    @property
    def real(self) -> bool:
        """Weights of the field: a Wan2.1 directory or a checkpoint."""
        return self.source is not None or self.checkpoint is not None

    @property
    def embedded(self) -> bool:
        return not (self.real or self.weights is not None or self.random_init)

    @property
    def preset_name(self) -> str:
        """The preset, or the source's default: the paper's model for real weights, the embedded model's `world`
        for it and for `weights`, the tiny preset for random init."""
        if self.preset is not None:
            return self.preset
        if self.real:
            return REAL_DEFAULT_PRESET
        return RANDOM_DEFAULT_PRESET if self.random_init else EMBEDDED_PRESET

    def check(self) -> "ModelSource":
        """Every check that needs no file: one source, and no flag that would be ignored."""
        wan, random_init = option("source", "--wan-dir"), option("random_init")
        if self.random_init and (self.real or self.weights is not None):
            raise UserError(f"{random_init} cannot be combined with {wan}/{option('checkpoint')}")
        if self.weights is not None and self.real:
            raise UserError(f"weights (a world checkpoint) cannot be combined with {wan}/{option('checkpoint')}")
        if self.checkpoint is not None and self.source is None:
            raise UserError(
                f"{option('checkpoint')} needs {wan}, the Wan2.1 directory, too (for the UMT5 text encoder and the VAE)"
            )
        check_weight_flags(
            self.real,
            lora=self.lora,
            lora_alpha=self.lora_alpha,
            num_heads=self.num_heads,
            use_ema=self.use_ema,
            checkpoint_format=self.checkpoint_format,
        )
        if self.embedded:
            check_embedded_preset(self.preset_name)
        return self


@dataclass(frozen=True)
class Trained:
    """What a source's model was trained with, read without its weights: its shapes and the defaults of every
    call (so that a command checks a request before a big model is read)."""

    preset: Preset
    memory: MemorySpec
    sampling: SamplingConfig


def trained_defaults(source: ModelSource) -> Trained:
    """The embedded model's from its config; any other model's from its preset, with the field's memory and
    sampling (what `load` gives it)."""
    source.check()
    if not source.embedded:
        return Trained(get_preset(source.preset_name), make_spec(FIELD_MEMORY), SamplingConfig())
    config = embedded_config()
    model = from_dict(ModelConfig, config["model"], where="embedded model")
    preset = Preset(model, from_dict(VideoConfig, config["video"], where="embedded video"))
    return Trained(preset, embedded_memory(config), embedded_sampling(config))


def load(source: ModelSource, device: str | None = None, dtype: str | None = None) -> Parts:
    """The parts of the model `source` names (checked first, before any weight is read)."""
    source.check()
    if source.random_init:
        return load_random(source.preset_name, source.seed, device, dtype)
    if source.weights is not None:
        return load_world_checkpoint(source.weights, source.preset_name, device, dtype)
    if source.embedded:
        return load_embedded(device, dtype)
    return load_wan(
        str(source.source),
        None if source.checkpoint is None else str(source.checkpoint),
        source.preset_name,
        checkpoint_format=source.checkpoint_format,
        use_ema=source.use_ema,
        lora=None if source.lora is None else str(source.lora),
        lora_alpha=source.lora_alpha,
        num_heads=source.num_heads,
        device=device,
        dtype=dtype,
    )


def load_world_checkpoint(weights: str | Path, preset_name: str, device: str | None, dtype: str | None) -> Parts:
    """A checkpoint of a `world` preset (a training run's export) with the parts the panorama world's models use:
    the hashed text encoder, the panorama codec, the panorama prompt grammar and, for a room-anchored model, the
    panorama camera; its memory slow_fast's defaults and its sampling the default few-step list."""
    from contextforcing.codecs.text import HashTextEncoder
    from contextforcing.codecs.world import PANORAMA_PATH, load_world_codec
    from contextforcing.data.world.panorama.camera import PanoramaCamera
    from contextforcing.model.checkpoints import load_model

    if not Path(weights).is_file():
        raise UserError(f"checkpoint {weights} does not exist")
    preset = get_preset(preset_name)
    dev, dt = resolve_device(device, dtype)
    model = load_model(str(weights), preset.model, device=dev, dtype=dt).eval()
    encoder = HashTextEncoder(preset.model.text_dim, preset.model.text_len)
    codec = load_world_codec(PANORAMA_PATH, device=dev)
    return Parts(
        preset_name,
        preset,
        model,
        encoder,
        codec,
        dev,
        str(weights),
        make_spec(FIELD_MEMORY),
        prompt_check=embedded_prompt_check({"prompt_grammar": "panorama"}),
        example_prompt="warm room, hold, lights on, black ball",
        camera=PanoramaCamera.for_model(preset.model, preset.video) if preset.model.room_anchored else None,
    )


def check_weight_flags(real: bool, *, lora=None, lora_alpha=None, num_heads=None, use_ema=None, checkpoint_format=None):
    """Flags that only change loaded weights are refused where nothing is loaded, rather than ignored."""
    if lora_alpha is not None and lora is None:
        raise UserError(f"{option('lora_alpha')} needs {option('lora')}")
    flags = (
        ("lora", None, lora),
        ("num_heads", None, num_heads),
        ("use_ema", "--ema/--no-ema", use_ema),
        ("checkpoint_format", None, checkpoint_format),
    )
    given = [option(name, flag) for name, flag, value in flags if value is not None]
    if given and not real:
        raise UserError(
            f"{' and '.join(given)}: only for {option('source', '--wan-dir')}/{option('checkpoint')} weights (the "
            f"random-init, embedded and world-checkpoint models take no LoRA and no EMA choice, and their head "
            f"count from the preset)"
        )


def encode_prompts(pipeline: Parts, prompts: list[str]) -> dict[str, torch.Tensor]:
    """All prompts up front, as the DiT's device/dtype; a big encoder visits the GPU only for this call."""
    encoder, model = pipeline.text_encoder, pipeline.model
    module = getattr(encoder, "model", None)
    visit = isinstance(module, torch.nn.Module) and pipeline.device.type == "cuda"
    if visit:
        module.to(pipeline.device)
    try:
        return {p: encoder.encode([p]).to(pipeline.device, model.dtype) for p in dict.fromkeys(prompts)}
    finally:
        if visit:
            module.to("cpu")
            torch.cuda.empty_cache()
