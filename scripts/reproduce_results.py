"""Regenerate every number, curve and frame strip of docs/results.md: the panorama benchmark's held-out worlds, every
memory policy on the shipped model, the promotion rules, the ablations, and the oracles.

    python scripts/reproduce_results.py                 # = make results: all cells, then tables, figures, document
    python scripts/reproduce_results.py --report-only   # tables, figures and document from the cells on disk

One *cell* is one (row, held-out world): a video generated from the world's script alone (no frames given;
`contextforcing.eval.panorama_runs`, a thin layer over the Python API) and scored with
`eval.panorama_metrics`, written to OUT/cells/SECONDS/ROW/INDEX.json (+ .npz frames at its longest revisit)
atomically, so an interrupted run resumes where it stopped. Worlds are `heldout_worlds` (scripts and seeds
never used in training, docs/world.md); the generation seed is the world seed. Every cell runs on CPU with one
torch thread per worker process.

Needs the shipped model (contextforcing/assets/world_student.*) and the toy-model run's exports
(runs/toy/exports: teacher, dmd) for the teacher and the no-CDMD rows; the contiguous-teacher and
trained-absolute-positions rows train their own Stage 2 students first (configs/toy/cdmd.yaml with one change
each, from the same Stage 1 export: runs/toy/cdmd_contiguous, runs/toy/cdmd_absolute; resumable).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from contextforcing.outputs import write_json_atomic, write_text_atomic  # noqa: E402

EXPORTS = Path(os.environ.get("CF_TOY_EXPORTS", REPO / "runs" / "toy" / "exports"))  # make toy-model's exports
SHIPPED = "shipped"  # the packaged student (EMA of Stage 2, contextforcing/assets/world_student.safetensors)
CONTIGUOUS_WINDOW = 17  # frames the contiguous teacher sees: the student's memory budget (3 + 8 + 6)
TEACHER_SAMPLING = {"euler_steps": 16, "guidance_scale": 3.0}  # the grid and CFG the ODE pairs were drawn with
# Stage 2 students the script trains itself: the shipped recipe (configs/toy/cdmd.yaml from the Stage 1 export,
# same seed and steps) with one ablated choice each, so the row differs from the shipped one in that choice only.
STAGE2_VARIANTS = {
    "cdmd_contiguous": ("stage.teacher_context=contiguous", f"stage.context_window={CONTIGUOUS_WINDOW}"),
    "cdmd_absolute": ("stage.memory.positions=absolute",),
}
PAPER_RULE = {"compare": "previous", "key_layers": "all", "keep": "first", "tau": 0.95}


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    kind: str = "model"  # model | oracle
    weights: str = SHIPPED  # SHIPPED or an export name under runs/toy/exports
    memory: dict | None = None  # over the trained memory (None: as trained); "policy" names another policy
    sampling: dict | None = None
    oracle: str | None = None  # oracle rows: which (see ORACLES)


ROWS = [
    Row("truth_codec", "perfect memory: the ground truth through the codec", kind="oracle", oracle="truth"),
    Row("forgets", "forgets: follows the script, redraws every revisit", kind="oracle", oracle="forgets"),
    Row("sink_view", "remembers the first view only (what a sink holds)", kind="oracle", oracle="sink_view"),
    Row("still", "still picture (first frame)", kind="oracle", oracle="still"),
    Row(
        "full",
        "full: every past frame, absolute positions (CausVid / Self-Forcing as trained)",
        memory={"policy": "full"},
    ),
    Row("rolling", "rolling window, 12 frames = 3 s (Self-Forcing)", memory={"policy": "rolling", "window": 12}),
    Row("sink", "sink 3 + window 9 (LongLive)", memory={"policy": "sink", "sink": 3, "window": 9}),
    Row(
        "relative",
        "sink 3 + window 9, relative positions (Infinity-RoPE)",
        memory={"policy": "relative", "sink": 3, "window": 9},
    ),
    Row("ema_sink", "EMA sink 3 + window 6 (Reward Forcing)", memory={"policy": "ema_sink", "sink": 3, "window": 6}),
    Row(
        "slow_fast",
        "**Context Forcing: slow_fast as trained** (surprisal against the last checked chunk, "
        "first-block keys, last frame kept)",
    ),
    Row(
        "paper_rule",
        "slow_fast, the paper's surprisal rule (against the previous chunk, keys of all layers, first "
        "frame kept, tau 0.95)",
        memory=PAPER_RULE,
    ),
    Row(
        "compare_previous",
        "slow_fast, surprisal against the previous chunk (else as trained)",
        memory={"compare": "previous"},
    ),
    Row("keep_first", "slow_fast, first frame kept (else as trained)", memory={"keep": "first"}),
    Row("uniform", "slow_fast, uniform promotion every 2 chunks", memory={"rule": "uniform", "interval": 2}),
    Row("released", "slow_fast, the released cache exactly (`layout=released`)", memory={"layout": "released"}),
    Row("absolute", "without bounded positions, at inference only", memory={"positions": "absolute"}),
    Row(
        "absolute_trained",
        "without bounded positions, trained so (Stage 2 and inference at absolute positions)",
        weights="cdmd_absolute",
        memory={"positions": "absolute"},
    ),
    Row(
        "contiguous",
        f"Stage 2 teacher on a contiguous {CONTIGUOUS_WINDOW}-frame window (released code)",
        weights="cdmd_contiguous",
    ),
    Row("no_cdmd", "without Contextual DMD (the Stage 1 student, trained memory)", weights="dmd"),
    Row(
        "teacher",
        "context teacher (16 Euler steps, CFG 3, trained memory)",
        weights="teacher",
        sampling=TEACHER_SAMPLING,
    ),
]
ROW_BY_KEY = {r.key: r for r in ROWS}
BASELINE = "slow_fast"
BUCKETS = ("fast", "slow", "beyond")


def die(message: str) -> None:
    """Bad input or a missing prerequisite: one line on stderr, exit code 2 (as the CLI)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# -- one cell -------------------------------------------------------------------------------------------------
