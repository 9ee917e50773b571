"""The live viewer, measured in a real headless Chromium against `contextforcing serve` (the embedded model).

1. One stream for --seconds of wall time: the generator's own rate (pixel frames per second of chunk compute,
   decode included), the frames delivered to the browser per second and the frames it displayed per second,
   time from Start to the first frame on screen, and the time playback waited for frames (stalls).
2. --switches prompt switches, one every few seconds: time from Enter to the first chunk under the new prompt
   arriving, and to its first frame on screen (the page plays what it has before it; see --lead-chunks).
3. --cycles times: open a tab, Start, wait for a frame, close the tab; how long the server takes to free the
   stream, and the server process's resident memory after each cycle (flat = nothing leaks).

    python scripts/measure_serve.py [--seconds 30] [--switches 5] [--cycles 20] [--switch-prompt TEXT]

Needs the [serve] and [test] extras (selenium) and Debian's chromium + chromium-driver. Prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
from serve_harness import chromium_paths, js, start_chromium, type_prompt, wait_until  # noqa: E402


def start_server(extra: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "contextforcing.cli", "serve", "--port", "0", *extra], stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()
    if " at http" not in line:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return process, line.split(" at ", 1)[1].split()[0]


def open_browser():
    paths = chromium_paths()
    if paths is None:
        raise SystemExit("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    return start_chromium(paths)


def load(driver, url: str) -> None:
    driver.get(url)
    wait_until(lambda: js(driver, "window.cf && cf.info !== null && cf.session !== null"), 30, "the page did not load")


def status(url: str) -> dict:
    with urllib.request.urlopen(url + "api/status", timeout=5) as response:
        return json.load(response)


def freed_all(url: str) -> bool:
    now = status(url)
    return now["streams"] == 0 and now["sessions"] == 0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def measure_stream(driver, url: str, seconds: float, switches: int, switch_prompt: str | None) -> dict:
    load(driver, url)
    prompts = [js(driver, "cf.info.example_prompt"), switch_prompt or js(driver, "cf.info.example_prompt")]
    type_prompt(driver, prompts[0])
    wait_until(lambda: js(driver, "cf.shown >= 0"), 60, "no frame")
    time.sleep(seconds)
    m, now = js(driver, "[cf.metrics, performance.now()]")
    stats = js(driver, "cf.stats")
    frames = js(driver, "cf.received")
    info = js(driver, "cf.info")
    chunk_frames = [c["rtf"] * c["latency"] * info["fps"] for c in stats]  # rtf = (frames / fps) / latency
    result = {
        "generator_fps": sum(chunk_frames) / sum(c["latency"] for c in stats),
        "delivered_fps": (frames - m["firstChunkFrames"]) / ((m["lastChunkAt"] - m["firstChunkAt"]) / 1000),
        "shown_fps": m["framesShown"] / ((now - m["firstFrameAt"]) / 1000),
        "start_to_first_frame_ms": m["firstFrameAt"] - m["startAt"],
        "stalled_ms": m.get("stalledMs", 0.0),
        "chunks": len(stats),
        "fps": info["fps"],
        "switch_to_chunk_ms": [],
        "switch_to_frame_ms": [],
    }
    for n in range(switches):
        type_prompt(driver, prompts[(n + 1) % 2])
        wait_until(lambda: js(driver, "cf.metrics.switchShownAt !== undefined"), 60, "the switch never showed")
        m = js(driver, "cf.metrics")
        result["switch_to_chunk_ms"].append(m["switchChunkArrivedAt"] - m["switchSentAt"])
        result["switch_to_frame_ms"].append(m["switchShownAt"] - m["switchSentAt"])
        time.sleep(2.0)
    return result


def measure_cycles(driver, url: str, pid: int, cycles: int) -> list[dict]:
    rows = []
    driver.get("about:blank")
    for cycle in range(1, cycles + 1):
        driver.switch_to.new_window("tab")
        load(driver, url)
        type_prompt(driver, js(driver, "cf.info.example_prompt"))
        wait_until(lambda: js(driver, "cf.shown >= 0"), 60, "no frame")
        driver.close()
        closed = time.perf_counter()
        driver.switch_to.window(driver.window_handles[0])
        wait_until(lambda: freed_all(url), 10, "the stream was not freed")
        freed = time.perf_counter() - closed
        time.sleep(0.5)  # let a chunk still finishing in its worker thread end
        rows.append({"cycle": cycle, "freed_ms": freed * 1000, "rss_mib": rss_mib(pid)})
    return rows


def print_tables(stream: dict, cycles: list[dict], cores: int) -> None:
    print(f"live viewer, embedded model, {cores} CPU cores, headless Chromium; {stream['chunks']} chunks streamed")
    print()
    print("| measure | value |")
    print("| --- | --- |")
    print(
        f"| generator's own rate (pixel frames per second of chunk compute, decode included) | {stream['generator_fps']:.1f} fps |"
    )
    print(f"| frames delivered to the browser per second (first to last chunk) | {stream['delivered_fps']:.1f} fps |")
    print(f"| frames displayed per second (video rate {stream['fps']} fps) | {stream['shown_fps']:.1f} fps |")
    print(f"| playback waiting for frames (stalls) | {stream['stalled_ms']:.0f} ms |")
    print(f"| Start to first frame on screen | {stream['start_to_first_frame_ms']:.0f} ms |")
    for key, name in (
        ("switch_to_chunk_ms", "first chunk under the new prompt arrives"),
        ("switch_to_frame_ms", "first frame under the new prompt on screen"),
    ):
        values = stream[key]
        if values:
            print(
                f"| prompt switch (Enter) to {name}: median / max of {len(values)} | "
                f"{statistics.median(values):.0f} / {max(values):.0f} ms |"
            )
        else:
            print(f"| prompt switch to {name} | not applicable (no switch) |")
    if not cycles:
        return
    print()
    print("| open/close cycle | stream freed after close | server RSS |")
    print("| --- | --- | --- |")
    for row in cycles:
        print(f"| {row['cycle']} | {row['freed_ms']:.0f} ms | {row['rss_mib']:.1f} MiB |")
    settled = cycles[min(4, len(cycles) - 1)]
    print()
    print(
        f"RSS growth from cycle {settled['cycle']} to {cycles[-1]['cycle']}: "
        f"{cycles[-1]['rss_mib'] - settled['rss_mib']:+.1f} MiB; from cycle 1: "
        f"{cycles[-1]['rss_mib'] - cycles[0]['rss_mib']:+.1f} MiB; slowest free: "
        f"{max(r['freed_ms'] for r in cycles):.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="wall seconds of the measured stream")
    parser.add_argument("--switches", type=int, default=5)
    parser.add_argument(
        "--switch-prompt",
        default=None,
        help="prompt to switch to and back from (default: the model's example prompt again)",
    )
    parser.add_argument("--cycles", type=int, default=20, help="tab open/close cycles for the memory measurement")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `contextforcing serve` flag")
    args = parser.parse_args()
    server, url = start_server(args.server_arg)
    driver, profile = open_browser()
    try:
        stream = measure_stream(driver, url, args.seconds, args.switches, args.switch_prompt)
        cycles = measure_cycles(driver, url, server.pid, args.cycles)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        server.terminate()
        server.wait(20)
    print_tables(stream, cycles, os.cpu_count())


if __name__ == "__main__":
    main()
