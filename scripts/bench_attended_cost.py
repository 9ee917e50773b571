"""What a chunk costs against what it attends: every memory read of `slow_fast`, `rolling` and `retrieve`, side by
side, on CPU.

For each attended size N (latent frames a chunk attends, itself included) streams of the same random model and seed
step *interleaved*, so load changes on a shared machine hit all of them equally:

- `rolling`, window N;
- `slow_fast` (sink 3, fast 6, a slow tier of N - 9 filled by uniform promotion) reading what it attends (the
  default: the store's attended prefix, no mask);
- `retrieve` (sink 3, fast 6, the N - 9 most relevant of a bank of 2 (N - 9) keyframes, by keys);
- the `slow_fast` memory read at fixed shapes (`fixed_shapes=True`: its capacity from the first chunk on, a key mask over
  the slots it does not attend: what every read did before).

First (N = 0 in `--sizes`) `slow_fast` with its default slow tier of 12 that stays empty (surprisal with tau -1 never
promotes), so it attends 9 of its 21 slots (the random-weights case of the H100 measurement, docs/performance.md),
read both ways.

Printed per N: the median chunk time over the timed chunks (4 denoising passes and the commit pass, no decode), the
FLOPs a chunk computes (`perf.chunk_cost` over the frames it reads, masked ones included), and the time of one
commit pass beside a whole chunk: with its flow computed, and without (`flow=False`, what the stream runs: the
last layer stops once its keys and values are stored, and the head is skipped). Steady state only: the memories are filled first.

    python scripts/bench_attended_cost.py [--preset world] [--sizes 9,12,15,18,21] [--chunks 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contextforcing.config import SamplingConfig, get_preset  # noqa: E402
from contextforcing.memory.spec import make_spec  # noqa: E402
from contextforcing.model.wan import build_model  # noqa: E402
from contextforcing.runtime import perf  # noqa: E402
from contextforcing.sampling.stream import VideoStream  # noqa: E402

WARM_CHUNKS = 12  # chunks before timing: every memory is full (capacity 21 = 7 chunks, the slow tier filled)


def memories(size: int) -> dict[str, tuple]:
    """Name -> (memory spec, fixed shapes) of the reads compared at `size` attended frames (0: the empty slow tier)."""
    if size == 0:
        empty = make_spec("slow_fast", {"slow": 12, "tau": -1.0})  # surprisal that never promotes
        return {"slow_fast 3/12/6, slow tier empty": (empty, False), "... read at fixed shapes": (empty, True)}
    uniform = make_spec("slow_fast", {"slow": size - 9, "rule": "uniform", "interval": 1})
    return {
        "rolling": (make_spec("rolling", {"window": size}), False),
        "slow_fast": (uniform, False),
        "slow_fast, read at fixed shapes": (uniform, True),
        # the same attended size chosen from a bank twice as large by key relevance (one host read per chunk)
        "retrieve": (make_spec("retrieve", {"bank": 2 * (size - 9), "top_k": size - 9, "interval": 1}), False),
    }


def run(preset: str, size: int, chunks: int) -> list[dict]:
    p = get_preset(preset)
    model = build_model(p.model, seed=0)
    text = torch.randn(1, p.model.text_len, p.model.text_dim, generator=torch.Generator().manual_seed(0))
    total = (WARM_CHUNKS + chunks) * p.video.chunk_frames
    streams = {
        name: VideoStream(model, text, spec, p.video, SamplingConfig(), max_frames=total, fixed_shapes=fixed)
        for name, (spec, fixed) in memories(size).items()
    }
    generators = {name: torch.Generator().manual_seed(0) for name in streams}
    times = {name: [] for name in streams}
    with torch.no_grad():
        for chunk in range(WARM_CHUNKS + chunks):
            for name, stream in streams.items():
                noise = stream.noise(stream.chunk_frames, generators[name])
                began = time.perf_counter()
                stream.step(noise, generators[name])
                if chunk >= WARM_CHUNKS:
                    times[name].append(time.perf_counter() - began)
    rows = []
    for name, stream in streams.items():
        read = stream.memory.key_frames()
        cost = perf.chunk_cost(p.model, p.video, read, steps=len(stream.steps))
        rows.append(
            {
                "memory": name,
                "attended": stream.last_plan.attended_frames,
                "read": read,
                "ms": statistics.median(times[name]) * 1e3,
                "gflops": cost.total / 1e9,
                "commit_ms": commit_time(stream, model, text),  # (with its flow, without)
            }
        )
    return rows


def commit_time(stream: VideoStream, model, text, repeats: int = 8) -> tuple[float, float]:
    """Median time of one more chunk's commit pass alone (the clean re-encode that writes the chunk's K/V): with
    its flow computed, and as the stream runs it (`flow=False`: the last layer stops at its K/V, no head);
    interleaved."""
    times = {True: [], False: []}
    with torch.no_grad():
        for i in range(2 * repeats):
            flow = i % 2 == 0
            x0 = stream.noise(stream.chunk_frames, torch.Generator().manual_seed(1))
            memory = stream.memory
            memory.begin_chunk(stream.frame, x0.shape[2])
            t = torch.zeros(x0.shape[0], x0.shape[2])
            began = time.perf_counter()
            model(x0, t, stream.branches[0].text, memory=memory, commit=True, flow=flow)
            times[flow].append(time.perf_counter() - began)
            memory.commit()
            stream.frame += x0.shape[2]
    return statistics.median(times[True]) * 1e3, statistics.median(times[False]) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="world")
    ap.add_argument("--sizes", default="0,9,12,15,18,21", help="attended frames (>= 9; 0: the empty slow tier)")
    ap.add_argument("--chunks", type=int, default=40, help="chunks timed per memory and size")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(0 < s < 9 or s < 0 for s in sizes):
        print("bench_attended_cost: error: --sizes must be 0 or at least 9 (sink 3 + fast 6)", file=sys.stderr)
        return 2
    print(f"preset {args.preset}, CPU, {torch.get_num_threads()} torch thread(s), {args.chunks} chunks timed per row")
    print("| attended | memory | frames read | median chunk | GFLOP per chunk | one commit pass | without its flow |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        for r in run(args.preset, size, args.chunks):
            print(
                f"| {r['attended']} | {r['memory']} | {r['read']} | {r['ms']:.1f} ms | "
                f"{r['gflops']:.3f} | {r['commit_ms'][0]:.1f} ms | {r['commit_ms'][1]:.1f} ms |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