class Worker:
    """Per-process state: pipelines (models, codec, text encoder) are loaded once and reused across cells."""

    def __init__(self):
        import torch

        torch.set_num_threads(1)
        self.pipes: dict = {}
        self.codec = None  # the panorama codec, for the oracles (a model's latents are decoded by it)

    def pipe(self, weights: str):
        from contextforcing.eval.panorama_runs import world_pipeline

        if weights not in self.pipes:
            shipped = self.pipes.get(SHIPPED) or world_pipeline()
            self.pipes[SHIPPED] = shipped
            if weights != SHIPPED:  # an export: the shipped model's trained memory is its default too
                self.pipes[weights] = world_pipeline(EXPORTS / f"{weights}.safetensors", memory=shipped.memory)
        return self.pipes[weights]

    def oracle(self, row: Row, spec) -> np.ndarray:
        from contextforcing.data.world.panorama import render, simulate
        from contextforcing.eval import oracles

        track = simulate(spec)
        truth = render(track)
        video = {
            "truth": lambda: truth,
            "forgets": lambda: oracles.forgetting(track, truth, 0.0),
            "sink_view": lambda: oracles.forgetting(track, truth, 0.0, keep_sink=True),
            "still": lambda: oracles.still_picture(track, truth),
        }[row.oracle]()
        if self.codec is None:
            from contextforcing.codecs.world import PANORAMA_PATH, load_world_codec

            self.codec = load_world_codec(PANORAMA_PATH)
        return through_codec(self.codec, video)

    def run(self, row: Row, index: int, spec, path: Path) -> None:
        from contextforcing.data.world.panorama import simulate
        from contextforcing.eval.panorama_metrics import panorama_scores
        from contextforcing.eval.panorama_runs import generate

        began = time.perf_counter()
        track = simulate(spec)
        promoted = None
        if row.kind == "oracle":
            frames, memory = self.oracle(row, spec), None
        else:
            pipe = self.pipe(row.weights)
            video = generate(pipe, spec, memory=row.memory, sampling=row.sampling)
            frames, memory = video.frames, video.record["config"]["memory"]
            promoted = [f for chunk in video.record["memory_trace"] for f in chunk["promoted"]]
        seconds = time.perf_counter() - began
        scores = panorama_scores(frames, track)
        made = [r for r in scores.revisits if r["made"]]
        record = {
            "commit": _commit(),
            "row": row.key,
            "seed": spec.seed,
            "seconds": spec.seconds,
            "world": index,
            "generation_seconds": seconds,
            "memory": memory,
            "headline": scores.headline(),
            "made": {b: [s.made, s.revisits] for b, s in scores.buckets.items()},
            # the slow memory's promotions (layer group 0) and how many were of frames the script keeps dark
            "promoted": promoted,
            "promoted_dark": None if promoted is None else sum(not bool(track.latent_lit[f]) for f in promoted),
            "revisits": [
                {
                    "delay": r["delay_seconds"],
                    "bucket": r["bucket"],
                    "error": r["error"],
                    "permanence": r["permanence"],
                    "in_sink": r["in_sink"],
                }
                for r in made
            ],
        }
        if made:  # frames before / when back of its longest made revisit, for the strips
            longest = max((r for r in scores.revisits if r["made"]), key=lambda r: r["delay_seconds"])
            picks = _revisit_frames(longest)
            np.savez_compressed(path.with_suffix(".tmp.npz"), frames=frames[picks], delay=longest["delay_seconds"])
            os.replace(path.with_suffix(".tmp.npz"), path.with_suffix(".npz"))
        write_json_atomic(path, record)


