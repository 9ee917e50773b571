"""The panorama benchmark's oracle table: rule-based generators scored on the held-out worlds.

    python scripts/benchmark_oracles.py                      # panorama codec, 16 worlds, table into docs
    python scripts/benchmark_oracles.py --codec none         # exact frames, no codec
    python scripts/benchmark_oracles.py --codec occlusion    # the occlusion world's shipped codec
    python scripts/benchmark_oracles.py --codec PATH.safetensors --worlds 4 --no-doc --sheets out/sheets

Every oracle video (`contextforcing.eval.oracles`) goes through the chosen codec (encode, then decode),
as a model's latents would, except the first row, which is the exact rendering. Each world's scores are
cached under --out (one JSON per codec, code version and world, written atomically), so a rerun only
computes what is missing. The table (means over worlds of each world's value; "n/a" where no world had the event; "made"
is the share of the script's revisits that happened in the video) is printed and, unless --no-doc,
written between the markers of docs/evaluation.md. --sheets DIR writes a contact sheet per oracle of
the first world (PNG, one frame per second).

--occlusion-world instead prints what copying the sink scores in the occlusion world under its `recall`
protocol (ground truth given, the frames around each return drawn by the oracle): the reason that world
is retired as a benchmark (docs/world.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from contextforcing.errors import UserError  # noqa: E402

DOC = REPO / "docs" / "evaluation.md"
BEGIN, END = "<!-- BEGIN panorama-oracles -->", "<!-- END panorama-oracles -->"
CODECS = ("panorama", "occlusion", "none")


def oracles():
    from contextforcing.eval import oracles as o

    return {  # label -> (generator, goes through the codec)
        "ground truth, exact frames (no codec)": (lambda t, f: f, False),
        "**perfect memory**: ground truth through the codec": (lambda t, f: f, True),
        "forgets after 20 s out of sight (beyond the slow memory)": (lambda t, f: o.forgetting(t, f, 20.0), True),
        "forgets after 1.5 s out of sight (beyond the fast memory)": (lambda t, f: o.forgetting(t, f, 1.5), True),
        "**forgets**: follows the camera, redraws every revisit": (lambda t, f: o.forgetting(t, f, 0.0), True),
        "remembers the first view (the sink's) only": (lambda t, f: o.forgetting(t, f, 0.0, keep_sink=True), True),
        "copy the last visible frame (never dark)": (o.copy_last_visible, True),
        "copy the sink (first chunk in a loop)": (o.copy_the_sink, True),
        "**still picture** (first frame)": (o.still_picture, True),
        "cheat: constant image that darkens when told": (o.constant_darkening, True),
        "cheat: blurred first view held still (darkens when told)": (o.blurred_still, True),
        "cheat: memoryless repeating room, 32 px (re-phased after blackouts)": (
            lambda t, f: o.repeating_room(t, f, 32),
            True,
        ),
        "cheat: memoryless repeating room, 64 px (re-phased after blackouts)": (
            lambda t, f: o.repeating_room(t, f, 64),
            True,
        ),
        "cheat: forgetting + blur": (o.forgetting_blurred, True),
        "cheat: wrong room (the view switches rooms after every absence)": (o.wrong_room, True),
        "cheat: forgetting in a room without objects": (o.forgetting_without_objects, True),
        "cheat: forgetting in a crowded room (objects in most cells)": (o.forgetting_crowded, True),
        "control: another seed's room, kept (a legitimate free-running answer)": (o.other_seed_remembered, True),
    }


def load_codec(choice: str):
    from contextforcing.codecs.world import DEFAULT_PATH, PANORAMA_PATH, load_world_codec

    if choice == "none":
        return None, "none"
    path = {"panorama": PANORAMA_PATH, "occlusion": DEFAULT_PATH}.get(choice, Path(choice))
    codec = load_world_codec(path)
    return codec, f"{Path(path).name}:{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]}"


def code_version() -> str:
    """Hash of the sources a cell depends on (world, metrics, oracles): a cache from other code is not reused."""
    package = REPO / "contextforcing"
    files = sorted((package / "data" / "world" / "panorama").glob("*.py"))
    files += [
        package / "eval" / name
        for name in ("panorama_metrics.py", "panorama_motion.py", "memory_score.py", "oracles.py")
    ]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]


def world_cell(index: int, spec, codec, sheets: Path | None) -> dict:
    from contextforcing.data.world.panorama.render import render
    from contextforcing.data.world.panorama.simulate import simulate
    from contextforcing.eval.panorama_metrics import panorama_scores
    from contextforcing.training.world_codec import psnr_uint8

    track = simulate(spec)
    truth = render(track)
    rows = {}
    for label, (make, coded) in oracles().items():
        video = make(track, truth)
        if coded and codec is not None:
            video = codec.round_trip(video)
        scores = panorama_scores(video, track)
        rows[label] = {
            "headline": scores.headline(),
            "memory": scores.memory.to_json(),
            "made": {b: [s.made, s.revisits] for b, s in scores.buckets.items()},
            "errors": {b: s.error for b, s in scores.buckets.items()},
            "psnr": min(psnr_uint8(video, truth), 99.0),
        }  # identical frames: 99 (JSON has no inf)
        if sheets is not None:
            write_sheet(video, sheets / f"world{index:02d}_{len(rows):02d}.png", label)
    return {"seed": spec.seed, "rows": rows}


def write_sheet(frames: np.ndarray, path: Path, label: str) -> None:
    from contextforcing.eval.report import contact_sheet

    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(frames, path, every_seconds=1.0, per_row=15)
    print(f"  sheet {path}: {label}")


def _fmt(values: list, digits: int) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.{digits}f}" if values else "n/a"


COLUMNS = (
    "memory score, all / fast / slow / beyond",
    "memory score by cause: camera / lights / both",
    "revisit error (old metric), fast / slow / beyond",
    "revisits made, fast / slow / beyond",
    "camera obeyed, pans / holds",
    "movers obeyed",
    "lighting obeyed",
)


def table(cells: list[dict]) -> str:
    lines = ["| oracle | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label in oracles():
        rows = [c["rows"][label] for c in cells]

        def col(get, digits=2):
            return _fmt([get(r) for r in rows], digits)

        made = []
        for b in ("fast", "slow", "beyond"):
            got, total = sum(r["made"][b][0] for r in rows), sum(r["made"][b][1] for r in rows)
            made.append(f"{got / total:.2f}" if total else "n/a")
        lines.append(
            f"| {label} | "
            + " / ".join(
                [col(lambda r: r["memory"]["memory_score"])]
                + [col(lambda r, b=b: r["memory"]["buckets"][b]) for b in ("fast", "slow", "beyond")]
            )
            + " | "
            + " / ".join(col(lambda r, c=c: r["memory"]["causes"][c]) for c in ("pan", "lights", "pan+lights"))
            + " | "
            + " / ".join(col(lambda r, b=b: r["errors"][b], 3) for b in ("fast", "slow", "beyond"))
            + " | "
            + " / ".join(made)
            + f" | {col(lambda r: r['headline']['camera_pans'])} / {col(lambda r: r['headline']['camera_holds'])}"
            + f" | {col(lambda r: r['headline']['movers'])} | {col(lambda r: r['headline']['lighting'])} |"
        )
    return "\n".join(lines)


def write_doc(text: str, doc: Path) -> None:
    page = doc.read_text()
    if BEGIN not in page or END not in page:
        raise UserError(f"{doc} has no {BEGIN} ... {END} markers for the oracle table")
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    tmp = doc.with_name(f".{doc.name}.partial")
    tmp.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    tmp.replace(doc)


def occlusion_world_check() -> str:
    """Copy-the-sink and a still picture in the occlusion world's recall protocol, mean over its 16 worlds."""
    from contextforcing.data.world.heldout import eval_worlds
    from contextforcing.data.world.render import render as occlusion_render
    from contextforcing.data.world.track import BUCKETS as OCCLUSION_BUCKETS
    from contextforcing.data.world.track import simulate as occlusion_simulate
    from contextforcing.eval.oracles import SINK_FRAMES
    from contextforcing.eval.protocols import latent_pixel_frames, recall_latents
    from contextforcing.eval.world_metrics import world_metrics

    fills = {
        "copy the sink (first chunk in a loop)": lambda truth, f: truth[f % SINK_FRAMES],
        "still picture (first frame)": lambda truth, f: truth[0],
    }
    lines = [
        "| oracle in the occlusion world, recall protocol | error when back, short / mid / long | "
        "permanence when back, short / mid / long |",
        "|---|---|---|",
    ]
    for label, fill in fills.items():
        errors, perms = {b: [] for b in OCCLUSION_BUCKETS}, {b: [] for b in OCCLUSION_BUCKETS}
        for spec in eval_worlds():
            track = occlusion_simulate(spec)
            truth = occlusion_render(track)
            video = truth.copy()
            for latent in recall_latents(track):
                for f in latent_pixel_frames(latent, track.n_frames):
                    video[f] = fill(truth, f)
            for b, v in world_metrics(video, track)["restoration"]["buckets"].items():
                errors[b].append(v["error_when_back"])
                perms[b].append(v["permanence_when_back"])
        lines.append(
            f"| {label} | "
            + " / ".join(_fmt(errors[b], 3) for b in OCCLUSION_BUCKETS)
            + " | "
            + " / ".join(_fmt(perms[b], 2) for b in OCCLUSION_BUCKETS)
            + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", default="panorama", help=f"{', '.join(CODECS)}, or a codec .safetensors path")
    p.add_argument("--worlds", type=int, default=16, help="held-out worlds (default: the standard 16)")
    p.add_argument("--out", default=str(REPO / "runs" / "oracles"), help="cache of per-world scores")
    p.add_argument("--doc", default=str(DOC), help="markdown file whose oracle table is replaced")
    p.add_argument("--no-doc", action="store_true", help="print the table only")
    p.add_argument("--sheets", default=None, metavar="DIR", help="contact sheets of every oracle on world 0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--occlusion-world", action="store_true", help="the occlusion world's copy-the-sink check only")
    args = p.parse_args(argv)
    if args.occlusion_world:
        print(occlusion_world_check())
        return 0
    try:
        return run(args)
    except UserError as err:
        print(f"benchmark_oracles: error: {err}", file=sys.stderr)
        return 2


def run(args) -> int:
    import torch

    from contextforcing.data.world.panorama.heldout import heldout_worlds
    from contextforcing.io.video import write_json_atomic

    torch.set_num_threads(args.threads)
    if args.worlds < 1:
        raise UserError(f"--worlds must be at least 1, got {args.worlds}")
    doc = Path(args.doc)
    if not args.no_doc and (not doc.is_file() or BEGIN not in doc.read_text()):
        raise UserError(f"{doc} has no {BEGIN} ... {END} markers for the oracle table")
    codec, tag = load_codec(args.codec)
    cache = Path(args.out) / f"{tag.replace(':', '_')}_code_{code_version()}"
    cache.mkdir(parents=True, exist_ok=True)
    cells = []
    start = time.perf_counter()
    for i, spec in enumerate(heldout_worlds(args.worlds)):
        path = cache / f"world_{i:03d}_{spec.seed}.json"
        sheets = Path(args.sheets) if args.sheets and i == 0 else None
        if path.is_file() and sheets is None:
            cells.append(json.loads(path.read_text()))
            continue
        cells.append(world_cell(i, spec, codec, sheets))
        write_json_atomic(path, cells[-1])
        print(f"world {i} (seed {spec.seed}) scored, {time.perf_counter() - start:.0f} s", flush=True)
    psnr = np.mean([c["rows"]["**perfect memory**: ground truth through the codec"]["psnr"] for c in cells])
    seconds = heldout_worlds(1)[0].seconds
    text = (
        f"{table(cells)}\n\nCodec: `{tag}`; {len(cells)} held-out worlds of {seconds:g} s; ground truth through "
        f"the codec: {psnr:.1f} dB PSNR."
    )
    print(text)
    if not args.no_doc:
        write_doc(text, doc)
        print(f"wrote the table into {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
