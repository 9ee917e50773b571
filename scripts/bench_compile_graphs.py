"""How often torch.compile traces the cached chunk forward along a stream, slots view vs the gather reference.

Streams the same model twice per read path (the library's slots view, the tests' gather reference), eagerly and through
`torch.compile(model, dynamic=False)`, and prints after selected chunks how many graphs dynamo has traced
(a new graph is a compilation), the largest output difference to eager, and the median chunk latency of
both after the first chunk. With the slots view the count stops growing after the first chunks; with the
gather reference it grows with the stream.

    python scripts/bench_compile_graphs.py [--memory slow_fast] [--chunks 40] [--backend eager]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from contextforcing.config import SamplingConfig
from contextforcing.memory.spec import make_spec
from contextforcing.pipeline import Pipeline
from contextforcing.sampling.stream import VideoStream

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "memory"))
from gather_reference import use_gather  # noqa: E402  (the slow reference read path lives with the tests)

VIEW_MODES = ("slots", "gather")  # the library's slots view, and the gather reference


def run(pipe, text, memory: str, view_mode: str, chunks: int, backend: str) -> None:
    torch._dynamo.reset()
    counters.clear()
    video = pipe.preset.video
    compiled = torch.compile(pipe.model, backend=backend, dynamic=False)
    streams = [
        VideoStream(m, text, make_spec(memory), video, SamplingConfig(), max_frames=chunks * video.chunk_frames)
        for m in (pipe.model, compiled)
    ]
    for stream in streams:
        if view_mode == "gather":
            use_gather(stream)
    generators = [torch.Generator(pipe.device).manual_seed(0) for _ in streams]
    times: list[list[float]] = [[], []]
    report = {1, 2, 5, 10, 20, chunks}
    print(f"{view_mode} view, {memory}, backend {backend}:")
    with torch.no_grad():
        for chunk in range(1, chunks + 1):
            outs = []
            for stream, generator, out in zip(streams, generators, times):
                noise = stream.noise(stream.chunk_frames, generator)
                began = time.perf_counter()
                outs.append(stream.step(noise, generator))
                out.append(time.perf_counter() - began)
            if chunk in report:
                print(
                    f"  after chunk {chunk:3d}: {counters['stats']['unique_graphs']:3d} graphs traced, "
                    f"max |compiled - eager| {(outs[0] - outs[1]).abs().max().item():.2g}"
                )
    eager, compiled_ms = (statistics.median(t[1:]) * 1e3 for t in times)
    print(f"  median chunk latency after the first: eager {eager:.2f} ms, compiled {compiled_ms:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--memory", default="slow_fast")
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--backend", default="eager", help="torch.compile backend: eager, aot_eager, inductor")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 10**6  # count every recompilation instead of falling back to eager
    pipe = Pipeline.random(args.preset)
    text = pipe.text_encoder.encode(["a benchmark prompt"]).to(pipe.device)
    for view_mode in VIEW_MODES:
        run(pipe, text, args.memory, view_mode, args.chunks, args.backend)


if __name__ == "__main__":
    main()
