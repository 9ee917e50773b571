"""How many CPU threads torch should use: the embedded model generating --seconds of video (decode included) with
1, 2, ... threads, on an idle machine and with --busy processes spinning on other cores (a shared machine), each
case in a fresh process, --repeats times. Prints a table (median wall time, x real time, slowdown against the
fastest) and what `contextforcing.runtime.threads` chooses here. docs/performance.md ("CPU threads") has the numbers.

    python scripts/bench_threads.py [--seconds 10] [--repeats 3] [--threads 1,2] [--busy 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import contextforcing as cf
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
pipe = cf.Pipeline.from_pretrained(device="cpu", threads=threads)
pipe(pipe.example_prompt, seconds=1.0, seed=0)  # warm-up: first-call allocations and kernels
began = time.perf_counter()
video = pipe(pipe.example_prompt, seconds=seconds, seed=0)
print(json.dumps({"wall": time.perf_counter() - began, "video": len(video.frames) / video.fps}))
"""


def spin(stop) -> None:
    """A busy process: what another job on a shared machine does to a core."""
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def run_case(threads: int, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the case decides, not the caller
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads), str(seconds)], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(threads: list[int], busy: int, seconds: float, repeats: int) -> list[dict]:
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        time.sleep(1.0 if busy else 0.0)
        rows = []
        for n in threads:
            runs = [run_case(n, seconds) for _ in range(repeats)]
            wall = statistics.median(r["wall"] for r in runs)
            rows.append({"busy": busy, "threads": n, "wall": wall, "realtime": runs[0]["video"] / wall})
        return rows
    finally:
        stop.set()
        for p in spinners:
            p.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of video per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="thread counts to try")
    parser.add_argument("--busy", default="0,1,2", help="busy processes beside the run, per table block")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from contextforcing.runtime.threads import choose_threads, usable_cores

    threads = [int(t) for t in args.threads.split(",")]
    cores = usable_cores()
    print(
        f"embedded model, {args.seconds:g} s of video per run (decode included), median of {args.repeats}; "
        f"{cores} usable cores, load average {os.getloadavg()[0]:.2f} at the start"
    )
    print(flush=True)
    print("| busy processes beside it | threads | wall (s) | x real time | slower than the best |", flush=True)
    print("| --- | --- | --- | --- | --- |", flush=True)
    for busy in (int(b) for b in args.busy.split(",")):
        rows = measure(threads, busy, args.seconds, args.repeats)
        best = min(r["wall"] for r in rows)
        for r in rows:
            print(
                f"| {busy} | {r['threads']} | {r['wall']:.2f} | {r['realtime']:.2f}x | {r['wall'] / best:.2f}x |",
                flush=True,
            )
    env = os.environ.pop("OMP_NUM_THREADS", None)
    choice = choose_threads()
    if env is not None:
        os.environ["OMP_NUM_THREADS"] = env
    print(flush=True)
    print(f"contextforcing.runtime.threads chooses {choice.count} here ({choice.reason})", flush=True)


if __name__ == "__main__":
    main()
