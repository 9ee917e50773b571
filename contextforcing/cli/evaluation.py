"""`contextforcing eval VIDEO... [--world-annotations FILE] [--features NAME] --report OUTDIR`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from contextforcing.cli.args import add_threads_arg, examples
from contextforcing.errors import UserError
from contextforcing.eval.features import EXTRACTORS
from contextforcing.io.outputs import InterruptGuard, check_creatable, publish_files, staged_dir, write_error


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="long-video consistency metrics and world metrics, with an HTML report",
        description="Score one or more videos (side by side) with VBench-style consistency, Context Forcing's "
        "windowed first-frame similarity, clip-to-clip consistency, temporal flickering and a "
        "dynamic-degree proxy; with --world-annotations also the synthetic world's metrics: for the "
        "panorama world camera, revisit error and permanence by delay, movers and lighting against its "
        "script; for the occlusion world restoration, permanence, drift, dynamics and fidelity.",
        epilog=examples(
            "contextforcing eval video.mp4 --report out/report",
            "contextforcing world render --heldout 0 --out out/w0",
            "contextforcing eval out/w0/video.mp4 video.mp4 --labels truth,generated "
            "--world-annotations out/w0/annotations.json --report out/report",
        ),
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="mp4 files (or .npy uint8 [T,H,W,3] at 16 fps)")
    p.add_argument("--report", required=True, metavar="OUTDIR", help="where metrics.json, plots and report.html go")
    p.add_argument(
        "--world-annotations",
        action="append",
        metavar="FILE",
        help="annotations.json from `world render` (panorama or occlusion world): once (all videos) or once per video",
    )
    p.add_argument(
        "--features",
        action="append",
        choices=EXTRACTORS,
        metavar="NAME",
        help=f"feature extractor, repeatable: {', '.join(EXTRACTORS)} (default: pixel, a weight-free proxy)",
    )
    for name in EXTRACTORS[1:]:
        p.add_argument(
            f"--{name}-weights",
            metavar="PATH",
            help=f"local {name} weights: a Hugging Face directory or the original checkpoint file",
        )
    p.add_argument("--labels", metavar="A,B,...", help="names for the videos in the report (default: file names)")
    p.add_argument(
        "--clip-seconds", type=float, default=None, help="clip length for clip-to-clip consistency (default 2)"
    )
    p.add_argument("--fps", type=float, default=None, help="override the videos' frame rate")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_arg(p)
    p.set_defaults(func=run_eval)
    return p


def _labels(args) -> list[str]:
    if args.labels:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.videos):
            raise UserError(f"--labels gives {len(labels)} names for {len(args.videos)} videos")
    else:
        labels = [Path(v).stem for v in args.videos]
    # make names unique: identical stems from different folders get their index
    return [f"{lab}#{i}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def check_same_size(paths: list[str], videos: list) -> None:
    """Side-by-side plots and strips need one frame size."""
    sizes = {tuple(frames.shape[1:3]) for frames in videos}
    if len(sizes) > 1:
        listed = ", ".join(f"{p} {f.shape[2]}x{f.shape[1]}" for p, f in zip(paths, videos))
        raise UserError(f"the videos differ in resolution ({listed}); evaluate each size in its own report")


def publish_report(out_dir: Path, write) -> None:
    """`write(tmp_dir)` into a fresh directory beside `out_dir`, then its files renamed into `out_dir` at once:
    a failed or interrupted report leaves `out_dir` as it was (Ctrl-C is held only while renaming)."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create report directory {out_dir}: {err.strerror}") from None
    with InterruptGuard() as guard, staged_dir(out_dir) as tmp:
        with guard.interruptible():
            try:
                write(tmp)
            except OSError as err:  # a full disk, typically
                raise write_error(out_dir, err) from None
        publish_files(tmp, out_dir)


