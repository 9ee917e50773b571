"""`contextforcing world render|dataset|heldout`: the synthetic evaluation and training world."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contextforcing.errors import UserError


def _occlusion_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds, got {text!r}")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("world", help="render the synthetic world, or write a training dataset",
                              description="The synthetic world: a scene to remember across occlusions, with exact "
                                          "per-frame ground truth. See docs/world.md for the prompt grammar.")
    sub = p.add_subparsers(dest="world_command", metavar="{render,dataset,heldout}")
    sub.required = True

    r = sub.add_parser("render", help="write one world video (mp4) and its annotations (json)")
    r.add_argument("--prompt", help="e.g. 'striped cool room, curtain occlusions, circle sprite'")
    r.add_argument("--seed", type=int, help="draws the objects, events and schedule")
    r.add_argument("--seconds", type=float, help="length in seconds (rounded up to whole latent chunks)")
    r.add_argument("--occlusions", type=_occlusion_list, metavar="S,S,...",
                   help="force the occlusion lengths in seconds, in order (default: drawn by the seed)")
    r.add_argument("--heldout", type=int, metavar="INDEX", help="render held-out evaluation world INDEX instead")
    r.add_argument("--out", required=True, metavar="DIR", help="writes DIR/video.mp4 and DIR/annotations.json")
    r.add_argument("--npy", action="store_true", help="also write DIR/frames.npy (lossless uint8 frames)")
    r.set_defaults(func=run_render)

    d = sub.add_parser("dataset", help="write sharded training clips (fast, with a progress bar)")
    d.add_argument("--count", type=int, required=True, help="number of clips")
    d.add_argument("--seconds", type=float, required=True, help="clip length in seconds")
    d.add_argument("--out", required=True, metavar="DIR")
    d.add_argument("--store", choices=("state", "frames"), default="state",
                   help="state: compact ground truth, frames rendered on load (default); frames: also store pixels")
    d.add_argument("--shard-size", type=int, default=100, help="clips per shard file")
    d.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU core)")
    d.add_argument("--seed", type=int, default=0, help="which training clips to draw")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=run_dataset)

    h = sub.add_parser("heldout", help="list the held-out evaluation worlds (JSON lines)")
    h.set_defaults(func=run_heldout)
    return p


def run_render(args) -> int:
    from contextforcing.data.video import VideoWriter, write_json_atomic
    from contextforcing.data.world.annotations import track_to_json
    from contextforcing.data.world.heldout import eval_worlds
    from contextforcing.data.world.render import render
    from contextforcing.data.world.style import FPS
    from contextforcing.data.world.track import WorldSpec, simulate

    if args.heldout is not None:
        worlds = eval_worlds()
        if not 0 <= args.heldout < len(worlds):
            raise UserError(f"--heldout must be in 0..{len(worlds) - 1}, got {args.heldout}")
        spec = worlds[args.heldout]
    else:
        missing = [f"--{n}" for n in ("prompt", "seed", "seconds") if getattr(args, n) is None]
        if missing:
            raise UserError(f"world render needs {', '.join(missing)} (or --heldout INDEX)")
        spec = WorldSpec(args.prompt, args.seed, args.seconds, args.occlusions or None)
    track = simulate(spec)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {out}: {err.strerror}")
    frames = render(track)
    with VideoWriter(out / "video.mp4", FPS) as writer:
        writer.write(frames)
    if args.npy:
        import numpy as np

        tmp = out / ".frames.partial.npy"
        np.save(tmp, frames)
        tmp.replace(out / "frames.npy")
    write_json_atomic(out / "annotations.json", track_to_json(track))
    occ = ", ".join(f"{o.seconds:g} s {o.kind}" for o in track.occlusions()) or "none"
    print(f"{out / 'video.mp4'}: {track.n_frames} frames ({track.n_frames / FPS:.2f} s), "
          f"{len(track.events())} events, occlusions: {occ}")
    return 0


def run_dataset(args) -> int:
    from contextforcing.data.world.dataset import DatasetConfig, write_dataset

    config = DatasetConfig(count=args.count, seconds=args.seconds, store=args.store, shard_size=args.shard_size,
                           workers=args.workers, seed=args.seed)
    manifest = write_dataset(args.out, config, progress=not args.quiet)
    print(f"{args.out}: {manifest['count']} clips x {manifest['n_frames']} frames in {len(manifest['shards'])} shards, "
          f"{manifest['bytes'] / 1e6:.1f} MB, {manifest['seconds_to_write']:.1f} s")
    return 0


def run_heldout(args) -> int:
    from contextforcing.data.world.heldout import eval_worlds
    from contextforcing.data.world.prompts import parse_prompt

    for i, w in enumerate(eval_worlds()):
        print(json.dumps({"index": i, "prompt": w.prompt, "seed": w.seed, "seconds": w.seconds,
                          "occlusion_seconds": list(w.occlusion_seconds),
                          "held_out_prompt": parse_prompt(w.prompt).held_out}))
    return 0
