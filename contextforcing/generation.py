"""The `generate` job: prompt -> streaming chunks -> streaming decode -> mp4 written as it grows + sidecar.

Everything here is plumbing around `sampling.stream`; no generation logic of its own.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from contextforcing.config import Preset, SamplingConfig, get_preset, to_dict
from contextforcing.data.video import VideoWriter, check_writable, write_json_atomic
from contextforcing.errors import UserError
from contextforcing.memory.policies import PolicySpec, make_spec, tier_params
from contextforcing.sampling.stream import VideoStream, stream_video


@dataclass
class GenerationRequest:
    prompt: str
    seconds: float
    out: str
    preset: str = "tiny"
    memory: str = "slow_fast"
    memory_options: dict = field(default_factory=dict)
    seed: int = 0
    random_init: bool = False
    device: str | None = None
    dtype: str | None = None
    switches: list[tuple[int, str]] = field(default_factory=list)  # (chunk index, prompt)
    flush_on_switch: bool = False


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


def resolve_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
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


def validate_memory(name: str, options: dict, chunk_frames: int) -> PolicySpec:
    spec = make_spec(name, options)
    tier_params(spec, chunk_frames)  # raises on impossible sizes before any work is done
    return spec


def run_generation(req: GenerationRequest, pipeline: Pipeline | None = None, progress: bool = True) -> dict:
    out = check_writable(req.out)
    if pipeline is None:
        if not req.random_init:
            raise UserError("no model weights given: pass --random-init (real checkpoints: --checkpoint)")
        pipeline = random_init_pipeline(req.preset, req.seed, req.device, req.dtype)
    video = pipeline.preset.video
    spec = validate_memory(req.memory, req.memory_options, video.chunk_frames)
    num_frames = video.latent_frames_for(req.seconds)
    chunks = num_frames // video.chunk_frames
    for chunk, _ in req.switches:
        if not 0 < chunk < chunks:
            raise UserError(f"prompt switch at chunk {chunk} is outside the video's {chunks} chunks")

    encode = lambda p: pipeline.text_encoder.encode([p]).to(pipeline.device)  # noqa: E731
    stream = VideoStream(pipeline.model, encode(req.prompt), spec, video, SamplingConfig(), max_frames=num_frames)
    switches = {chunk: encode(p) for chunk, p in req.switches}
    generator = torch.Generator(pipeline.device).manual_seed(req.seed)
    decoder = pipeline.codec.stream_decoder()
    from contextforcing.codecs.preview import to_uint8_frames

    records, interrupted = [], False
    began = time.perf_counter()
    with VideoWriter(out, fps=video.fps) as writer:
        bar = tqdm(total=chunks, unit="chunk", disable=not progress, desc=f"generate {out.name}")
        try:
            for chunk in stream_video(stream, num_frames, generator=generator, switches=switches,
                                      flush_on_switch=req.flush_on_switch):
                writer.write(to_uint8_frames(decoder.decode(chunk.latents.float())[0]))
                records.append({"seconds": chunk.seconds, **chunk.trace})
                bar.update()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        pixel_frames = writer.frames_written
    sidecar = {
        "prompt": req.prompt,
        "switches": [{"chunk": c, "frame": c * video.chunk_frames, "prompt": p} for c, p in req.switches],
        "seed": req.seed,
        "weights": pipeline.weights,
        "preset": pipeline.preset_name,
        "config": {
            "model": to_dict(pipeline.preset.model),
            "video": to_dict(video),
            "sampling": to_dict(SamplingConfig()),
            "memory": spec.to_dict(),
            "device": str(pipeline.device),
            "dtype": str(pipeline.model.dtype).replace("torch.", ""),
        },
        "latent_frames": len(records) * video.chunk_frames,
        "pixel_frames": pixel_frames,
        "fps": video.fps,
        "interrupted": interrupted,
        "wall_seconds": time.perf_counter() - began,
        "chunk_seconds": [r.pop("seconds") for r in records],
        "events": stream.events,
        "memory_trace": records,
    }
    write_json_atomic(Path(out).with_suffix(".json"), sidecar)
    if interrupted:
        raise KeyboardInterrupt
    return sidecar


def request_from_args(args) -> GenerationRequest:
    from contextforcing.config import parse_overrides

    fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["memory_options"] = parse_overrides(args.memory_opt or [])
    values["switches"] = [_parse_switch(s) for s in (args.switch or [])]
    return GenerationRequest(**values)


def _parse_switch(text: str) -> tuple[int, str]:
    chunk, sep, prompt = text.partition(":")
    if not sep or not chunk.strip().isdigit() or not prompt.strip():
        raise UserError(f"--switch {text!r} must look like CHUNK:PROMPT, e.g. 10:a blue cube")
    return int(chunk), prompt.strip()
