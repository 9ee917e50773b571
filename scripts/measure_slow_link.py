"""The live viewer on a slow link: each frame format of `contextforcing serve --frames` at full speed and on a
throttled link (Chrome's network emulation, set before the page loads so that the WebSocket is throttled too),
played for --seconds of wall time in headless Chromium. Prints one table row per case: bytes sent per second of
video, frames shown per second, the page's own "you see Nx real time" figure, and its stalls.

    python scripts/measure_slow_link.py [--seconds 12] [--kbps 100] [--formats jpeg,webp,png]

Needs the [serve] and [test] extras (selenium) and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
from measure_serve import load, open_browser, start_server  # noqa: E402
from serve_harness import js, type_prompt, wait_until  # noqa: E402

UNTHROTTLED = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}


def play(driver, url: str, kbps: float | None, seconds: float) -> dict:
    rate = -1 if kbps is None else kbps * 1000
    conditions = {
        **UNTHROTTLED,
        "latency": 0 if kbps is None else 40,
        "downloadThroughput": rate,
        "uploadThroughput": rate,
    }
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", conditions)
    load(driver, url)
    type_prompt(driver, js(driver, "cf.info.example_prompt"))
    wait_until(lambda: js(driver, "cf.shown >= 0"), 120, "no frame was shown")
    began, first = time.monotonic(), js(driver, "cf.shown")
    time.sleep(seconds)
    state = js(
        driver,
        "({play: cf.play, realtime: cf.realtime(), shown: cf.shown, bytes: cf.metrics.bytes, received: cf.received, fps: cf.fps})",
    )
    state["shown_fps"] = (state["shown"] - first) / (time.monotonic() - began)
    driver.execute_script("document.getElementById('stop').click()")
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", UNTHROTTLED)
    driver.get("about:blank")
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="wall seconds played per case")
    parser.add_argument("--kbps", type=float, default=100.0, help="the throttled link, kilobytes per second")
    parser.add_argument("--formats", default="jpeg,webp,png")
    args = parser.parse_args()
    rows = []
    driver, profile = open_browser()
    try:
        for fmt in args.formats.split(","):
            server, url = start_server(["--frames", fmt])
            try:
                for kbps in (None, args.kbps):
                    rows.append((fmt, kbps, play(driver, url, kbps, args.seconds)))
            finally:
                server.terminate()
                server.wait(20)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"live viewer, embedded model, {args.seconds:g} s of wall time per case, headless Chromium")
    print()
    print("| --frames | link | KB sent per s of video | frames shown per s | you see (page) | stalls | stalled |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for fmt, kbps, s in rows:
        per_second = s["bytes"] / 1000 / (s["received"] / s["fps"])
        link = "local" if kbps is None else f"{kbps:g} KB/s"
        print(
            f"| {fmt} | {link} | {per_second:.1f} | {s['shown_fps']:.1f} | {s['realtime']:.2f}x | "
            f"{s['play']['stalls']} | {s['play']['stalledSeconds']:.1f} s |"
        )


if __name__ == "__main__":
    main()
