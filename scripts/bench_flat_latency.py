"""Is a chunk's cost independent of how long the video already is? An interleaved A/B measurement.

Two streams of the same model: one advanced to chunk EARLY, one to chunk LATE. Their next chunks are then
timed alternately, one chunk each in turn, so that load changes on a shared machine hit both equally
(wall-clock windows of one long run cannot tell load drift from growth).

    python scripts/bench_flat_latency.py [--preset tiny] [--memory slow_fast] [--early 20] [--late 400] [--chunks 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from contextforcing.config import SamplingConfig
from contextforcing.memory.spec import make_spec
from contextforcing.pipeline import Pipeline
from contextforcing.sampling.stream import VideoStream


def advanced_stream(pipe, text, memory: str, chunks: int, max_frames: int):
    stream = VideoStream(
        pipe.model, text, make_spec(memory), pipe.preset.video, SamplingConfig(), max_frames=max_frames
    )
    generator = torch.Generator(pipe.device).manual_seed(0)
    with torch.no_grad():
        for _ in range(chunks):
            stream.step(stream.noise(stream.chunk_frames, generator), generator)
    return stream, generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--memory", default="slow_fast")
    ap.add_argument("--early", type=int, default=20)
    ap.add_argument("--late", type=int, default=400)
    ap.add_argument("--chunks", type=int, default=40, help="chunks timed per stream")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.random(args.preset)
    text = pipe.text_encoder.encode(["a benchmark prompt"]).to(pipe.device)
    max_frames = (args.late + args.chunks + 1) * pipe.preset.video.chunk_frames
    streams = [advanced_stream(pipe, text, args.memory, n, max_frames) for n in (args.early, args.late)]
    times: list[list[float]] = [[], []]
    with torch.no_grad():
        for _ in range(args.chunks):
            for (stream, generator), out in zip(streams, times):
                noise = stream.noise(stream.chunk_frames, generator)
                began = time.perf_counter()
                stream.step(noise, generator)
                if pipe.device.type == "cuda":
                    torch.cuda.synchronize(pipe.device)
                out.append(time.perf_counter() - began)
    early, late = (statistics.median(t) * 1e3 for t in times)
    print(f"{args.memory} on {args.preset} ({pipe.device}): median chunk latency")
    print(f"  chunks {args.early}-{args.early + args.chunks}: {early:.2f} ms")
    print(f"  chunks {args.late}-{args.late + args.chunks}: {late:.2f} ms")
    print(f"  late / early: {late / early:.3f}")


if __name__ == "__main__":
    main()
