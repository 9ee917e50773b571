"""The `generate` job: prompt -> streaming chunks -> streaming decode -> mp4 written as it grows + sidecar.

Everything here is plumbing around `sampling.stream`; no generation logic of its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from contextforcing.config import ModelConfig, Preset, SamplingConfig, VideoConfig, from_dict, get_preset, to_dict
from contextforcing.data.video import VideoWriter, check_writable, read_video
from contextforcing.errors import Interrupted, UserError
from contextforcing.memory.policies import MemorySpec, check_recache, make_spec, tier_params
from contextforcing.outputs import InterruptGuard, OutputLock, json_text, publish_with
from contextforcing.perf import check_memory_fits
from contextforcing.sampling.stream import VideoStream, stream_video


# An init video longer than one Wan clip (81 frames = 21 latent frames) is cut to its last 81 frames:
# the memory keeps only a bounded context anyway, and the VAE encode of a long clip would dominate.
MAX_INIT_PIXEL_FRAMES = 81
REAL_DEFAULT_PRESET, RANDOM_DEFAULT_PRESET, EMBEDDED_PRESET = "wan2.1-t2v-1.3b", "tiny", "world"
# The embedded default model (trained by `make toy-model` on the synthetic world, docs/world.md).
ASSETS = Path(__file__).resolve().parent / "assets"
EMBEDDED_WEIGHTS = ASSETS / "world_student.safetensors"
EMBEDDED_CONFIG = ASSETS / "world_student.json"


@dataclass
class GenerationRequest:
    prompt: str | None
    seconds: float
    out: str
    preset: str = RANDOM_DEFAULT_PRESET
    memory: str = "slow_fast"
    memory_options: dict = field(default_factory=dict)
    seed: int = 0
    random_init: bool = False
    device: str | None = None
    dtype: str | None = None
    switches: list[tuple[int, str]] = field(default_factory=list)  # (chunk index, prompt)
    flush_on_switch: bool = False
    recache: str = "window"  # window | longlive: what a prompt switch re-encodes
    wan_dir: str | None = None  # UMT5 + VAE, and the base DiT when no checkpoint is given
    checkpoint: str | None = None  # DiT weights in any format `model.checkpoints` reads
    checkpoint_format: str | None = None
    use_ema: bool | None = None  # None: EMA, unless the LoRA was trained on the raw generator (LongLive)
    lora: str | None = None
    lora_alpha: float | None = None  # None: stored in the adapter, else alpha = rank
    num_heads: int | None = None  # None: the preset's
    prompts: str | None = None  # JSONL prompt script: {"at": SECONDS, "prompt": TEXT} per line
    init_video: str | None = None
    init_image: str | None = None


@dataclass
class Pipeline:
    """What a generation needs besides the stream: preset, model, text encoder and codec."""

    preset_name: str
    preset: Preset
    model: torch.nn.Module
    text_encoder: object
    codec: object
    device: torch.device
    weights: str
    weights_choice: dict | None = None  # which checkpoint entry and LoRA scale were used (WeightChoice.to_dict)


def resolve_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:  # not a device string torch knows
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"unknown --device {name!r}; choose cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    name = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    if name not in ("float32", "bfloat16", "float16"):
        raise UserError(f"unknown --dtype {name!r}; choose float32, bfloat16 or float16")
    return dev, getattr(torch, name)


def random_init_pipeline(preset_name: str, seed: int, device: str | None, dtype: str | None) -> Pipeline:
    """A randomly initialised model with the built-in hashed text encoder and the preview codec."""
    from contextforcing.codecs.preview import PreviewCodec
    from contextforcing.codecs.text import HashTextEncoder
    from contextforcing.model.wan import build_model

    preset = get_preset(preset_name)
    dev, dt = resolve_device(device, dtype)
    model = build_model(preset.model, device=dev, dtype=dt, seed=seed)
    encoder = HashTextEncoder(preset.model.text_dim, preset.model.text_len)
    codec = PreviewCodec(preset.model.out_dim, preset.video.vae_stride_t, preset.video.vae_stride_hw)
    return Pipeline(preset_name, preset, model, encoder, codec, dev, "random-init")


def embedded_config(path: Path | None = None) -> dict:
    """The shipped student's config (preset, model/video shapes, memory defaults, codec), without its weights."""
    path = Path(path or EMBEDDED_CONFIG)
    if not path.is_file() or not (path.parent / path.name.replace(".json", ".safetensors")).is_file():
        raise UserError(f"the embedded model is missing ({path.with_suffix('.safetensors')}); build it with "
                        f"`make toy-model`, or pass --random-init or --wan-dir [--checkpoint FILE]")
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
        raise UserError(f"the embedded model is the {EMBEDDED_PRESET!r} preset; preset {preset!r} needs "
                        f"--random-init or --wan-dir [--checkpoint FILE]")