def _revisit_frames(revisit: dict) -> list[int]:
    from contextforcing.data.world.panorama.geometry import latent_end_frame

    return [int(latent_end_frame(revisit["seen_latent"])), int(latent_end_frame(revisit["back_latent"]))]


def through_codec(codec, frames: np.ndarray) -> np.ndarray:
    """Frames encoded and decoded as a model's latents would be (the oracles' videos)."""
    import torch

    from contextforcing.pipeline import to_uint8_frames

    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        return to_uint8_frames(codec.stream_decoder().decode(codec.encode(video))[0])


_WORKER: Worker | None = None


def _run_cell(task) -> tuple[str, float]:
    global _WORKER
    if _WORKER is None:
        _WORKER = Worker()
    key, index, spec, path = task
    began = time.perf_counter()
    _WORKER.run(ROW_BY_KEY[key], index, spec, Path(path))
    return str(path), time.perf_counter() - began


# -- planning and running -----------------------------------------------------------------------------------
def cell_path(out: Path, seconds: float, key: str, index: int) -> Path:
    return out / "cells" / f"{seconds:g}s" / key / f"{index:03d}.json"


def worlds(args) -> list:
    from contextforcing.data.world.panorama import heldout_worlds
    from contextforcing.eval.panorama_runs import shortened

    return [shortened(w, args.seconds) for w in heldout_worlds(args.worlds)]


def plan(args) -> list[tuple]:
    tasks = []
    for index, spec in enumerate(worlds(args)):  # world-major: every row advances together
        for key in args.rows:
            limit = args.teacher_worlds if key == "teacher" and args.teacher_worlds is not None else args.worlds
            path = cell_path(args.out, args.seconds, key, index)
            if index < limit and not path.is_file():
                tasks.append((key, index, spec, str(path)))
    return tasks


def ensure_weights(keys: list[str]) -> None:
    """Exports the rows need; the Stage 2 variants are trained here if missing (resumable)."""
    from contextforcing.loading import EMBEDDED_WEIGHTS

    if any(ROW_BY_KEY[k].kind == "model" for k in keys) and not EMBEDDED_WEIGHTS.is_file():
        die(f"{EMBEDDED_WEIGHTS} missing; run `make toy-model` first")
    needed = {ROW_BY_KEY[k].weights for k in keys if ROW_BY_KEY[k].kind == "model"} - {SHIPPED}
    for name in sorted(needed & STAGE2_VARIANTS.keys()):
        if not (EXPORTS / f"{name}.safetensors").is_file():
            train_stage2_variant(name)
    missing = [w for w in sorted(needed) if not (EXPORTS / f"{w}.safetensors").is_file()]
    if missing:
        die(f"{', '.join(str(EXPORTS / (w + '.safetensors')) for w in missing)} missing; run `make toy-model` first")


