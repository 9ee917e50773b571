"""`bench`: stream a video without writing it and report per-chunk latency, throughput and memory.

Next to the measured times it reports the analytic FLOPs of each chunk (`contextforcing.runtime.perf`, counted
from the frames the memory actually attended), the achieved TFLOP/s, and "% of floor": the time those
FLOPs take at a peak rate divided by the measured transformer time (100% = running at the peak). The
peak is `--peak-tflops` when given, otherwise a square-matmul rate measured on the device at startup.
The FLOPs count what a chunk needs; while a bounded memory fills, its statically shaped step also computes
the masked slots ("key frames computed per pass"), which that count leaves out.
"""

from __future__ import annotations

import functools
import json
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from contextforcing import parts
from contextforcing.cli.args import add_model_args, examples, load_pipeline, model_source
from contextforcing.errors import UserError
from contextforcing.memory.spec import MemorySpec
from contextforcing.parts import ModelSource
from contextforcing.pipeline import Generation, Pipeline, check_seed, resolve_memory
from contextforcing.runtime import perf
from contextforcing.runtime.limits import MemoryTooLarge, check_stream

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> bool:
    """Restart the peak-memory count: CUDA's allocator stats, or the process's RSS high-water mark
    (Linux: writing 5 to /proc/self/clear_refs). False where the CPU mark cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak bytes allocated by torch. CPU: the process's peak RSS (VmHWM, resettable; else ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@functools.cache
def _measured_peak(device: str, dtype: torch.dtype) -> tuple[float, str]:
    return perf.measure_peak_tflops(device, dtype)


def resolve_peak(peak_tflops: float | None, device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(TFLOP/s, where it comes from): the user's number, or a matmul rate measured once per process."""
    if peak_tflops is not None:
        if not peak_tflops > 0:
            raise UserError(f"--peak-tflops must be positive, got {peak_tflops}")
        return float(peak_tflops), "given by --peak-tflops"
    return _measured_peak(str(device), dtype)


def parse_windows(text: str) -> list[tuple[int, int]]:
    windows = []
    for part in filter(None, text.split(",")):
        a, sep, b = part.partition(":")
        if not sep or not a.isdigit() or not b.isdigit() or int(a) >= int(b):
            raise UserError(f"--windows entry {part!r} must be START:END chunk indices with START < END")
        windows.append((int(a), int(b)))
    return windows


@dataclass
class Measured:
    """Each chunk's numbers, in order."""

    latencies: list[float] = field(default_factory=list)  # denoising + commit (+ decode with --decode)
    decode: list[float] = field(default_factory=list)
    transformer: list[float] = field(default_factory=list)  # denoising + commit
    peaks: list[int] = field(default_factory=list)  # peak memory so far
    attended: list[int] = field(default_factory=list)  # latent frames attended
    flops: list[float] = field(default_factory=list)  # analytic

    def steady(self, values: list) -> list:
        """The chunks after the first (its warm-up), or the one chunk there is."""
        return values[1:] or values


def run_bench(
    model: ModelSource,
    seconds: float,
    memory: str,
    memory_options: dict,
    *,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    windows: str = "",
    decode: bool = False,
    peak_tflops: float | None = None,
    progress: bool = False,
) -> dict:
    """A stream of `seconds` from `model` (the embedded one as `generate` uses it, with the memory it was trained
    with; random weights and the generation drawn from `model.seed`), timed chunk by chunk.
    With `decode`, each chunk's time includes its streaming decode (Wan VAE, world codec or preview decoder).
    `peak_tflops` sets the rate of the floor; None measures one (a square matmul on the device). `progress`: a
    tqdm bar of chunks on stderr."""
    windows_parsed = parse_windows(windows)
    spec, num_frames = _check_request(model, seconds, memory, memory_options, device, dtype)
    pipe = load_pipeline(model, device, dtype, threads)
    chunks = num_frames // pipe.preset.video.chunk_frames
    for a, b in windows_parsed:  # fail before the run, not after it
        if b > chunks:
            raise UserError(f"--windows {a}:{b} reaches past the {chunks} chunks generated")
    peak, peak_source = resolve_peak(peak_tflops, pipe.device, pipe.model.dtype)
    generation = pipe.stream(
        pipe.example_prompt,
        seconds,
        seed=model.seed,
        memory=spec,
        decode=decode,
        progress=f"bench {spec.name}" if progress else False,
    )
    resettable = reset_peak_memory(pipe.device)
    began = time.perf_counter()
    measured = _measure(pipe, generation, decode)
    result = {
        **_timings(pipe, spec, num_frames, measured, time.perf_counter() - began),
        **_memory(pipe, generation, measured, resettable),
        **_costs(pipe, measured, peak, peak_source),
        "included": _included(decode, pipe.weights),
        "median_decode_s": statistics.median(measured.steady(measured.decode)) if decode else None,
        "chunk_seconds": measured.latencies,
        "windows": {f"{a}:{b}": statistics.median(measured.latencies[a:b]) for a, b in windows_parsed},
    }
    return result


