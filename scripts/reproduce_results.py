"""Regenerate every number, curve and frame strip of docs/results.md: the panorama benchmark's held-out worlds, every
memory policy on the shipped model, the promotion rules, the ablations, the oracles and the cheaters.

    python scripts/reproduce_results.py                 # = make results: all cells, then tables, figures, document
    python scripts/reproduce_results.py --report-only   # tables, figures and document from the cells on disk

One *cell* is one (row, held-out world): a video generated from the world's script alone (no frames given;
`contextforcing.eval.panorama_runs`, a thin layer over the Python API) and scored with
`eval.panorama_metrics` (memory_score against the truth through the codec, docs/evaluation.md), written to
OUT/cells/SECONDS/ROW/INDEX.json (+ .npz frames at the world's longest revisit) atomically, so an interrupted
run resumes where it stopped. Worlds are `heldout_worlds` (scripts and seeds never used in training,
docs/world.md); the generation seed is the world seed. Every cell runs on CPU with one torch thread per worker.

Rows are in results_rows.py, tables and figures in results_tables.py. Needs the shipped model
(contextforcing/assets/world_student.*) and the toy-model run's exports (runs/toy/exports: teacher, dmd); the
contiguous-teacher and trained-absolute-positions rows train their own Stage 2 students first (configs/toy/cdmd.yaml
with one change each, from the same Stage 1 export), and the screen-anchored row trains the whole recipe with the
`world-screen` preset (runs/toy_screen); all resumable.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_rows import (  # noqa: E402
    EXPORTS,
    PREVIOUS,
    PREVIOUS_COMMIT,
    PREVIOUS_WEIGHTS,
    ROW_BY_KEY,
    ROWS,
    RUNS,
    SCREEN,
    SCREEN_EXPORTS,
    SHIPPED,
    STAGE2_VARIANTS,
    Row,
    oracle_videos,
)
from results_tables import (  # noqa: E402
    cell_path,
    field_table,
    figures,
    headline_table,
    paired_table,
    promotion_table,
    targets_block,
)

from contextforcing.io.outputs import write_atomic, write_json_atomic, write_text_atomic  # noqa: E402


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

    def pipe(self, row: Row):
        from contextforcing.eval.panorama_runs import world_pipeline

        if row.weights not in self.pipes:
            shipped = self.pipes.get(SHIPPED) or world_pipeline()
            self.pipes[SHIPPED] = shipped
            if row.weights != SHIPPED:  # an export: the shipped model's trained memory is its default too
                self.pipes[row.weights] = world_pipeline(row.weights_path(), memory=shipped.memory, preset=row.preset)
        return self.pipes[row.weights]

    def oracle(self, row: Row, track) -> np.ndarray:
        from contextforcing.data.world.panorama import render

        if self.codec is None:
            from contextforcing.codecs.world import PANORAMA_PATH, load_world_codec

            self.codec = load_world_codec(PANORAMA_PATH)
        return self.codec.round_trip(oracle_videos()[row.oracle](track, render(track)))

    def run(self, row: Row, index: int, spec, path: Path) -> None:
        from contextforcing.data.world.panorama import simulate
        from contextforcing.eval.panorama_metrics import panorama_scores
        from contextforcing.eval.panorama_runs import generate

        began = time.perf_counter()
        track = simulate(spec)
        promoted = None
        if row.kind == "oracle":
            frames, memory = self.oracle(row, track), None
        else:
            video = generate(self.pipe(row), spec, memory=row.memory, sampling=row.sampling)
            frames, memory = video.frames, video.record["config"]["memory"]
            promoted = [f for chunk in video.record["memory_trace"] for f in chunk["promoted"]]
        seconds = time.perf_counter() - began
        scores = panorama_scores(frames, track)
        write_cell(path, frames, cell_record(row, index, spec, track, scores, seconds, memory, promoted))


def cell_record(row: Row, index: int, spec, track, scores, seconds: float, memory, promoted) -> dict:
    """What a cell keeps of its video: the headline, every revisit of the script with its memory and the truth's,
    the views, and the slow memory's promotions (layer group 0) with how many the script keeps dark."""
    views = scores.views
    return {
        "commit": _commit(),
        "row": row.key,
        "seed": spec.seed,
        "seconds": spec.seconds,
        "world": index,
        "generation_seconds": seconds,
        "memory": memory,
        "headline": scores.headline(),
        "memory_score": scores.memory.to_json(),
        "views": {
            k: getattr(views, k)
            for k in ("objects_per_view", "truth_objects_per_view", "palette_drift", "objects_drift")
        },
        "promoted": promoted,
        "promoted_dark": None if promoted is None else sum(not bool(track.latent_lit[f]) for f in promoted),
        "revisits": [
            {
                "delay": r["delay_seconds"],
                "bucket": r["bucket"],
                "cause": r["cause"],
                "made": r["made"],
                "memory": r["memory"],
                "truth": r["truth_memory"],
                "seen_latent": r["seen_latent"],
                "back_latent": r["back_latent"],
                **{k: r[k] for k in ("error", "permanence", "psnr", "ssim")},
            }
            for r in scores.revisits
        ],
    }


