"""`contextforcing world render|dataset|heldout|script`: the synthetic evaluation and training worlds.

Two worlds: `panorama` (a room seen through a panning camera, controlled by a prompt script; the embedded
model's training domain and every command's default) and `occlusion` (one view hidden by occluders; the earlier
domain, chosen by name only: `--world occlusion`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contextforcing.cli.args import add_threads_arg, examples
from contextforcing.errors import UserError


def _occlusion_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds, got {text!r}")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "world",
        help="render the synthetic worlds, or write a training dataset",
        description="The synthetic worlds, with exact per-frame ground truth: the panorama world (a prompt "
        "script drives camera, lights and balls; the default everywhere) and, by name only (--world occlusion), "
        "the earlier occlusion world. See docs/world.md for the grammars.",
        epilog=examples(
            "contextforcing world heldout",
            "contextforcing world render --heldout 0 --out out/w0",
            "contextforcing world script --heldout 0 --out w0.jsonl",
            "contextforcing world dataset --count 100 --seconds 30 --out data/panorama30",
        ),
    )
    sub = p.add_subparsers(dest="world_command", metavar="{render,dataset,heldout,script}")
    sub.required = True

    _add_render(sub)
    _add_dataset(sub)
    _add_heldout(sub)
    _add_script(sub)
    return p


def _add_render(sub) -> None:
    r = sub.add_parser(
        "render",
        help="write one world video (mp4) and its annotations (json)",
        description="Render one world: a held-out panorama world (--heldout), a panorama prompt script "
        "(--script, --seed, --seconds), or an occlusion world (--world occlusion --prompt ...).",
        epilog=examples(
            "contextforcing world render --heldout 0 --out out/w0",
            "contextforcing world render --script tour.jsonl --seed 7 --seconds 60 --out out/tour",
            'contextforcing world render --world occlusion --prompt "striped cool room, curtain occlusions" '
            "--seed 7 --seconds 60 --out out/occlusion7",
        ),
    )
    r.add_argument(
        "--script",
        metavar="FILE",
        help='panorama world: a jsonl prompt script ({"at": S, "prompt": ...} '
        "per line, as `generate --prompts` reads it)",
    )
    r.add_argument(
        "--prompt", help="with --world occlusion: e.g. 'striped cool room, curtain occlusions, circle sprite'"
    )
    r.add_argument("--seed", type=int, help="draws the room, objects, events (and, occlusion world, the schedule)")
    r.add_argument("--seconds", type=float, help="length in seconds (rounded up to whole latent chunks)")
    r.add_argument(
        "--occlusions",
        type=_occlusion_list,
        metavar="S,S,...",
        help="force the occlusion lengths in seconds, in order (default: drawn by the seed)",
    )
    r.add_argument("--heldout", type=int, metavar="INDEX", help="render held-out evaluation world INDEX instead")
    r.add_argument(
        "--world",
        choices=WORLDS,
        default=None,
        help="which world (default: panorama; the occlusion world by name only)",
    )
    r.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="writes DIR/video.mp4 and DIR/annotations.json (panorama: also DIR/script.jsonl)",
    )
    r.add_argument("--npy", action="store_true", help="also write DIR/frames.npy (lossless uint8 frames)")
    add_threads_arg(r)
    r.set_defaults(func=run_render)


def _add_dataset(sub) -> None:
    d = sub.add_parser(
        "dataset",
        help="write training clips (fast, with a progress bar)",
        description="Write a training dataset: panorama world clips as scripts and seeds (frames rendered when "
        "loaded), or with --world occlusion shards of occlusion-world clips.",
        epilog=examples(
            "contextforcing world dataset --count 100 --seconds 30 --out data/panorama30",
            "contextforcing world dataset --world occlusion --count 100 --seconds 30 --out data/occlusion30",
        ),
    )
    d.add_argument(
        "--world",
        choices=WORLDS,
        default="panorama",
        help="panorama: lists random scripts and seeds (frames rendered on load); occlusion: shards",
    )
    d.add_argument("--count", type=int, required=True, help="number of clips")
    d.add_argument("--seconds", type=float, required=True, help="clip length in seconds")
    d.add_argument("--out", required=True, metavar="DIR")
    d.add_argument(
        "--store",
        choices=("state", "frames"),
        default="state",
        help="occlusion world: state: compact ground truth, frames rendered on load (default); "
        "frames: also store pixels",
    )
    d.add_argument("--shard-size", type=int, default=100, help="occlusion world: clips per shard file")
    d.add_argument("--workers", type=int, default=0, help="occlusion world: processes (default: one per CPU core)")
    d.add_argument("--seed", type=int, default=0, help="which training clips to draw")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_arg(d)
    d.set_defaults(func=run_dataset)


def _add_heldout(sub) -> None:
    h = sub.add_parser(
        "heldout",
        help="list the held-out evaluation worlds (JSON lines)",
        description="List the held-out evaluation worlds, one JSON object per line (panorama: seed, seconds, "
        "revisits per delay bucket and the script).",
        epilog=examples("contextforcing world heldout", "contextforcing world heldout --count 4"),
    )
    h.add_argument("--world", choices=WORLDS, default="panorama", help="default: panorama")
    h.add_argument("--count", type=int, default=None, help="panorama: list this many (default: the standard 16)")
    h.set_defaults(func=run_heldout)


def _add_script(sub) -> None:
    s = sub.add_parser(
        "script",
        help="write a panorama prompt script (jsonl for `generate --prompts`)",
        description='Write a panorama prompt script (one {"at": SECONDS, "prompt": TEXT} per line): a '
        "held-out world's, or a random training-style one.",
        epilog=examples(
            "contextforcing world script --heldout 0 --out w0.jsonl",
            "contextforcing world script --random 3 --seconds 60 --out random.jsonl",
        ),
    )
    pick = s.add_mutually_exclusive_group(required=True)
    pick.add_argument("--heldout", type=int, metavar="INDEX", help="the script of held-out panorama world INDEX")
    pick.add_argument("--random", type=int, metavar="SEED", help="a random training-style script (needs --seconds)")
    s.add_argument("--seconds", type=float, help="length of a --random script")
    s.add_argument("--out", required=True, metavar="FILE")
    s.set_defaults(func=run_script)


WORLDS = ("occlusion", "panorama")


def run_render(args) -> int:
    from contextforcing.data.world.annotations import track_to_json
    from contextforcing.data.world.heldout import eval_worlds
    from contextforcing.data.world.render import render
    from contextforcing.data.world.style import FPS
    from contextforcing.data.world.track import WorldSpec, simulate

    if args.script is not None and args.world == "occlusion":
        raise UserError("--script renders a panorama world; leave out --world occlusion")
    if args.world != "occlusion":
        return _render_panorama(args)
    if args.heldout is not None:
        worlds = eval_worlds()
        if not 0 <= args.heldout < len(worlds):
            raise UserError(f"--heldout must be in 0..{len(worlds) - 1}, got {args.heldout}")
        spec = worlds[args.heldout]
    else:
        missing = [f"--{n}" for n in ("prompt", "seed", "seconds") if getattr(args, n) is None]
        if missing:
            raise UserError(f"world render --world occlusion needs {', '.join(missing)} (or --heldout INDEX)")
        spec = WorldSpec(args.prompt, args.seed, args.seconds, args.occlusions or None)
    track = simulate(spec)
    out = _output_dir(args.out)
    _write_video(out, render(track), args.npy)
    _write_json(out / "annotations.json", track_to_json(track))
    occ = ", ".join(f"{o.seconds:g} s {o.kind}" for o in track.occlusions()) or "none"
    print(
        f"{out / 'video.mp4'}: {track.n_frames} frames ({track.n_frames / FPS:.2f} s), "
        f"{len(track.events())} events, occlusions: {occ}"
    )
    return 0


def _panorama_spec(args):
    from contextforcing.data.world.panorama.generator import chunks_for_seconds
    from contextforcing.data.world.panorama.heldout import heldout_worlds
    from contextforcing.data.world.panorama.script import read_script
    from contextforcing.data.world.panorama.simulate import PanoramaSpec

    if args.prompt is not None or args.occlusions is not None:
        raise UserError(
            "--prompt and --occlusions describe an occlusion world: add --world occlusion (the default, the "
            "panorama world, takes --script or --heldout)"
        )
    if args.heldout is not None:
        if args.script is not None:
            raise UserError("give either --script or --heldout, not both")
        if args.heldout < 0:
            raise UserError(f"--heldout must be >= 0, got {args.heldout}")
        return heldout_worlds(args.heldout + 1)[args.heldout]
    missing = [f"--{n}" for n in ("script", "seed", "seconds") if getattr(args, n) is None]
    if missing:
        raise UserError(f"world render needs {', '.join(missing)} for a panorama world (or --heldout INDEX)")
    if not args.seconds > 0:
        raise UserError(f"--seconds must be positive, got {args.seconds}")
    return PanoramaSpec(read_script(args.script, chunks_for_seconds(args.seconds)), args.seed, args.seconds)


def _render_panorama(args) -> int:
    from collections import Counter

    from contextforcing.data.world.panorama.annotations import track_to_json
    from contextforcing.data.world.panorama.render import render
    from contextforcing.data.world.panorama.simulate import simulate
    from contextforcing.data.world.style import FPS

    track = simulate(_panorama_spec(args))
    data = track_to_json(track)
    out = _output_dir(args.out)
    _write_video(out, render(track), args.npy)
    _write_text_atomic(out / "script.jsonl", track.spec.script.to_jsonl())
    _write_json(out / "annotations.json", data)
    buckets = Counter(r["bucket"] for r in data["revisits"])
    dark = sum(1 for a, b in zip(track.latent_lit, track.latent_lit[1:]) if a and not b)
    print(
        f"{out / 'video.mp4'}: {track.n_frames} frames ({track.n_frames / FPS:.2f} s), {len(track.events)} events, "
        f"{dark} times lights off, revisits fast/slow/beyond {buckets['fast']}/{buckets['slow']}/{buckets['beyond']}"
    )
    return 0


def _output_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {out}: {err.strerror}") from None
    return out


def _write_video(out: Path, frames, npy: bool) -> None:
    from contextforcing.data.world.style import FPS
    from contextforcing.io.video import VideoWriter

    with VideoWriter(out / "video.mp4", FPS) as writer:
        writer.write(frames)
    if npy:
        import numpy as np

        tmp = out / ".frames.partial.npy"
        np.save(tmp, frames)
        tmp.replace(out / "frames.npy")


def _write_json(path: Path, data: dict) -> None:
    from contextforcing.io.video import write_json_atomic

    write_json_atomic(path, data)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    tmp.replace(path)


def run_script(args) -> int:
    import numpy as np

    from contextforcing.data.world.panorama.generator import sample_training_script
    from contextforcing.data.world.panorama.heldout import heldout_worlds

    if args.heldout is not None:
        if args.heldout < 0:
            raise UserError(f"--heldout must be >= 0, got {args.heldout}")
        script = heldout_worlds(args.heldout + 1)[args.heldout].script
    else:
        if args.seconds is None or not args.seconds > 0:
            raise UserError("--random needs a positive --seconds")
        script = sample_training_script(np.random.default_rng([args.random, 11]), args.seconds)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"output directory {out.parent} does not exist")
    _write_text_atomic(out, script.to_jsonl())
    print(f"{out}: {len(script.entries)} prompts, last at {script.entries[-1].at:g} s")
    return 0


def run_dataset(args) -> int:
    from contextforcing.data.world.dataset import DatasetConfig, write_dataset

    if args.world == "panorama":
        from contextforcing.data.world.panorama.dataset import PanoramaDatasetConfig, write_panorama_dataset

        manifest = write_panorama_dataset(args.out, PanoramaDatasetConfig(args.count, args.seconds, args.seed))
        print(
            f"{args.out}: {manifest['count']} panorama clips x {manifest['n_frames']} frames (scripts and seeds; "
            f"frames are rendered on load), {manifest['seconds_to_write']:.1f} s"
        )
        return 0

    config = DatasetConfig(
        count=args.count,
        seconds=args.seconds,
        store=args.store,
        shard_size=args.shard_size,
        workers=args.workers,
        seed=args.seed,
    )
    manifest = write_dataset(args.out, config, progress=not args.quiet)
    print(
        f"{args.out}: {manifest['count']} clips x {manifest['n_frames']} frames in {len(manifest['shards'])} shards, "
        f"{manifest['bytes'] / 1e6:.1f} MB, {manifest['seconds_to_write']:.1f} s"
    )
    return 0


def run_heldout(args) -> int:
    from contextforcing.data.world.heldout import eval_worlds
    from contextforcing.data.world.prompts import parse_prompt

    if args.world == "panorama":
        from collections import Counter

        from contextforcing.data.world.panorama.heldout import STANDARD_COUNT, heldout_worlds
        from contextforcing.data.world.panorama.revisits import track_revisits
        from contextforcing.data.world.panorama.simulate import simulate

        count = STANDARD_COUNT if args.count is None else args.count
        if count < 1:
            raise UserError(f"--count must be at least 1, got {count}")
        for i, w in enumerate(heldout_worlds(count)):
            buckets = Counter(r.bucket for r in track_revisits(simulate(w)))
            print(
                json.dumps(
                    {
                        "index": i,
                        "seed": w.seed,
                        "seconds": w.seconds,
                        "revisits": dict(buckets),
                        "script": w.script.to_json(),
                    }
                )
            )
        return 0
    if args.count is not None:
        raise UserError("--count lists held-out panorama worlds; leave out --world occlusion")

    for i, w in enumerate(eval_worlds()):
        print(
            json.dumps(
                {
                    "index": i,
                    "prompt": w.prompt,
                    "seed": w.seed,
                    "seconds": w.seconds,
                    "occlusion_seconds": list(w.occlusion_seconds),
                    "held_out_prompt": parse_prompt(w.prompt).held_out,
                }
            )
        )
    return 0