def embedded_memory_options(policy: str, options: dict, config: dict | None = None) -> dict:
    """The shipped model's memory options (what it was trained with) under the user's own, for its policy."""
    config = config or embedded_config()
    memory = config["memory"]
    if policy != memory.get("policy"):
        return dict(options)
    return {**memory.get("options", {}), **options}


def embedded_pipeline(device: str | None = None, dtype: str | None = None, path: Path | None = None) -> Pipeline:
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
    if config["codec"] == "world":
        from contextforcing.codecs.world import DEFAULT_PATH, load_world_codec

        codec = load_world_codec(device=dev)
        expected = config.get("codec_sha256")
        if expected:  # the student's latents mean something only through the codec it was trained with
            import hashlib

            if hashlib.sha256(Path(DEFAULT_PATH).read_bytes()).hexdigest() != expected:
                raise UserError(f"{DEFAULT_PATH} is not the world codec the embedded model was trained with "
                                f"(sha256 {expected[:12]}...); retrain the model with `make toy-model`")
    elif config["codec"] == "preview":
        from contextforcing.codecs.preview import PreviewCodec

        codec = PreviewCodec(model_cfg.out_dim, preset.video.vae_stride_t, preset.video.vae_stride_hw)
    else:
        raise UserError(f"{config_path}: unknown codec {config['codec']!r}")
    encoder = HashTextEncoder(model_cfg.text_dim, model_cfg.text_len)
    check_parts_fit(preset, encoder, codec)
    model = load_model(weights, model_cfg, device=dev, dtype=dt)  # stored fp32/fp16/bf16, cast to dt
    return Pipeline(config["preset"], preset, model, encoder, codec, dev, f"embedded:{weights.name}")