def write_cell(path: Path, frames: np.ndarray, record: dict) -> None:
    """The record, and the frames of the world's longest revisit (last seen, back) for the strips."""
    if record["revisits"]:
        from contextforcing.data.world.panorama.geometry import latent_end_frame

        longest = max(record["revisits"], key=lambda r: r["delay"])
        picks = [int(latent_end_frame(longest["seen_latent"])), int(latent_end_frame(longest["back_latent"]))]
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
        np.savez_compressed(tmp, frames=frames[picks], delay=longest["delay"])
        os.replace(tmp, path.with_suffix(".npz"))
    write_json_atomic(path, record)


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
    from contextforcing.parts import EMBEDDED_WEIGHTS

    if any(ROW_BY_KEY[k].kind == "model" for k in keys) and not EMBEDDED_WEIGHTS.is_file():
        die(f"{EMBEDDED_WEIGHTS} missing; run `make toy-model` first")
    rows = [ROW_BY_KEY[k] for k in keys if ROW_BY_KEY[k].kind == "model" and ROW_BY_KEY[k].weights != SHIPPED]
    for name in sorted({r.weights for r in rows} & STAGE2_VARIANTS.keys()):
        if not (EXPORTS / f"{name}.safetensors").is_file():
            train_stage2_variant(name)
    if any(r.weights == SCREEN for r in rows) and not (SCREEN_EXPORTS / "cdmd.safetensors").is_file():
        train_screen_recipe()
    if any(r.weights == PREVIOUS for r in rows) and not PREVIOUS_WEIGHTS.is_file():
        extract_previous_model()
    missing = sorted({str(r.weights_path()) for r in rows if not r.weights_path().is_file()})
    if missing:
        die(f"{', '.join(missing)} missing; run `make toy-model` first")


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


def extract_previous_model() -> None:
    """The previously shipped weights, as committed at PREVIOUS_COMMIT (needs a git checkout with that history)."""
    path = "contextforcing/assets/world_student.safetensors"
    out = subprocess.run(["git", "show", f"{PREVIOUS_COMMIT}:{path}"], cwd=REPO, capture_output=True)
    if out.returncode != 0:
        die(
            f"the previous model ({PREVIOUS_COMMIT[:7]}:{path}) is not in this checkout's history: {out.stderr[-200:]!r}"
        )
    PREVIOUS_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(PREVIOUS_WEIGHTS, lambda tmp: tmp.write_bytes(out.stdout))


def train_screen_recipe() -> None:
    """The whole toy recipe with screen-column width positions (the `world-screen` preset), no gates, not shipped:
    the row that measures what anchoring positions to the room does."""
    stages = ("teacher", "ode", "dmd", "cdmd")
    overrides = [f"--set={stage}:stage.model=world-screen" for stage in stages]
    command = [sys.executable, str(REPO / "scripts" / "train_toy_model.py"), "--root", str(RUNS / "toy_screen")]
    subprocess.run(
        command + overrides + ["--no-gates", "--no-ship"], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


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


# -- the document ---------------------------------------------------------------------------------------------
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


BLOCKS = ("headline", "targets", "field", "promotion", "paired", "environment")  # what write_doc fills


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
        "targets": targets_block(args),
        "field": field_table(args),
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