def _measure(pipe: Pipeline, generation: Generation, decode: bool) -> Measured:
    """Every chunk of `generation`, timed, with its peak memory and analytic FLOPs."""
    measured = Measured()
    for chunk in generation:
        measured.decode.append(chunk.decode_seconds if decode else 0.0)
        measured.latencies.append(chunk.seconds + measured.decode[-1])
        measured.transformer.append(chunk.seconds)
        measured.peaks.append(peak_memory_bytes(pipe.device))
        measured.attended.append(chunk.plan.attended_frames)
        config, frames = pipe.model.config, chunk.latents.shape[2]
        cost = perf.chunk_cost(
            config,
            pipe.preset.video,
            measured.attended[-1],
            steps=generation.steps,
            frames=frames,
            batch=generation.batch,
        )
        prompt = perf.prompt_flops(config) if chunk.index == 0 else 0
        measured.flops.append(cost.total * generation.branches + prompt)
    return measured


def _timings(pipe: Pipeline, spec: MemorySpec, num_frames: int, measured: Measured, wall: float) -> dict:
    video, latencies = pipe.preset.video, measured.latencies
    latent_fps = video.chunk_frames / statistics.median(measured.steady(latencies))
    return {
        "preset": pipe.preset_name,
        "weights": pipe.weights,
        "memory": spec.to_dict(),
        "device": str(pipe.device),
        "dtype": str(pipe.model.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads() if pipe.device.type == "cpu" else None,
        "chunks": len(latencies),
        "latent_frames": num_frames,
        "first_chunk_s": latencies[0],
        "median_chunk_s": statistics.median(measured.steady(latencies)),
        "last_chunk_s": latencies[-1],
        "latent_fps": latent_fps,
        "pixel_fps": latent_fps * video.vae_stride_t,
        "wall_s": wall,
        "median_transformer_s": statistics.median(measured.steady(measured.transformer)),
    }


def _memory(pipe: Pipeline, generation: Generation, measured: Measured, resettable: bool) -> dict:
    footprint, peaks = generation.memory_footprint(), measured.peaks
    if pipe.device.type == "cuda":
        scope = "CUDA bytes allocated by torch"
    else:
        scope = (
            "process peak RSS since the run began" if resettable else "process peak RSS since start (could not reset)"
        )
    return {
        "peak_memory_bytes": max(peaks),
        "peak_memory_first_quarter_bytes": max(peaks[: max(1, len(peaks) // 4)]),
        "peak_memory_scope": scope,
        "kv_memory_bytes": footprint.kv_bytes,
        "kv_view_bytes": footprint.view_bytes,
        "key_frames_last": footprint.key_frames,
        "context_rotations": footprint.rotations,
        "attended_frames_first": measured.attended[0],
        "attended_frames_last": measured.attended[-1],
    }


def _costs(pipe: Pipeline, measured: Measured, peak: float, peak_source: str) -> dict:
    flops = measured.steady(measured.flops)
    achieved = sum(flops) / sum(measured.steady(measured.transformer)) / 1e12
    return {
        "flops_first_chunk": measured.flops[0],
        "flops_median_chunk": statistics.median(flops),
        "flops_last_chunk": measured.flops[-1],
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "floor_median_chunk_s": statistics.median(flops) / (peak * 1e12),
        "floor_percent": 100.0 * achieved / peak,
    }


def _check_request(
    model: ModelSource, seconds: float, memory: str, memory_options: dict, device: str | None, dtype: str | None
) -> tuple[MemorySpec, int]:
    """Memory spec and latent frames, with every check (sizes against the device too) before a model is built."""
    trained = parts.trained_defaults(model)
    video = trained.preset.video
    spec = resolve_memory(trained.memory, {"policy": memory, **memory_options}, video.chunk_frames)
    num_frames = video.latent_frames_for(seconds)
    check_seed(model.seed)
    dev, dt = parts.resolve_device(device, dtype)
    check_stream(spec, trained.sampling, trained.preset.model, video, dtype=dt, device=dev, max_frames=num_frames)
    return spec, num_frames


def run_all_policies(model: ModelSource, seconds: float, **kwargs) -> list[dict]:
    """The same bench once per memory policy (default options), in one process, one after another.
    A policy that runs out of device memory (e.g. `full` on a long video) gets a row saying so."""
    results = []
    for name in perf.POLICIES:
        try:
            results.append(run_bench(model, seconds, name, {}, **kwargs))
        except (torch.OutOfMemoryError, MemoryTooLarge) as err:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            results.append({"memory": {"policy": name}, "error": f"out of memory: {str(err).splitlines()[0]}"})
    return results


def _included(decode: bool, weights: str) -> str:
    if not decode:
        return "transformer denoising + commit passes; no text encoding, no decode, no file output"
    decoder = (
        "preview decoder (random init has no VAE)"
        if weights == "random-init"
        else "world codec"
        if weights.startswith("embedded:")
        else "Wan VAE"
    )
    return (
        f"transformer denoising + commit passes + streaming {decoder} decode per chunk; "
        "no text encoding, no uint8 conversion, no file output"
    )


def format_table(r: dict) -> str:
    rows = [
        (
            "preset / device / dtype",
            f"{r['preset']} / {r['device']} / {r['dtype']}"
            + (f" / {r['threads']} threads" if r.get("threads") else ""),
        ),
        ("memory", json.dumps(r["memory"])),
        ("chunks (latent frames)", f"{r['chunks']} ({r['latent_frames']})"),
        ("first chunk latency", f"{r['first_chunk_s'] * 1e3:.2f} ms"),
        ("median chunk latency", f"{r['median_chunk_s'] * 1e3:.2f} ms"),
        *(
            [("  of which decode (median)", f"{r['median_decode_s'] * 1e3:.2f} ms")]
            if r.get("median_decode_s") is not None
            else []
        ),
        ("last chunk latency", f"{r['last_chunk_s'] * 1e3:.2f} ms"),
        ("latent frames / s", f"{r['latent_fps']:.2f}"),
        ("pixel frames / s", f"{r['pixel_fps']:.2f}"),
        ("peak memory (process RSS or CUDA alloc)", f"{r['peak_memory_bytes'] / 2**20:.1f} MiB"),
        ("peak memory after first quarter", f"{r['peak_memory_first_quarter_bytes'] / 2**20:.1f} MiB"),
        ("KV memory allocated", f"{r['kv_memory_bytes'] / 2**20:.3f} MiB"),
        ("rotated-key buffers (reading the KV)", f"{r['kv_view_bytes'] / 2**20:.3f} MiB"),
        ("context rotations", str(r["context_rotations"])),
        ("attended latent frames (first / last chunk)", f"{r['attended_frames_first']} / {r['attended_frames_last']}"),
        ("key frames computed per pass (last chunk)", str(r["key_frames_last"])),
        (
            "analytic FLOPs per chunk (first / median / last)",
            f"{perf._si(r['flops_first_chunk'])} / {perf._si(r['flops_median_chunk'])} / {perf._si(r['flops_last_chunk'])}",
        ),
        ("median transformer time per chunk", f"{r['median_transformer_s'] * 1e3:.2f} ms"),
        ("achieved TFLOP/s (transformer, warm-up excluded)", f"{r['achieved_tflops']:.4g}"),
        ("peak TFLOP/s", f"{r['peak_tflops']:.4g} ({r['peak_source']})"),
        ("floor per chunk (median FLOPs / peak)", f"{r['floor_median_chunk_s'] * 1e3:.4g} ms"),
        ("% of floor (floor time / measured time)", f"{r['floor_percent']:.1f}%"),
    ]
    rows += [(f"median latency chunks {w}", f"{s * 1e3:.2f} ms") for w, s in r["windows"].items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append(f"included: {r['included']}")
    lines.append(f"peak memory: {r['peak_memory_scope']}")
    return "\n".join(lines)


_POLICY_COLUMNS = (
    ("policy", lambda r: r["memory"]["policy"]),
    ("frames", lambda r: str(r["attended_frames_last"])),
    ("first ms", lambda r: f"{r['first_chunk_s'] * 1e3:.2f}"),
    ("median ms", lambda r: f"{r['median_chunk_s'] * 1e3:.2f}"),
    ("latent fps", lambda r: f"{r['latent_fps']:.1f}"),
    ("pixel fps", lambda r: f"{r['pixel_fps']:.1f}"),
    ("KV MiB", lambda r: f"{r['kv_memory_bytes'] / 2**20:.3f}"),
    ("view MiB", lambda r: f"{r['kv_view_bytes'] / 2**20:.3f}"),
    ("peak MiB", lambda r: f"{r['peak_memory_bytes'] / 2**20:.1f}"),
    ("FLOP/chunk", lambda r: perf._si(r["flops_median_chunk"])),
    ("TFLOP/s", lambda r: f"{r['achieved_tflops']:.4g}"),
    ("% floor", lambda r: f"{r['floor_percent']:.1f}"),
)


def format_policy_table(results: list[dict]) -> str:
    """One row per policy: the costs side by side."""
    ran = [r for r in results if "error" not in r]
    if not ran:
        return "\n".join(f"{r['memory']['policy']}: {r['error']}" for r in results)
    first = ran[0]
    header = [name for name, _ in _POLICY_COLUMNS]
    rows = [
        [get(r) for _, get in _POLICY_COLUMNS]
        if "error" not in r
        else [r["memory"]["policy"], *["-"] * (len(header) - 1)]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [
        f"{first['preset']} / {first['device']} / {first['dtype']}"
        + (f" / {first['threads']} threads" if first.get("threads") else "")
        + f", {first['chunks']} chunks "
        f"({first['latent_frames']} latent frames) per policy, default policy options",
        fmt(header),
        fmt(["-" * w for w in widths]),
        *(fmt(row) for row in rows),
        "frames: latent frames the last chunk attended (itself included); first ms: first chunk (time to first "
        "frame); median ms / fps: median over chunks after the first; view MiB: rotated-key buffers",
        "FLOP/chunk: analytic, median chunk after the first; % floor: (analytic FLOPs / peak) / measured "
        "transformer time",
        f"peak: {first['peak_tflops']:.4g} TFLOP/s ({first['peak_source']}); peak memory: {first['peak_memory_scope']}",
        f"included: {first['included']}",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['memory']['policy']}: {r['error']}")
        elif r["windows"]:
            lines.append(
                f"{r['memory']['policy']}: median latency "
                + ", ".join(f"chunks {w} {s * 1e3:.2f} ms" for w, s in r["windows"].items())
            )
    return "\n".join(lines)


# -- the command ----------------------------------------------------------------------------------------------
_BENCH_DESCRIPTION = """Stream a video without writing it and report each chunk's latency, frames per second, peak
memory and the share of the FLOP floor reached. With no weight flags: the embedded world model."""


def register(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="time a stream without writing video",
        description=_BENCH_DESCRIPTION,
        epilog=examples(
            "contextforcing bench --seconds 60",
            "contextforcing bench --preset tiny --random-init --seconds 320 --memory slow_fast --windows 20:40,400:420",
            "contextforcing bench --seconds 60 --all-policies --threads 1",
            "contextforcing bench --preset wan2.1-t2v-1.3b --memory slow_fast --seconds 60 --floor-only",
        ),
    )
    add_model_args(bench)
    bench.add_argument("--windows", default="", help="chunk ranges to report median latency for, e.g. 20:40,400:420")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument(
        "--decode",
        action="store_true",
        help="include the streaming VAE decode (preview decoder with --random-init) in each chunk's time",
    )
    bench.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak rate for the floor and %% of floor, e.g. 790 for an H100's measured bf16 matmul rate; "
        "default: measure a square matmul on the device at startup (stated in the output)",
    )
    bench.add_argument(
        "--all-policies",
        action="store_true",
        help="run the bench once per memory policy (default options) and print one row per policy",
    )
    bench.add_argument(
        "--floor-only",
        action="store_true",
        help="print the analytic FLOP floor of --preset/--memory (at the last chunk of --seconds) "
        "without running a model",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(func=_run)


def _run(args) -> int:
    from contextforcing.config import parse_overrides

    options = parse_overrides(args.memory_opt or [])
    if args.floor_only:  # no model is built: any preset, whatever the weight flags
        return _floor_only(args, model_source(args, check=False).preset_name, options)
    model = model_source(args)
    common = dict(
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        windows=args.windows,
        decode=args.decode,
        peak_tflops=args.peak_tflops,
        progress=not args.quiet,
    )
    if args.all_policies:
        if options:
            raise UserError(
                "--memory-opt sets one policy's options; --all-policies runs every policy with its defaults"
            )
        results = run_all_policies(model, args.seconds, **common)
        print(json.dumps(results, indent=1) if args.json else format_policy_table(results))
        return 0
    result = run_bench(model, args.seconds, args.memory, options, **common)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


def _floor_only(args, preset: str, options: dict) -> int:
    """The analytic floor of a preset and policy, without building a model (any size, on any machine).
    KV bytes use --dtype (default bfloat16, the GPU dtype); --peak-tflops adds the floor time."""
    from contextforcing.config import get_preset
    from contextforcing.memory.spec import make_spec
    from contextforcing.parts import resolve_device
    from contextforcing.runtime import perf

    cfg = get_preset(preset)
    _, dtype = resolve_device("cpu", args.dtype or "bfloat16")  # only the dtype matters here (KV bytes)
    names = perf.POLICIES if args.all_policies else (args.memory,)
    chunks = cfg.video.latent_frames_for(args.seconds) // cfg.video.chunk_frames
    texts = []
    for name in names:
        spec = make_spec(name, {} if args.all_policies else options, cfg.video.chunk_frames)
        texts.append(perf.report(cfg, spec, peak_tflops=args.peak_tflops, dtype=dtype, chunk_index=chunks - 1))
    print(f"analytic floor: preset {preset}, last chunk of {args.seconds:g} s ({chunks} chunks)")
    print("\n\n".join(texts))
    return 0