def train_stage2_variant(name: str) -> None:
    for prerequisite in ("dmd", "teacher"):
        if not (EXPORTS / f"{prerequisite}.safetensors").is_file():
            die(f"{EXPORTS / prerequisite}.safetensors missing; run `make toy-model` first")
    run_dir = EXPORTS.parent / name
    cli = [sys.executable, "-m", "contextforcing.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        cli
        + [
            "train",
            "cdmd",
            "--config",
            str(REPO / "configs/toy/cdmd.yaml"),
            f"trainer.run_dir={run_dir}",
            f"stage.init={EXPORTS / 'dmd.safetensors'}",
            f"stage.real_init={EXPORTS / 'teacher.safetensors'}",
            *STAGE2_VARIANTS[name],
        ],
        check=True,
        env=env,
    )
    subprocess.run(cli + ["export", str(run_dir), str(EXPORTS / f"{name}.safetensors")], check=True, env=env)


def run_cells(tasks: list[tuple], workers: int) -> None:
    from tqdm import tqdm

    for _, _, _, path in tasks:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(tasks), unit="cell", desc="cells") as bar:
        if workers <= 1:
            for task in tasks:
                _run_cell(task)
                bar.update()
            return
        with mp.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_run_cell, tasks):
                bar.update()


# -- statistics -----------------------------------------------------------------------------------------------
def load_cells(out: Path, seconds: float, key: str, limit: int | None = None) -> list[dict]:
    folder = out / "cells" / f"{seconds:g}s" / key
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [json.loads(p.read_text()) for p in paths if limit is None or int(p.stem) < limit]


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def beyond_fast(cell: dict, what: str = "error") -> float | None:
    """A world's mean over its made revisits of the slow and beyond buckets: what only memory beyond the fast
    frames can serve."""
    return mean([r[what] for r in cell["revisits"] if r["bucket"] != "fast"])


BOOTSTRAP_RESAMPLES = 2000


