"""Slots view vs the gather reference (tests/memory/gather_reference.py): an interleaved A/B of chunk latency on one machine.

Two streams of the same model, seed and policy, one with the library's memory and one with the test suite's gather reference, step chunk by chunk
*alternately*, so load changes on a shared machine hit both equally. Prints the median chunk latency of
each mode over chunk windows (while the memory fills, and once it is full), their ratio, and the bytes
each memory holds to read its store (rotated-key buffers vs the copies of the last chunk).

    python scripts/bench_view_modes.py [--preset tiny] [--memory slow_fast] [--chunks 80] [--windows 1:20,40:80]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from contextforcing.cli.bench import parse_windows
from contextforcing.config import SamplingConfig
from contextforcing.memory.spec import make_spec
from contextforcing.pipeline import Pipeline
from contextforcing.sampling.stream import VideoStream

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "memory"))
from gather_reference import use_gather  # noqa: E402  (the slow reference read path lives with the tests)

VIEW_MODES = ("slots", "gather")  # the library's slots view, and the gather reference


def stream_in_mode(pipe, text, memory: str, view_mode: str, max_frames: int) -> VideoStream:
    """A VideoStream whose memory reads its store in `view_mode` (the stream builds the default mode)."""
    stream = VideoStream(
        pipe.model, text, make_spec(memory), pipe.preset.video, SamplingConfig(), max_frames=max_frames
    )
    if view_mode == "gather":
        use_gather(stream)
    return stream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--memory", default="slow_fast")
    ap.add_argument("--chunks", type=int, default=80, help="chunks timed per stream")
    ap.add_argument("--windows", default="1:20,40:80", help="chunk ranges START:END to report (chunk 0 warms up)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    windows = parse_windows(args.windows)
    pipe = Pipeline.random(args.preset)
    text = pipe.text_encoder.encode(["a benchmark prompt"]).to(pipe.device)
    max_frames = args.chunks * pipe.preset.video.chunk_frames
    streams = {mode: stream_in_mode(pipe, text, args.memory, mode, max_frames) for mode in VIEW_MODES}
    generators = {mode: torch.Generator(pipe.device).manual_seed(0) for mode in VIEW_MODES}
    times: dict[str, list[float]] = {mode: [] for mode in VIEW_MODES}
    view_bytes: dict[str, int] = {}
    with torch.no_grad():
        for _ in range(args.chunks):
            for mode, stream in streams.items():
                noise = stream.noise(stream.chunk_frames, generators[mode])
                began = time.perf_counter()
                stream.step(noise, generators[mode])
                if pipe.device.type == "cuda":
                    torch.cuda.synchronize(pipe.device)
                times[mode].append(time.perf_counter() - began)
                view_bytes[mode] = stream.memory.view_nbytes()
    print(
        f"{args.memory} on {args.preset} ({pipe.device}, {pipe.model.dtype}, {torch.get_num_threads()} threads): "
        "median chunk latency, the two view modes interleaved"
    )
    for a, b in windows:
        slots, gather = (statistics.median(times[m][a:b]) * 1e3 for m in ("slots", "gather"))
        print(f"  chunks {a}-{b}: slots {slots:.2f} ms, gather {gather:.2f} ms, slots / gather {slots / gather:.3f}")
    print(
        f"  bytes held to read the store: slots {view_bytes['slots'] / 2**20:.3f} MiB (rotated-key buffers), "
        f"gather {view_bytes['gather'] / 2**20:.3f} MiB (copies kept for the last chunk)"
    )


if __name__ == "__main__":
    main()