def wan_pipeline(wan_dir: str, checkpoint: str | None, preset_name: str, *, checkpoint_format: str | None = None,
                 use_ema: bool | None = None, lora: str | None = None, lora_alpha: float | None = None,
                 num_heads: int | None = None, device: str | None = None, dtype: str | None = None) -> Pipeline:
    """The DiT from `checkpoint` (or the base Wan weights in `wan_dir`), UMT5 and the Wan VAE from `wan_dir`.

    The text encoder is loaded on the CPU: `encode_prompts` moves it to the GPU only while it encodes, so
    during generation GPU memory holds the DiT, its cache and the VAE. Which weights were used is printed
    (one line on stderr) and kept in `Pipeline.weights_choice`.
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
    return Pipeline(preset_name, preset, model, encoder, codec, dev, str(source), loaded.choice.to_dict())


def check_parts_fit(preset: Preset, encoder, codec) -> None:
    m, v = preset.model, preset.video
    if encoder.text_dim != m.text_dim:
        raise UserError(f"the text encoder gives {encoder.text_dim}-wide embeddings, the preset's model takes {m.text_dim}")
    if (codec.latent_channels, codec.stride_t, codec.stride_hw) != (m.in_dim, v.vae_stride_t, v.vae_stride_hw):
        raise UserError(f"the VAE ({codec.latent_channels} channels, strides {codec.stride_t}/{codec.stride_hw}) does not "
                        f"fit the preset ({m.in_dim} channels, strides {v.vae_stride_t}/{v.vae_stride_hw})")


def pipeline_for(req: GenerationRequest) -> Pipeline:
    return load_pipeline(req.preset, random_init=req.random_init, wan_dir=req.wan_dir, checkpoint=req.checkpoint,
                         checkpoint_format=req.checkpoint_format, use_ema=req.use_ema, lora=req.lora,
                         lora_alpha=req.lora_alpha, num_heads=req.num_heads, seed=req.seed, device=req.device,
                         dtype=req.dtype)


def load_pipeline(preset: str, *, random_init: bool, wan_dir: str | None = None, checkpoint: str | None = None,
                  checkpoint_format: str | None = None, use_ema: bool | None = None, lora: str | None = None,
                  lora_alpha: float | None = None, num_heads: int | None = None, seed: int = 0,
                  device: str | None = None, dtype: str | None = None) -> Pipeline:
    """Random init or real weights, never both (a silent choice between them would hide a typo)."""
    real = wan_dir is not None or checkpoint is not None
    check_weight_flags(real, lora=lora, lora_alpha=lora_alpha, num_heads=num_heads)
    if random_init and real:
        raise UserError("--random-init cannot be combined with --wan-dir/--checkpoint")
    if random_init:
        return random_init_pipeline(preset, seed, device, dtype)
    if not real:  # the embedded default model
        check_embedded_preset(preset)
        return embedded_pipeline(device, dtype)
    if wan_dir is None:
        raise UserError("--checkpoint needs --wan-dir too (for the UMT5 text encoder and the VAE)")
    return wan_pipeline(wan_dir, checkpoint, preset, checkpoint_format=checkpoint_format, use_ema=use_ema,
                        lora=lora, lora_alpha=lora_alpha, num_heads=num_heads, device=device, dtype=dtype)


def check_weight_flags(real: bool, *, lora=None, lora_alpha=None, num_heads=None) -> None:
    """Flags that only change loaded weights are refused where nothing is loaded, rather than ignored."""
    if lora_alpha is not None and lora is None:
        raise UserError("--lora-alpha needs --lora")
    given = [flag for flag, value in (("--lora", lora), ("--num-heads", num_heads)) if value is not None]
    if given and not real:
        raise UserError(f"{' and '.join(given)}: only for --wan-dir/--checkpoint weights (the random-init and "
                        f"embedded models take no LoRA, and their head count from the preset)")


def default_preset(preset: str | None, wan_dir: str | None, checkpoint: str | None, random_init: bool = True) -> str:
    """Real weights default to the paper's model, random init to the tiny preset, no weight flags at all
    (random_init=False) to the embedded model's `world` preset."""
    if preset is not None:
        return preset
    if wan_dir or checkpoint:
        return REAL_DEFAULT_PRESET
    return RANDOM_DEFAULT_PRESET if random_init else EMBEDDED_PRESET


def is_embedded(req: GenerationRequest) -> bool:
    """No weight flags: the embedded default model."""
    return not (req.random_init or req.wan_dir or req.checkpoint)


def encode_prompts(pipeline: Pipeline, prompts: list[str]) -> dict[str, torch.Tensor]:
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


def validate_memory(name: str, options: dict, chunk_frames: int) -> MemorySpec:
    spec = make_spec(name, options)
    tier_params(spec, chunk_frames)  # raises on impossible sizes before any work is done
    return spec


