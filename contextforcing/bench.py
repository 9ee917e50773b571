"""`bench`: stream a video without writing it and report per-chunk latency, throughput and memory."""

from __future__ import annotations

import json
import resource
import statistics
import time

import torch

from contextforcing.config import SamplingConfig
from contextforcing.errors import UserError
from contextforcing.generation import encode_prompts, load_pipeline, random_init_pipeline, validate_memory
from contextforcing.sampling.stream import VideoStream, stream_video


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def parse_windows(text: str) -> list[tuple[int, int]]:
    windows = []
    for part in filter(None, text.split(",")):
        a, sep, b = part.partition(":")
        if not sep or not a.isdigit() or not b.isdigit() or int(a) >= int(b):
            raise UserError(f"--windows entry {part!r} must be START:END chunk indices with START < END")
        windows.append((int(a), int(b)))
    return windows


def run_bench(preset: str, seconds: float, memory: str, memory_options: dict, *, seed: int = 0,
              device: str | None = None, dtype: str | None = None, windows: str = "", decode: bool = False,
              weights: dict | None = None) -> dict:
    """`weights` (load_pipeline's keywords) selects real weights; without --wan-dir/--checkpoint it is random init.
    With `decode`, each chunk's time includes its streaming decode (Wan VAE, or the preview decoder)."""
    weights = weights or {}
    if weights.get("wan_dir") or weights.get("checkpoint"):
        pipe = load_pipeline(preset, seed=seed, device=device, dtype=dtype, **weights)
    else:
        pipe = random_init_pipeline(preset, seed, device, dtype)
    video = pipe.preset.video
    spec = validate_memory(memory, memory_options, video.chunk_frames)
    num_frames = video.latent_frames_for(seconds)
    text = encode_prompts(pipe, ["a benchmark prompt"])["a benchmark prompt"]
    decoder = pipe.codec.stream_decoder() if decode else None
    stream = VideoStream(pipe.model, text, spec, video, SamplingConfig(), max_frames=num_frames)
    generator = torch.Generator(pipe.device).manual_seed(seed)
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipe.device)
    latencies, decode_times, peaks = [], [], []
    began = time.perf_counter()
    for chunk in stream_video(stream, num_frames, generator=generator):
        decode_times.append(_timed_decode(decoder, chunk.latents) if decoder else 0.0)
        latencies.append(chunk.seconds + decode_times[-1])
        peaks.append(peak_memory_bytes(pipe.device))
    total = time.perf_counter() - began
    steady = latencies[1:] or latencies
    latent_fps = video.chunk_frames / statistics.median(steady)
    result = {
        "preset": preset, "memory": spec.to_dict(), "device": str(pipe.device),
        "dtype": str(pipe.model.dtype).replace("torch.", ""), "chunks": len(latencies),
        "latent_frames": num_frames, "first_chunk_s": latencies[0], "median_chunk_s": statistics.median(steady),
        "last_chunk_s": latencies[-1], "latent_fps": latent_fps, "pixel_fps": latent_fps * video.vae_stride_t,
        "wall_s": total, "peak_memory_bytes": max(peaks), "kv_memory_bytes": stream.memory.nbytes(),
        "peak_memory_first_quarter_bytes": max(peaks[: max(1, len(peaks) // 4)]),
        "context_rotations": stream.memory.rotations,
        "included": _included(decode, pipe.weights),
        "median_decode_s": statistics.median(decode_times[1:] or decode_times) if decoder else None,
        "windows": {},
    }
    for a, b in parse_windows(windows):
        if b > len(latencies):
            raise UserError(f"--windows {a}:{b} reaches past the {len(latencies)} chunks generated")
        result["windows"][f"{a}:{b}"] = statistics.median(latencies[a:b])
    return result


def _timed_decode(decoder, latents: torch.Tensor) -> float:
    began = time.perf_counter()
    video = decoder.decode(latents.float())
    if video.is_cuda:  # the decode is asynchronous on CUDA: wait, or its time lands in the next chunk
        torch.cuda.synchronize(video.device)
    return time.perf_counter() - began


def _included(decode: bool, weights: str) -> str:
    if not decode:
        return "transformer denoising + commit passes; no text encoding, no decode, no file output"
    decoder = "preview decoder (random init has no VAE)" if weights == "random-init" else "Wan VAE"
    return (f"transformer denoising + commit passes + streaming {decoder} decode per chunk; "
            "no text encoding, no uint8 conversion, no file output")


def format_table(r: dict) -> str:
    rows = [
        ("preset / device / dtype", f"{r['preset']} / {r['device']} / {r['dtype']}"),
        ("memory", json.dumps(r["memory"])),
        ("chunks (latent frames)", f"{r['chunks']} ({r['latent_frames']})"),
        ("first chunk latency", f"{r['first_chunk_s'] * 1e3:.2f} ms"),
        ("median chunk latency", f"{r['median_chunk_s'] * 1e3:.2f} ms"),
        *([("  of which decode (median)", f"{r['median_decode_s'] * 1e3:.2f} ms")] if r.get("median_decode_s") is not None else []),
        ("last chunk latency", f"{r['last_chunk_s'] * 1e3:.2f} ms"),
        ("latent frames / s", f"{r['latent_fps']:.2f}"),
        ("pixel frames / s", f"{r['pixel_fps']:.2f}"),
        ("peak memory (process RSS or CUDA alloc)", f"{r['peak_memory_bytes'] / 2**20:.1f} MiB"),
        ("peak memory after first quarter", f"{r['peak_memory_first_quarter_bytes'] / 2**20:.1f} MiB"),
        ("KV memory allocated", f"{r['kv_memory_bytes'] / 2**20:.3f} MiB"),
        ("context rotations", str(r["context_rotations"])),
    ]
    rows += [(f"median latency chunks {w}", f"{s * 1e3:.2f} ms") for w, s in r["windows"].items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append(f"included: {r['included']}")
    return "\n".join(lines)
