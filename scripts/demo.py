"""`make demo`: a 2-minute scripted tour of the panorama world, streamed twice by the shipped model, against the truth.

    python scripts/demo.py --out out/demo [--seed 7]

Writes, under --out:
    tour.jsonl           the script (prompt switches on chunk boundaries, as `generate --prompts` reads them)
    truth/               the ground truth (`world render --script`): video.mp4, annotations.json, script.jsonl
    slow_fast.mp4/.json  the shipped model with the memory it was trained with (sidecar: the memory trace)
    rolling.mp4/.json    the same model, script and seed with a 3 s rolling window (`rolling`, window 12)
    *.npy                the frames of all three, lossless, for `contextforcing eval`
Every file is written whole or not at all (contextforcing.io.outputs' atomic writers): a failed write (a full disk)
stops the demo with one line and leaves no partial file under a final name.
    side_by_side.mp4     truth | slow_fast | rolling, one frame each, with a gap
    sheet_*.png          contact sheets (one frame every 2 s)
Then `make demo` runs `contextforcing eval` on the two generated videos with the tour's annotations
(out/demo/report: revisit error against delay for both, the camera, the balls, frame strips at revisits).

The tour (one room, a white ball rolling rightward and a black ball bouncing in place): a glance away and back
(fast revisits), a second view B, a 4.5 s blackout there, a third view C, back past B to the start A (revisits
after 10-20 s), a fourth view D and a 24 s blackout there, a minute in and around A and D, then B again after
more than a minute out of sight.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from contextforcing.errors import UserError  # noqa: E402

SECONDS = 120.0
ROLLING = {"policy": "rolling", "window": 12}  # 12 latent frames = 3 s, Self-Forcing's local attention


def tour():
    """The demo script (120 s)."""
    from contextforcing.data.world.panorama import ScriptBuilder, WhiteBall
    from contextforcing.data.world.panorama.generator import chunks, chunks_for_seconds

    b = ScriptBuilder("cool", WhiteBall("rightward", "slow"), black=True, source="demo tour")
    b.hold(4)  # A, in the sink
    b.pan("right", 1).pan("left", 1).hold(2)  # a glance: fast revisits
    b.pan("right", 4).hold(3).lights_off(1).hold(2)  # B, and a one-chunk blackout: fast revisits
    b.lights_off(chunks(4.5)).hold(3)  # a blackout at B: revisited from the slow memory
    b.pan("right", 4).hold(3)  # C
    b.pan("left", 8).hold(3)  # back past B to A (10-20 s later)
    b.pan("left", 4).hold(3)  # D
    b.lights_off(chunks(24.0)).hold(3)  # a blackout beyond the slow memory's span
    b.pan("right", 4).hold(6).pan("left", 2).hold(4).pan("right", 2).hold(6)  # around A, D out of view, B unseen
    b.pan("left", 2).hold(4).pan("right", 2).hold(4)
    n = chunks_for_seconds(SECONDS)
    b.hold(max(0, n - len(b) - 10))
    b.pan("right", 4).hold(6)  # B again, more than a minute later
    return b.build(n)


def write_video(path: Path, frames: np.ndarray, fps: int, what: str) -> None:
    """An mp4 and its sidecar naming what it shows, atomically (as every video the project writes)."""
    from contextforcing.io.video import save_video

    save_video(path, frames, fps, {"demo": what, "seconds": SECONDS})


def write_npy(path: Path, frames: np.ndarray) -> None:
    """Lossless frames for `contextforcing eval`, whole or not at all (a full disk must not leave a short .npy
    under its final name for `make demo` to evaluate)."""
    from contextforcing.io.outputs import write_atomic

    write_atomic(path, lambda tmp: np.save(tmp, frames))


def use_threads_and_say(requested: int | None) -> None:
    """The CPU threads (contextforcing.runtime.threads' rule unless --threads), and a line saying how many and why."""
    from contextforcing.runtime.threads import use_threads

    threads = use_threads(requested)
    print(f"demo: {threads.count} CPU thread(s) ({threads.reason}; --threads N to change)", flush=True)


def side_by_side(videos: list[np.ndarray], gap: int = 4) -> np.ndarray:
    t, h, w, _ = videos[0].shape
    out = np.full((t, h, len(videos) * w + (len(videos) - 1) * gap, 3), 255, np.uint8)
    for i, v in enumerate(videos):
        out[:, :, i * (w + gap) : i * (w + gap) + w] = v
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "out" / "demo")
    p.add_argument("--seed", type=int, default=7, help="world seed and generation seed")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: contextforcing.runtime.threads' rule)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    from contextforcing.data.world.panorama import PanoramaSpec, render, simulate, track_revisits, track_to_json
    from contextforcing.eval.panorama_runs import generate, world_pipeline
    from contextforcing.eval.report import contact_sheet
    from contextforcing.io.outputs import write_text_atomic
    from contextforcing.io.video import write_json_atomic

    try:
        use_threads_and_say(args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        spec = PanoramaSpec(tour(), args.seed, SECONDS).validate()
        write_text_atomic(args.out / "tour.jsonl", spec.script.to_jsonl())
        track = simulate(spec)
        truth = render(track)
        (args.out / "truth").mkdir(exist_ok=True)
        write_json_atomic(args.out / "truth" / "annotations.json", track_to_json(track))
        write_text_atomic(args.out / "truth" / "script.jsonl", spec.script.to_jsonl())
        write_video(args.out / "truth" / "video.mp4", truth, 16, "the ground truth of the tour")
        write_npy(args.out / "truth.npy", truth)
        buckets = {}
        for r in track_revisits(track):
            buckets[r.bucket] = buckets.get(r.bucket, 0) + 1
        print(
            f"demo: tour of {SECONDS:g} s, {len(spec.script.entries)} prompts, revisits per bucket {buckets}",
            flush=True,
        )
        pipe = world_pipeline()
        videos = {}
        for name, memory in (("slow_fast", None), ("rolling", ROLLING)):
            video = generate(pipe, spec, memory=memory, progress=False if args.quiet else f"demo {name}")
            pipe.save(video, args.out / f"{name}.mp4")
            write_npy(args.out / f"{name}.npy", video.frames)
            videos[name] = video.frames
            seconds = sum(video.record["chunk_seconds"]) + sum(video.record["decode_seconds"])
            print(
                f"demo: {name}: {len(video.frames)} frames in {seconds:.1f} s ({SECONDS / seconds:.1f}x real time), "
                f"memory {json.dumps(video.record['config']['memory'])}",
                flush=True,
            )
        write_video(
            args.out / "side_by_side.mp4",
            side_by_side([truth, videos["slow_fast"], videos["rolling"]]),
            16,
            "truth | slow_fast (trained memory) | rolling window 12",
        )
        for name, frames in (("truth", truth), *videos.items()):
            contact_sheet(frames, args.out / f"sheet_{name}.png", every_seconds=2.0, per_row=15)
        print(
            f"demo: wrote {args.out}/{{tour.jsonl, truth/, slow_fast.mp4, rolling.mp4, side_by_side.mp4, sheet_*.png}}"
        )
    except UserError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