# -- prompt scripts ----------------------------------------------------------------------------------------
def read_prompt_script(path: str) -> list[tuple[int, float, str]]:
    """(line number, seconds, prompt) per non-blank line of a JSONL script, times strictly increasing."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt script {path} does not exist")
    entries: list[tuple[int, float, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            entries.append(_script_entry(line, f"{path} line {number}", number, entries))
    if not entries:
        raise UserError(f"prompt script {path} has no prompts")
    return entries


def _script_entry(line: str, where: str, number: int, before: list) -> tuple[int, float, str]:
    try:
        item = json.loads(line)
    except ValueError as err:
        raise UserError(f"{where}: not valid JSON ({getattr(err, 'msg', err)})") from None
    if not isinstance(item, dict):
        raise UserError(f'{where}: expected an object like {{"at": 0, "prompt": "..."}}')
    missing = [k for k in ("at", "prompt") if k not in item]
    if missing:
        raise UserError(f"{where}: missing key {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(item) - {"at", "prompt"})
    if unknown:
        raise UserError(f"{where}: unknown key {', '.join(repr(k) for k in unknown)} (only 'at' and 'prompt')")
    at, prompt = item["at"], item["prompt"]
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
        raise UserError(f"{where}: 'at' must be a number of seconds >= 0, got {at!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: empty prompt")
    if before and at <= before[-1][1]:
        raise UserError(f"{where}: at {at:g} s is not after line {before[-1][0]} ({before[-1][1]:g} s); times must increase")
    return number, float(at), prompt.strip()


def place_script(start: str | None, entries: list[tuple[int, float, str]], video, chunks: int, source: str) -> list[dict]:
    """Each prompt on the nearest chunk boundary (half rounds up); the first takes effect at chunk 0."""
    first_line, first_at, _ = entries[0]
    if first_at == 0 and start is not None:
        raise UserError(f"{source} line {first_line}: sets the starting prompt at 0 s, so leave out --prompt")
    if first_at != 0 and start is None:
        raise UserError(f"{source} line {first_line}: the first prompt must be at 0 s (or give the start with --prompt)")
    if first_at != 0:
        entries = [(None, 0.0, start), *entries]
    chunk_s = video.chunk_frames / video.latent_fps
    placed = [_placement(entries[0], 0, video)]
    for entry in entries[1:]:
        number, at, _ = entry
        chunk = math.floor(at / chunk_s + 0.5)
        where = f"{source} line {number}: at {at:g} s"
        if chunk >= chunks:
            raise UserError(f"{where} is past the end of the video ({chunks} chunks of {chunk_s:g} s; "
                            f"the last switch can be at {(chunks - 1) * chunk_s:g} s)")
        if chunk <= placed[-1]["chunk"]:
            raise UserError(f"{where} lands on chunk {chunk} like the prompt before it; "
                            f"switches land on {chunk_s:g} s chunk boundaries, space them further apart")
        placed.append(_placement(entry, chunk, video))
    return placed


def _placement(entry: tuple, chunk: int, video) -> dict:
    line, at, prompt = entry
    frame = chunk * video.chunk_frames
    return {"prompt": prompt, "line": line, "at": at, "chunk": chunk, "frame": frame, "seconds": frame / video.latent_fps}


def plan_prompts(req: GenerationRequest, video, chunks: int) -> list[dict]:
    """Every prompt of the run with the chunk it takes effect from: --prompt, --switch or a --prompts script."""
    if req.prompts is not None:
        if req.switches:
            raise UserError("use either --prompts or --switch, not both")
        return place_script(req.prompt, read_prompt_script(req.prompts), video, chunks, req.prompts)
    if req.prompt is None:
        raise UserError("give a --prompt (or a --prompts script)")
    for chunk, _ in req.switches:
        if not 0 < chunk < chunks:
            raise UserError(f"prompt switch at chunk {chunk} is outside the video's {chunks} chunks")
    placed = [_placement((None, 0.0, req.prompt), 0, video)]
    placed += [_placement((None, None, p), c, video) for c, p in sorted(req.switches)]
    return placed


# -- init video / image --------------------------------------------------------------------------------------
def read_init_pixels(req: GenerationRequest, video) -> tuple[torch.Tensor | None, dict | None]:
    """The init video or image as [1, 3, T, H, W] in [-1, 1] at the preset's pixel size, and what was used."""
    if req.init_video and req.init_image:
        raise UserError("use either --init-video or --init-image, not both")
    if not (req.init_video or req.init_image):
        return None, None
    if req.init_image:
        frames, kind, path = _read_image(req.init_image), "image", req.init_image
    else:
        frames, kind, path = read_video(req.init_video)[0], "video", req.init_video
        # The end of the clip is what the generation continues; keep 1 + k * stride_t whole frames of it.
        keep = min(len(frames), MAX_INIT_PIXEL_FRAMES)
        frames = frames[-(1 + (keep - 1) // video.vae_stride_t * video.vae_stride_t):]
    height, width = video.latent_height * video.vae_stride_hw, video.latent_width * video.vae_stride_hw
    pixels = _fit(torch.from_numpy(frames).permute(0, 3, 1, 2), height, width) / 127.5 - 1.0
    info = {"kind": kind, "path": str(path), "source_size": list(frames.shape[1:3]), "pixel_frames": len(frames)}
    return pixels.permute(1, 0, 2, 3)[None], info


def _read_image(path: str):
    import imageio.v3 as iio
    import numpy as np

    try:
        image = np.asarray(iio.imread(path))
    except Exception as err:  # imageio raises many types for missing or broken files
        raise UserError(f"cannot read image {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)  # greyscale
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise UserError(f"image {path} has shape {list(image.shape)}; expected a single RGB(A) or grey image")
    return image[None, :, :, :3].astype(np.uint8)  # drop alpha


def _fit(frames: torch.Tensor, height: int, width: int, batch: int = 16) -> torch.Tensor:
    """uint8 [T, 3, h, w] -> float [T, 3, height, width]: scale to cover, then centre crop (no distortion).
    A few frames at a time, so a long HD clip never exists as one float tensor."""
    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, math.ceil(h * scale)), max(width, math.ceil(w * scale)))
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    out = []
    for part in frames.split(batch):
        resized = F.interpolate(part.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        out.append(resized[:, :, top : top + height, left : left + width].clamp(0, 255))
    return torch.cat(out)


# -- the run --------------------------------------------------------------------------------------------------
def sidecar_path(out: Path) -> Path:
    return out.with_suffix(".json")


def check_output(out: str) -> Path:
    """The mp4 and the sidecar beside it can be created; checked before any work."""
    path = check_writable(out)
    if path.suffix.lower() != ".mp4":
        raise UserError(f"--out {out} must end in .mp4 (its sidecar is written beside it as {path.stem}.json)")
    check_writable(sidecar_path(path))
    return path


def check_seed(seed: int) -> None:
    if not 0 <= seed < 2**64:  # torch.Generator seeds are 64-bit
        raise UserError(f"--seed must be in [0, 2**64), got {seed}")


@dataclass
class RunPlan:
    """What a request resolves to before any weights are read: memory, video, frames, prompts, init clip."""

    spec: MemorySpec
    video: VideoConfig
    num_frames: int
    placed: list[dict]
    init_pixels: torch.Tensor | None
    init: dict | None
    recache: str = "window"


def plan_run(req: GenerationRequest, pipeline: Pipeline | None = None) -> RunPlan:
    """Every cheap check of a request (script, memory policy and whether it fits the device, init file)."""
    options = req.memory_options
    if pipeline is None and is_embedded(req):
        check_embedded_preset(req.preset)
        config = embedded_config()
        video = from_dict(VideoConfig, config["video"], where="embedded video")
        model_cfg = from_dict(ModelConfig, config["model"], where="embedded model")
        options = embedded_memory_options(req.memory, options, config)
    else:
        preset = pipeline.preset if pipeline else get_preset(req.preset)
        video, model_cfg = preset.video, preset.model
    if pipeline is not None and pipeline.weights.startswith("embedded:"):
        options = embedded_memory_options(req.memory, options)
    spec = validate_memory(req.memory, options, video.chunk_frames)
    check_recache(spec, req.recache)
    num_frames = video.latent_frames_for(req.seconds)
    placed = plan_prompts(req, video, num_frames // video.chunk_frames)
    init_pixels, init = read_init_pixels(req, video)
    device, dtype = (pipeline.device, pipeline.model.dtype) if pipeline else resolve_device(req.device, req.dtype)
    init_frames = 0 if init_pixels is None else 1 + (init_pixels.shape[2] - 1) // video.vae_stride_t
    check_memory_fits(spec, model_cfg, video, dtype, device, num_frames + init_frames)
    return RunPlan(spec, video, num_frames, placed, init_pixels, init, req.recache)


def run_generation(req: GenerationRequest, pipeline: Pipeline | None = None, progress: bool = True) -> dict:
    """Generate `req.out` (mp4) and its sidecar (.json), published together (`outputs.publish_pair`).

    A second run on the same --out is refused while this one runs (`outputs.OutputLock`). Ctrl-C stops the
    generation at once and keeps a playable mp4 of the chunks done, with a sidecar marked interrupted; the
    write and the publish are never cut short, not even by a second Ctrl-C (`outputs.InterruptGuard`).
    """
    out = check_output(req.out)
    check_seed(req.seed)
    plan = plan_run(req, pipeline)
    lock = OutputLock(out.with_name(f".{out.name}.lock"), f"output {out}", remove=True)
    with lock, InterruptGuard() as guard:
        try:
            with guard.interruptible():
                pipeline = pipeline or pipeline_for(req)
                stream, decoder, switches = _start_stream(pipeline, plan)
        except KeyboardInterrupt:
            raise Interrupted("nothing was written") from None
        writer = VideoWriter(out, fps=plan.video.fps)
        try:
            began = time.perf_counter()
            records, stopped = _stream_into(writer, stream, decoder, switches, plan, req, guard, progress)
            interrupted = stopped or guard.interrupted
            sidecar = _sidecar(req, pipeline, plan, stream, records, writer.frames_written,
                               interrupted=interrupted, wall=time.perf_counter() - began)
            published = _publish(writer, out, sidecar)
        except BaseException:
            writer.discard()
            raise
    if interrupted or guard.interrupted:
        raise Interrupted(f"kept {out} ({writer.frames_written} frames) and its sidecar" if published
                          else "nothing was written")
    return sidecar


def _start_stream(pipeline: Pipeline, plan: RunPlan) -> tuple[VideoStream, object, dict]:
    """Prompts encoded, decoder (primed with the init clip, if any) and the stream with its memory."""
    placed, video = plan.placed, plan.video
    texts = encode_prompts(pipeline, [p["prompt"] for p in placed])
    decoder = pipeline.codec.stream_decoder()
    prefill = None
    if plan.init_pixels is not None:
        prefill = pipeline.codec.encode(plan.init_pixels).float()
        # Not re-emitted in the output, but run through the decoder so its causal cache continues from the
        # init clip: the first generated latent frame then decodes to stride_t frames that follow on smoothly.
        decoder.decode(prefill)
        plan.init |= {"latent_frames": prefill.shape[2], "emitted": False, "decoder_primed": True}
    stream = VideoStream(pipeline.model, texts[placed[0]["prompt"]], plan.spec, video, SamplingConfig(),
                         max_frames=plan.num_frames + (prefill.shape[2] if prefill is not None else 0),
                         recache=plan.recache)
    if prefill is not None:
        stream.prefill(prefill)
    for p in placed:  # where each prompt starts in the written mp4
        p["pixel_frame"] = _first_pixel(p["frame"], video.vae_stride_t, primed=prefill is not None)
    return stream, decoder, {p["chunk"]: texts[p["prompt"]] for p in placed[1:]}


def _stream_into(writer: VideoWriter, stream: VideoStream, decoder, switches: dict, plan: RunPlan,
                 req: GenerationRequest, guard: InterruptGuard, progress: bool) -> tuple[list[dict], bool]:
    """Chunks into the mp4 until the end or the first Ctrl-C (which may stop a chunk, never a write);
    returns the chunks' records and whether a Ctrl-C stopped it."""
    from contextforcing.codecs.preview import to_uint8_frames

    chunks = plan.num_frames // plan.video.chunk_frames
    generator = torch.Generator(stream.device).manual_seed(req.seed)
    records: list[dict] = []
    stopped = False
    bar = tqdm(total=chunks, unit="chunk", disable=not progress, desc=f"generate {writer.path.name}")
    try:
        produced = stream_video(stream, plan.num_frames, generator=generator, switches=switches,
                                flush_on_switch=req.flush_on_switch)
        while True:
            with guard.interruptible():
                chunk = next(produced, None)
                if chunk is None:
                    break
                frames = to_uint8_frames(decoder.decode(chunk.latents.float())[0])
            writer.write(frames)
            records.append({"seconds": chunk.seconds, **chunk.trace()})
            bar.update()
    except KeyboardInterrupt:
        stopped = True  # what was written is kept
    finally:
        bar.close()
    return records, stopped


def _sidecar(req: GenerationRequest, pipeline: Pipeline, plan: RunPlan, stream: VideoStream, records: list[dict],
             pixel_frames: int, interrupted: bool, wall: float) -> dict:
    placed, video = plan.placed, plan.video
    return {
        "prompt": placed[0]["prompt"],
        "switches": [{"chunk": p["chunk"], "frame": p["frame"], "prompt": p["prompt"]} for p in placed[1:]],
        "prompts": placed,
        "prompt_script": req.prompts,
        "init": plan.init,
        "seed": req.seed,
        "weights": pipeline.weights,
        "weights_choice": pipeline.weights_choice,
        "preset": pipeline.preset_name,
        "config": {
            "model": to_dict(pipeline.preset.model),
            "video": to_dict(video),
            "sampling": to_dict(SamplingConfig()),
            "memory": plan.spec.to_dict(),
            "switch": {"recache": req.recache, "flush": req.flush_on_switch},
            "device": str(pipeline.device),
            "dtype": str(pipeline.model.dtype).replace("torch.", ""),
        },
        "latent_frames": len(records) * video.chunk_frames,
        "pixel_frames": pixel_frames,
        "fps": video.fps,
        "interrupted": interrupted,
        "wall_seconds": wall,
        "chunk_seconds": [r.pop("seconds") for r in records],
        "events": stream.events,
        "memory_trace": records,
    }


def _publish(writer: VideoWriter, out: Path, sidecar: dict) -> bool:
    """The finished mp4 and its sidecar into place as a pair; False when no frame was written (nothing kept)."""
    video_file = writer.finish()
    if video_file is None:
        return False
    publish_with(video_file, sidecar_path(out), lambda tmp: tmp.write_text(json_text(sidecar), encoding="utf-8"))
    return True


def _first_pixel(frame: int, stride_t: int, primed: bool) -> int:
    """First mp4 frame of latent frame `frame`: a fresh causal decoder gives latent 0 one pixel frame."""
    if primed:
        return frame * stride_t
    return 0 if frame == 0 else 1 + (frame - 1) * stride_t


def request_from_args(args) -> GenerationRequest:
    from contextforcing.config import parse_overrides

    fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["memory_options"] = parse_overrides(args.memory_opt or [])
    values["switches"] = [_parse_switch(s) for s in (args.switch or [])]
    values["preset"] = default_preset(args.preset, args.wan_dir, args.checkpoint, random_init=args.random_init)
    values.setdefault("prompt", None)
    return GenerationRequest(**values)


def _parse_switch(text: str) -> tuple[int, str]:
    chunk, sep, prompt = text.partition(":")
    if not sep or not chunk.strip().isdigit() or not prompt.strip():
        raise UserError(f"--switch {text!r} must look like CHUNK:PROMPT, e.g. 10:a blue cube")
    return int(chunk), prompt.strip()