def paired_difference(row: dict, base: dict) -> str:
    """Median over the shared worlds of (row - baseline), its 95% bootstrap interval (worlds resampled,
    fixed seed), and in how many worlds the row's value is lower / higher than the baseline's."""
    shared = sorted(row.keys() & base.keys())
    if not shared:
        return "n/a"
    d = np.array([row[w] - base[w] for w in shared])
    rng = np.random.default_rng(0)
    boot = np.median(d[rng.integers(0, len(d), (BOOTSTRAP_RESAMPLES, len(d)))], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    lower, higher = int((d < 0).sum()), int((d > 0).sum())
    return (
        f"{np.median(d):+.3f} [{lo:+.3f}, {hi:+.3f}]; lower in {lower}/{len(d)}, higher in {higher} "
        f"(p = {sign_test(lower, higher):.2g})"
    )


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test over the untied worlds: P(a split at least this uneven | no difference)."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


# -- report ---------------------------------------------------------------------------------------------------
def _fmt(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def headline_table(args) -> str:
    cols = [
        "n",
        "camera obeyed, pans / holds",
        "revisit error, fast / slow / beyond",
        "object permanence, fast / slow / beyond",
        "revisits made, fast / slow / beyond",
        "revisit error beyond the fast memory",
        "movers obeyed",
        "lighting obeyed",
        "s per video",
    ]
    lines = ["| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key in args.rows:
        cells = load_cells(args.out, args.seconds, key, args.worlds)
        label = ROW_BY_KEY[key].label
        if not cells:
            lines.append(f"| {label} | 0 | " + " | ".join("not measured" for _ in cols[1:]) + " |")
            continue

        def col(name, digits=2):
            return _fmt(mean([c["headline"][name] for c in cells]), digits)

        made = " / ".join(
            _fmt(sum(c["made"][b][0] for c in cells) / max(1, sum(c["made"][b][1] for c in cells)), 2) for b in BUCKETS
        )
        seconds = np.median([c["generation_seconds"] for c in cells])
        lines.append(
            " | ".join(
                [
                    f"| {label}",
                    str(len(cells)),
                    f"{col('camera_pans')} / {col('camera_holds')}",
                    " / ".join(col(f"revisit_error_{b}", 3) for b in BUCKETS),
                    " / ".join(col(f"permanence_{b}") for b in BUCKETS),
                    made,
                    _fmt(mean([beyond_fast(c) for c in cells])),
                    col("movers"),
                    col("lighting"),
                    f"{seconds:.1f} |",
                ]
            )
        )
    return "\n".join(lines)


def promotion_table(args) -> str:
    """For the rows whose memory promotes: how often, and how many promoted frames the script keeps dark."""
    lines = ["| row | promotions per video (90 s) | share of promoted frames dark in the script |", "|---|---|---|"]
    for key in args.rows:
        cells = [c for c in load_cells(args.out, args.seconds, key, args.worlds) if c.get("promoted")]
        if not cells:
            continue
        count = sum(len(c["promoted"]) for c in cells)
        dark = sum(c["promoted_dark"] for c in cells)
        lines.append(f"| {ROW_BY_KEY[key].label} | {count / len(cells):.1f} | {dark / count:.2f} |")
    return "\n".join(lines)


PAIRED = (
    ("revisit error beyond the fast memory", lambda c: beyond_fast(c)),
    ("permanence beyond the fast memory", lambda c: beyond_fast(c, "permanence")),
    ("movers obeyed", lambda c: c["headline"]["movers"]),
    ("camera obeyed (pans)", lambda c: c["headline"]["camera_pans"]),
)


def per_world(cells: list[dict], get) -> dict:
    return {c["seed"]: v for c in cells if (v := get(c)) is not None}


def paired_table(args) -> str:
    lines = ["| row | " + " | ".join(name for name, _ in PAIRED) + " |", "|---" * (len(PAIRED) + 1) + "|"]
    base = load_cells(args.out, args.seconds, BASELINE, args.worlds)
    for key in args.rows:
        if key == BASELINE:
            continue
        cells = load_cells(args.out, args.seconds, key, args.worlds)
        cols = [paired_difference(per_world(cells, get), per_world(base, get)) for _, get in PAIRED]
        lines.append(f"| {ROW_BY_KEY[key].label} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def figures(args) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = args.doc.parent / "results"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    shown = [
        k
        for k in (
            "truth_codec",
            "forgets",
            "teacher",
            "rolling",
            "sink",
            "ema_sink",
            "no_cdmd",
            "paper_rule",
            "slow_fast",
        )
        if k in args.rows
    ]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    edges = np.array([0.75, 1.5, 3, 6, 12, 20, 35, 80])
    for key in shown:
        rows = [
            r
            for c in load_cells(args.out, args.seconds, key, args.worlds)
            for r in c["revisits"]
            if r["error"] is not None
        ]
        if not rows:
            continue
        delays, errors = np.array([r["delay"] for r in rows]), np.array([r["error"] for r in rows])
        mids, means = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            pick = (delays > lo) & (delays <= hi)
            if pick.any():
                mids.append(np.sqrt(lo * hi))
                means.append(errors[pick].mean())
        ax.plot(
            mids,
            means,
            marker="o",
            label=key,
            lw=2.5 if key == BASELINE else 1.2,
            ls="--" if ROW_BY_KEY[key].kind == "oracle" else "-",
        )
    for x in (1.5, 20):
        ax.axvline(x, color="grey", ls=":", lw=0.8)
    ax.set(
        xscale="log",
        xlabel="revisit delay (s)",
        ylabel="revisit error (mean over made revisits)",
        title=f"revisit error against delay, {args.worlds} held-out worlds of {args.seconds:g} s",
        ylim=(0, 1),
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, fig_dir / "revisit_by_delay.png"))
    written.append(strip(args, fig_dir, plt))
    return [w for w in written if w]


def strip(args, fig_dir: Path, plt) -> str | None:
    """Before / when back at world 0's longest made revisit, per row."""
    rows = []
    for key in args.rows:
        npz = cell_path(args.out, args.seconds, key, 0).with_suffix(".npz")
        if npz.is_file():
            data = np.load(npz)
            rows.append((key, data["frames"], float(data["delay"])))
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 2, figsize=(3.2, 1.5 * len(rows)), squeeze=False)
    for (key, frames, delay), ax_row in zip(rows, axes):
        for j, (ax, title) in enumerate(zip(ax_row, ("last seen", "back"))):
            ax.imshow(frames[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if key == rows[0][0]:
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{key}\n{delay:.0f} s", fontsize=7)
    fig.suptitle("world 0: each row's longest revisit it made", fontsize=8)
    fig.tight_layout()
    return _save(fig, fig_dir / "strip_longest_revisit.png")


def _save(fig, path: Path) -> str:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _commit() -> str:
    return (
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        or "unknown"
    )


def environment(args) -> str:
    import torch

    commits = sorted(
        {json.loads(p.read_text()).get("commit", "unrecorded") for p in (args.out / "cells").rglob("*.json")}
    )
    return (
        f"Cells generated by `python scripts/reproduce_results.py` at commit(s) {', '.join(f'`{c}`' for c in commits)}; "
        f"report written at `{_commit()}`: torch {torch.__version__}, {platform.machine()} CPU, {args.workers} "
        f"worker process(es) x 1 torch thread, {time.strftime('%Y-%m-%d')}."
    )


BLOCKS = ("headline", "promotion", "paired", "environment")  # what write_doc fills


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)


def check_doc(doc: Path) -> None:
    """Before any generation: the document exists and has every block the report fills."""
    if not doc.is_file():
        die(f"{doc} not found (the document the tables are written into)")
    text = doc.read_text()
    missing = [name for name in BLOCKS if not _block(name).search(text)]
    if missing:
        die(f"{doc} has no '<!-- BEGIN {missing[0]} -->' ... '<!-- END {missing[0]} -->' block")


def write_doc(doc: Path, blocks: dict[str, str]) -> None:
    """Replace each `<!-- BEGIN name -->...<!-- END name -->` block of `doc`; the prose around them is kept."""
    text = doc.read_text()
    for name, body in blocks.items():
        text = _block(name).sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    write_text_atomic(doc, text)


# -- main -----------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "results")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "results.md")
    p.add_argument("--worlds", type=int, default=16, help="held-out worlds (the first N: 16 is the standard set)")
    p.add_argument("--seconds", type=float, default=90.0, help="each world cut to this length (90: whole)")
    p.add_argument("--teacher-worlds", type=int, default=None, help="worlds the (slow) teacher row runs on")
    p.add_argument("--rows", default=",".join(r.key for r in ROWS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="no generation: tables, figures, document")
    args = p.parse_args(argv)
    args.rows = [x for x in args.rows.split(",") if x]
    unknown = [k for k in args.rows if k not in ROW_BY_KEY]
    if unknown:
        die(f"unknown row: {', '.join(unknown)} (rows: {', '.join(ROW_BY_KEY)})")
    if args.worlds < 1 or not 0 < args.seconds <= 90:
        die(f"--worlds must be >= 1 and --seconds in (0, 90], got {args.worlds} and {args.seconds:g}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    check_doc(args.doc)
    if not args.report_only:
        ensure_weights(args.rows)
        tasks = plan(args)
        print(f"{len(tasks)} cells to generate ({args.workers} workers)", flush=True)
        run_cells(tasks, args.workers)
    blocks = {
        "headline": headline_table(args),
        "promotion": promotion_table(args),
        "paired": paired_table(args),
        "environment": environment(args),
    }
    figs = figures(args)
    write_doc(args.doc, blocks)
    print(f"wrote {args.doc} and {', '.join(figs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