def panorama_line(m: dict) -> str:
    """The panorama headline in one line; numbers the video gave no event for say "not applicable"."""
    from contextforcing.data.world.panorama.geometry import BUCKETS

    h = m["headline"]

    def fmt(v, digits=2):
        return v if isinstance(v, str) else f"{v:.{digits}f}"

    made = sum(b["made"] for b in m["revisit_buckets"].values())
    total = sum(b["revisits"] for b in m["revisit_buckets"].values())
    views = m["views"]
    return (
        f"memory score {fmt(h['memory_score'])} ("
        + " ".join(f"{b}={fmt(h[f'memory_{b}'])}" for b in BUCKETS)
        + f"; camera came back beyond the fast memory {fmt(h['memory_pan_beyond_fast'])}), revisits made {made}/{total}, "
        f"camera pans {fmt(h['camera_pans'])} holds {fmt(h['camera_holds'])}, movers {fmt(h['movers'])}, "
        f"lighting {fmt(h['lighting'])}, objects per view {fmt(views['objects_per_view'], 1)} "
        f"(truth {fmt(views['truth_objects_per_view'], 1)})"
    )


def run_eval(args) -> int:
    from contextforcing.data.world.reading import load_any_annotations
    from contextforcing.eval import generic
    from contextforcing.eval.evaluate import evaluate_video, load_frames
    from contextforcing.eval.features import load_extractor
    from contextforcing.eval.report import write_report

    out_dir = check_creatable(args.report, directory=True, what="--report")
    if args.fps is not None and not 0 < args.fps < math.inf:
        raise UserError(f"--fps must be a positive number of frames per second, got {args.fps}")
    annotations = args.world_annotations or []
    if len(annotations) not in (0, 1, len(args.videos)):
        raise UserError(
            f"give --world-annotations once or once per video ({len(args.videos)}), not {len(annotations)} times"
        )
    if args.clip_seconds is not None and not args.clip_seconds > 0:
        raise UserError(f"--clip-seconds must be positive, got {args.clip_seconds}")
    labels = _labels(args)
    # everything cheap is checked before any model is built or video decoded
    tracks = [load_any_annotations(a) for a in annotations]
    tracks = tracks * len(args.videos) if len(tracks) == 1 else (tracks or [None] * len(args.videos))
    names = list(dict.fromkeys(args.features or ["pixel"]))
    extractors = [load_extractor(n, getattr(args, f"{n}_weights", None)) for n in names]
    loaded = [load_frames(video, args.fps) for video in args.videos]
    check_same_size(args.videos, [frames for frames, _ in loaded])
    results = [
        evaluate_video(
            label,
            video,
            frames,
            fps,
            extractors,
            track,
            clip_seconds=args.clip_seconds or generic.CLIP_SECONDS,
            progress=not args.quiet,
        )
        for label, video, track, (frames, fps) in zip(labels, args.videos, tracks, loaded)
    ]
    notes = [f"{e.name}: {e.description}" + (" [PROXY]" if e.proxy else "") for e in extractors]
    publish_report(out_dir, lambda tmp: write_report(tmp, results, notes, tracks))
    for r in results:
        line = [f"{r.name}: flicker {r.metrics['temporal_flickering']:.4f}"]
        for n, f in r.metrics["features"].items():
            line.append(f"{n} consistency {f['vbench_consistency']:.4f}")
        if "panorama" in r.metrics:
            line.append(panorama_line(r.metrics["panorama"]))
        if "world" in r.metrics:
            w = r.metrics["world"]
            errs = {b: v["restoration_error"] for b, v in w["restoration"]["buckets"].items()}
            line.append(
                "restoration error " + " ".join(f"{b}={'-' if v is None else f'{v:.3f}'}" for b, v in errs.items())
            )
            if w["permanence"] is not None:
                line.append(f"permanence {w['permanence']:.3f}")
        print(", ".join(line))
    print(f"report: {out_dir / 'report.html'}")
    return 0
