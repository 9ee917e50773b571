"""Regenerate every number, curve and frame strip of docs/results.md (the ablation table).

    python scripts/reproduce_results.py                 # all cells, then tables, figures and the document
    python scripts/reproduce_results.py --report-only   # tables, figures and document from the cells on disk

One *cell* is one (protocol, row, held-out world): a generated video scored with the world metrics and
the generic consistency metrics, written to OUT/cells/PROTOCOL/SECONDS/ROW/INDEX.json (+ .npz frame strips)
atomically, so an interrupted run resumes where it stopped. Rows are the memory policies and ablations
below; worlds are `heldout_pairs` (seed-major held-out prompts x seeds, docs/world.md); protocols are
`contextforcing.eval.protocols` (the world's occlusions are given to the generator). Generation seed =
world seed. Every cell runs on CPU with one torch thread per worker process.

Needs the toy-model run (`make toy-model`: runs/toy/exports/{teacher,dmd}.safetensors) for the teacher and
the no-CDMD rows; the contiguous-teacher and trained-absolute-positions rows train their own Stage 2
students first (runs/toy/cdmd_contiguous, runs/toy/cdmd_absolute: about 4-8 min each, resumable).
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
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from contextforcing.data.video import write_json_atomic  # noqa: E402

EXPORTS = Path(os.environ.get("CF_TOY_EXPORTS", REPO / "runs" / "toy" / "exports"))  # make toy-model's exports
SHIPPED = "shipped"  # the packaged student (EMA of Stage 2, contextforcing/assets/world_student.safetensors)
SLOW_FAST = {"sink": 3, "slow": 6, "fast": 6, "rule": "surprisal", "tau": 0.95, "interval": 2}
TEACHER_EULER_STEPS = 16  # the grid the ODE pairs were drawn on (configs/toy/ode.yaml)
CONTIGUOUS_WINDOW = 15  # frames the contiguous teacher sees: the student's memory budget (3 + 6 + 6)
# Stage 2 students the script trains itself: the shipped recipe (configs/toy/cdmd.yaml from the Stage 1
# export, same seed and steps) with one ablated choice each, so the row differs from `full` in that choice only.
STAGE2_VARIANTS = {
    "cdmd_contiguous": ("stage.teacher_context=contiguous", f"stage.context_window={CONTIGUOUS_WINDOW}"),
    "cdmd_absolute": ("stage.memory.positions=absolute",),
}


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    source: str = "model"  # model | render (the ground truth) | codec (the ground truth through the codec)
    weights: str = SHIPPED  # SHIPPED or an export name under runs/toy/exports
    policy: str = "slow_fast"
    options: dict = field(default_factory=lambda: dict(SLOW_FAST))
    euler_steps: int | None = None  # multi-step sampling (the teacher); None: the 4-step student sampler


ROWS = [
    Row("ground_truth", "ground truth (rendered)", source="render"),
    Row("codec", "ground truth through the world codec (ceiling)", source="codec"),
    Row("teacher", f"context teacher ({TEACHER_EULER_STEPS} Euler steps, slow_fast memory)", weights="teacher",
        euler_steps=TEACHER_EULER_STEPS),
    Row("rolling", "rolling window, 12 frames = 3 s (Self-Forcing)", policy="rolling", options={}),
    Row("sink", "sink 3 + window 9 (LongLive)", policy="sink", options={}),
    Row("relative", "sink 3 + window 9, relative positions (Infinity-RoPE)", policy="relative", options={}),
    Row("ema_sink", "EMA sink 3 + window 6 (Reward Forcing)", policy="ema_sink", options={}),
    Row("uniform1", "slow_fast, uniform promotion every chunk", options={**SLOW_FAST, "rule": "uniform", "interval": 1}),
    Row("uniform2", "slow_fast, uniform promotion every 2 chunks", options={**SLOW_FAST, "rule": "uniform", "interval": 2}),
    Row("full", "**Context Forcing: slow_fast, surprisal promotion (full method)**"),
    Row("no_cdmd", "without Contextual DMD (Stage 1 student, slow_fast at inference)", weights="dmd"),
    Row("absolute", "without bounded positions (slow_fast, absolute positions)",
        options={**SLOW_FAST, "positions": "absolute"}),
    Row("any_pass", "promotion per layer on any pass (released code)",
        options={**SLOW_FAST, "promote_on": "any_pass", "promote_scope": "per_layer"}),
    Row("contiguous", f"Stage 2 teacher on a contiguous {CONTIGUOUS_WINDOW}-frame window (released code)",
        weights="cdmd_contiguous"),
    Row("absolute_trained", "without bounded positions, trained so (Stage 2 and inference at absolute positions)",
        weights="cdmd_absolute", options={**SLOW_FAST, "positions": "absolute"}),
]
ROW_BY_KEY = {r.key: r for r in ROWS}
# the main rows and both bounded-position ablations, at 120 s
LONG_ROWS = ("codec", "rolling", "sink", "full", "absolute", "absolute_trained")
PROTOCOLS = ("occlusion", "recall")


def die(message: str) -> None:
    """Bad input or a missing prerequisite: one line on stderr, exit code 2 (as the CLI)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# -- one cell -------------------------------------------------------------------------------------------------
class Worker:
    """Per-process state: models, codec and text encoder are loaded once and reused across cells."""

    def __init__(self):
        import torch

        from contextforcing.codecs.text import HashTextEncoder
        from contextforcing.codecs.world import load_world_codec
        from contextforcing.loading import embedded_config
        from contextforcing.pipeline import Pipeline

        torch.set_num_threads(1)
        self.pipeline = Pipeline.from_pretrained()
        self.codec = load_world_codec()
        cfg = self.pipeline.preset.model
        self.encoder = HashTextEncoder(cfg.text_dim, cfg.text_len)
        self.models = {SHIPPED: self.pipeline.model}
        assert embedded_config()["memory"]["options"] == SLOW_FAST, "the shipped model's memory changed"

    def model(self, weights: str):
        from contextforcing.model.checkpoints import load_model

        if weights not in self.models:
            self.models[weights] = load_model(EXPORTS / f"{weights}.safetensors", self.pipeline.preset.model)
        return self.models[weights]

    def world_latents(self, track, cache: Path):
        """The world's ground truth through the codec, computed once per world and shared by its cells."""
        import torch

        from contextforcing.eval.protocols import world_latents

        if cache.is_file():
            return torch.load(cache)
        latents = world_latents(self.codec, track)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save(latents, tmp)
        os.replace(tmp, cache)
        return latents

    def frames(self, row: Row, protocol: str, track, seed: int, latents) -> np.ndarray:
        from contextforcing.codecs.preview import to_uint8_frames
        from contextforcing.config import SamplingConfig
        from contextforcing.data.world.render import render
        from contextforcing.eval.protocols import generate_world
        from contextforcing.memory.policies import make_spec
        from contextforcing.sampling.stream import VideoStream

        if row.source == "render":
            return render(track)
        if row.source == "codec":
            return to_uint8_frames(self.codec.stream_decoder().decode(latents)[0])
        video = self.pipeline.preset.video
        stream = VideoStream(self.model(row.weights), self.encoder.encode([track.prompt.canonical]),
                             make_spec(row.policy, row.options), video, SamplingConfig(),
                             euler_num_steps=row.euler_steps, max_frames=video.latent_frames_for(track.spec.seconds))
        return generate_world(stream, self.codec, track, protocol, seed, latents)

    def run(self, protocol: str, row: Row, world, path: Path, latents_cache: Path) -> None:
        from contextforcing.data.world.style import FPS
        from contextforcing.data.world.track import simulate
        from contextforcing.eval.evaluate import evaluate_video
        from contextforcing.eval.features import pixel_extractor

        track = simulate(world)
        latents = self.world_latents(track, latents_cache) if row.source != "render" else None
        began = time.perf_counter()
        frames = self.frames(row, protocol, track, world.seed, latents)
        seconds = time.perf_counter() - began
        metrics = evaluate_video(row.key, "", frames, FPS, [pixel_extractor()], track).metrics
        record = {"commit": _commit(), "protocol": protocol, "row": row.key, "prompt": world.prompt, "seed": world.seed,
                  "seconds": world.seconds, "occlusion_seconds": list(world.occlusion_seconds),
                  "generation_seconds": seconds, "metrics": _compact(metrics)}
        strips = {f"occlusion{i}": frames[[o["before_frame"], o["after_frame"], min(len(frames) - 1, o["after_frame"] + FPS)]]
                  for i, o in enumerate(metrics["world"]["restoration"]["occlusions"])}
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **strips)
        os.replace(tmp, path.with_suffix(".npz"))
        write_json_atomic(path, record)


def _compact(m: dict) -> dict:
    w, pix = m["world"], m["features"]["pixel"]
    return {
        "restoration": w["restoration"], "permanence": w["permanence"],
        "palette": w["fidelity"]["palette"], "shape_validity": w["fidelity"]["shape_validity"],
        "fidelity_curve_t": w["fidelity"]["curve_t"], "fidelity_curve": w["fidelity"]["curve"],
        "drift": w["drift"]["mean"], "drift_increase": w["drift"]["increase"],
        "drift_curve_t": w["drift"]["curve_t"], "drift_curve": w["drift"]["curve"],
        "moving_fraction": w["dynamics"]["moving_fraction"], "speed_ratio": w["dynamics"]["speed_ratio"],
        "subject_consistency_pixel": pix["vbench_consistency"], "clip_to_clip_pixel": pix["clip_to_clip"],
        "first_frame_similarity_pixel": pix["first_frame_similarity"],
        "temporal_flickering": m["temporal_flickering"],
    }


_WORKER: Worker | None = None


def _run_cell(task) -> tuple[str, float]:
    global _WORKER
    if _WORKER is None:
        _WORKER = Worker()
    protocol, key, world, path, latents_cache = task
    began = time.perf_counter()
    _WORKER.run(protocol, ROW_BY_KEY[key], world, Path(path), Path(latents_cache))
    return str(path), time.perf_counter() - began


# -- planning and running -----------------------------------------------------------------------------------
def cell_path(out: Path, protocol: str, seconds: float, key: str, index: int) -> Path:
    return out / "cells" / protocol / f"{seconds:g}s" / key / f"{index:03d}.json"


def plan(args) -> list[tuple]:
    from contextforcing.data.world.heldout import heldout_pairs

    tasks = []
    for seconds, count, keys in ((args.seconds, args.pairs, args.rows), (args.long_seconds, args.long_pairs, args.long_rows)):
        if not count:
            continue
        for index, world in enumerate(heldout_pairs(count, seconds)):
            latents = args.out / "world_latents" / f"{seconds:g}s" / f"{index:03d}.pt"
            for protocol in args.protocols:
                for key in keys:
                    path = cell_path(args.out, protocol, seconds, key, index)
                    if key == "teacher" and args.teacher_pairs is not None and index >= args.teacher_pairs:
                        continue  # the teacher samples 4x longer than the student: a smaller set when time is short
                    if not path.is_file():
                        tasks.append((protocol, key, world, str(path), str(latents)))
    return tasks


def ensure_weights(keys: list[str]) -> None:
    """Exports the rows need; the Stage 2 variants are trained here if missing (resumable)."""
    needed = {ROW_BY_KEY[k].weights for k in keys if ROW_BY_KEY[k].source == "model"} - {SHIPPED}
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
    run_dir = REPO / "runs" / "toy" / name
    cli = [sys.executable, "-m", "contextforcing.cli"]
    subprocess.run(cli + ["train", "cdmd", "--config", str(REPO / "configs/toy/cdmd.yaml"), f"trainer.run_dir={run_dir}",
                          f"stage.init={EXPORTS / 'dmd.safetensors'}", f"stage.real_init={EXPORTS / 'teacher.safetensors'}",
                          *STAGE2_VARIANTS[name]], check=True)
    subprocess.run(cli + ["export", str(run_dir), str(EXPORTS / f"{name}.safetensors")], check=True)


def run_cells(tasks: list[tuple], workers: int) -> None:
    from tqdm import tqdm

    for _, _, _, path, _ in tasks:
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


# -- report ---------------------------------------------------------------------------------------------------
LIMITS: dict[float, int] = {}  # seconds -> how many worlds (the first N) the report uses; set by main


def load_cells(out: Path, protocol: str, seconds: float, key: str) -> list[dict]:
    """The cells on disk among the first LIMITS[seconds] worlds (so a partial run reports the same worlds
    for every row when given the count every row has reached)."""
    folder = out / "cells" / protocol / f"{seconds:g}s" / key
    limit = LIMITS.get(seconds)
    paths = [p for p in sorted(folder.glob("*.json")) if limit is None or int(p.stem) < limit] if folder.is_dir() else []
    return [json.loads(p.read_text()) for p in paths]


def bucket_values(cells: list[dict], bucket: str, what: str = "restoration_error") -> list[float]:
    """Per world: the mean of `what` over its occlusions in `bucket`."""
    values = []
    for c in cells:
        v = c["metrics"]["restoration"]["buckets"][bucket][what]
        if v is not None:
            values.append(v)
    return values


def summary(values: list[float], digits: int = 3) -> str:
    """Median [25th-75th percentile] over worlds, or 'n/a' if nothing was measured."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return f"{med:.{digits}f} [{q1:.{digits}f}-{q3:.{digits}f}]"


def metric(cells: list[dict], name: str) -> list[float]:
    return [c["metrics"][name] for c in cells]


def table(out: Path, protocol: str, seconds: float, keys, columns) -> str:
    head = "| row | n | " + " | ".join(c[0] for c in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for key in keys:
        cells = load_cells(out, protocol, seconds, key)
        if not cells:
            lines.append(f"| {ROW_BY_KEY[key].label} | 0 | " + " | ".join("not measured" for _ in columns) + " |")
            continue
        lines.append(f"| {ROW_BY_KEY[key].label} | {len(cells)} | " + " | ".join(c[1](cells) for c in columns) + " |")
    return "\n".join(lines)


def when_back(cells: list[dict], bucket: str, what: str) -> list[float]:
    """Per world: the mean of `what` over its occlusions in `bucket` after which the view came back
    (worlds where it never came back in that bucket give no value). `returned` gives the fraction."""
    values = []
    for c in cells:
        rows = [o for o in c["metrics"]["restoration"]["occlusions"] if o["bucket"] == bucket]
        if what == "returned":
            values += [float(np.mean([o["returned"] for o in rows]))] if rows else []
            continue
        back = [o[what] for o in rows if o["returned"] and o[what] is not None]
        values += [float(np.mean(back))] if back else []
    return values


BUCKETS = ("short", "mid", "long")
RETURN_COLUMNS = [(f"error when back, {b}", lambda cells, b=b: summary(when_back(cells, b, "return_error")))
                  for b in BUCKETS]
RETURN_PERMANENCE_COLUMNS = [(f"permanence when back, {b}", lambda cells, b=b: summary(when_back(cells, b, "return_permanence"), 2))
                             for b in BUCKETS]
RETURNED_COLUMNS = [(f"came back, {b}", lambda cells, b=b: summary(when_back(cells, b, "returned"), 2)) for b in BUCKETS]
FIXED_COLUMNS = [(f"error at the annotated end, {b}", lambda cells, b=b: summary(bucket_values(cells, b)))
                 for b in BUCKETS]
PENALISED_COLUMNS = [(f"error at return, no return = 1, {b}", lambda cells, b=b: summary(bucket_values(cells, b, "return_error")))
                     for b in BUCKETS]
QUALITY_COLUMNS = [
    ("palette fidelity", lambda c: summary(metric(c, "palette"))),
    ("shape validity", lambda c: summary(metric(c, "shape_validity"), 2)),
    ("drift", lambda c: summary(metric(c, "drift"))),
    ("sprite moving", lambda c: summary(metric(c, "moving_fraction"), 2)),
    ("subject consistency (pixel)", lambda c: summary(metric(c, "subject_consistency_pixel"))),
    ("clip-to-clip (pixel)", lambda c: summary(metric(c, "clip_to_clip_pixel"))),
    ("s per video", lambda c: f"{np.median([x['generation_seconds'] for x in c]):.1f}"),
]


BOOTSTRAP_RESAMPLES = 2000
BASELINE = "full"


def per_world(cells: list[dict], bucket: str) -> dict[tuple, float]:
    """World (prompt, seed) -> its mean error at return in `bucket`, a missing return scored as 1: defined
    for every world that has the bucket, so two rows can be compared world by world."""
    values = {}
    for c in cells:
        v = c["metrics"]["restoration"]["buckets"][bucket]["return_error"]
        if v is not None:
            values[(c["prompt"], c["seed"])] = v
    return values


def paired_difference(row: dict[tuple, float], base: dict[tuple, float]) -> str:
    """Median over the shared worlds of (row - baseline), its 95% bootstrap interval (worlds resampled,
    fixed seed), and in how many worlds the row's error is lower / higher than the baseline's."""
    shared = sorted(row.keys() & base.keys())
    if not shared:
        return "n/a"
    d = np.array([row[w] - base[w] for w in shared])
    rng = np.random.default_rng(0)
    boot = np.median(d[rng.integers(0, len(d), (BOOTSTRAP_RESAMPLES, len(d)))], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    lower, higher = int((d < 0).sum()), int((d > 0).sum())
    return (f"{np.median(d):+.3f} [{lo:+.3f}, {hi:+.3f}]; lower in {lower}/{len(d)}, higher in {higher} "
            f"(p = {sign_test(lower, higher):.2g})")


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test over the untied worlds: P(a split at least this uneven | no difference)."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_table(out: Path, protocols, seconds: float, keys) -> str:
    """Every row against the full method, world by world (mid and long occlusions)."""
    buckets = ("mid", "long")
    head = "| row | " + " | ".join(f"{p}, {b}" for p in protocols for b in buckets) + " |"
    lines = [head, "|" + "---|" * (len(protocols) * len(buckets) + 1)]
    for key in keys:
        if key == BASELINE:
            continue
        cols = []
        for protocol in protocols:
            base_cells, cells = (load_cells(out, protocol, seconds, k) for k in (BASELINE, key))
            cols += [paired_difference(per_world(cells, b), per_world(base_cells, b)) for b in buckets]
        lines.append(f"| {ROW_BY_KEY[key].label} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def tables(args) -> dict[str, str]:
    s, ls = args.seconds, args.long_seconds
    return {
        "recall": table(args.out, "recall", s, args.rows, RETURN_COLUMNS + RETURN_PERMANENCE_COLUMNS + RETURNED_COLUMNS),
        "occlusion": table(args.out, "occlusion", s, args.rows, RETURN_COLUMNS + RETURN_PERMANENCE_COLUMNS + RETURNED_COLUMNS),
        "quality": table(args.out, "occlusion", s, args.rows, QUALITY_COLUMNS),
        "fixed": "\n\n".join(f"*{p}*\n\n" + table(args.out, p, s, args.rows, FIXED_COLUMNS + PENALISED_COLUMNS)
                              for p in args.protocols),
        "paired": f"*{s:g} s*\n\n" + paired_table(args.out, args.protocols, s, args.rows)
                  + f"\n\n*{ls:g} s*\n\n" + paired_table(args.out, args.protocols, ls, args.long_rows),
        "long": "\n\n".join(f"*{p}, {ls:g} s*\n\n" + table(args.out, p, ls, args.long_rows, RETURN_COLUMNS + RETURNED_COLUMNS + QUALITY_COLUMNS[:1])
                            for p in args.protocols),
    }


def figures(args) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = args.doc.parent / "results"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    shown = [k for k in ("codec", "teacher", "rolling", "sink", "ema_sink", "no_cdmd", "absolute", "full") if k in args.rows]
    # 1. restoration error against occlusion length, both protocols
    fig, axes = plt.subplots(1, len(args.protocols), figsize=(6 * len(args.protocols), 4), squeeze=False)
    edges = np.array([0.4, 0.8, 1.5, 4, 8, 20, 30])
    for ax, protocol in zip(axes[0], args.protocols):
        for key in shown:
            rows = [o for c in load_cells(args.out, protocol, args.seconds, key)
                    for o in c["metrics"]["restoration"]["occlusions"] if o["returned"]]
            if not rows:
                continue
            secs = np.array([o["seconds"] for o in rows])
            errs = np.array([o["return_error"] for o in rows])
            mids, meds = [], []
            for lo, hi in zip(edges[:-1], edges[1:]):
                pick = (secs >= lo) & (secs < hi)
                if pick.any():
                    mids.append(np.sqrt(lo * hi))
                    meds.append(np.median(errs[pick]))
            ax.plot(mids, meds, marker="o", label=key, lw=2.5 if key == "full" else 1.2)
        for x in (1.5, 20):
            ax.axvline(x, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("occlusion length (s)")
        ax.set_ylabel("restoration error when back (median)")
        ax.set_title(f"protocol: {protocol}, {args.seconds:g} s worlds")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, fig_dir / "restoration_by_length.png"))
    # 2. fidelity and drift over time (occlusion protocol)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for key in shown:
        cells = load_cells(args.out, "occlusion", args.seconds, key)
        if not cells:
            continue
        for ax, name in zip(axes, ("fidelity", "drift")):
            curves = np.array([[np.nan if v is None else v for v in c["metrics"][f"{name}_curve"]] for c in cells], float)
            t = cells[0]["metrics"][f"{name}_curve_t"]
            with warnings.catch_warnings():  # a time where every world is hidden has no value: a gap
                warnings.simplefilter("ignore", RuntimeWarning)
                ax.plot(t, np.nanmedian(curves, axis=0), label=key, lw=2.5 if key == "full" else 1.2)
    axes[0].set_ylabel("palette fidelity (median over worlds)")
    axes[1].set_ylabel("background drift (median over worlds)")
    for ax in axes:
        ax.set_xlabel("time (s)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, fig_dir / "quality_over_time.png"))
    # 3. frame strips around the longest occlusion of world 0
    for protocol in args.protocols:
        written.append(strip(args, protocol, fig_dir, plt))
    return [w for w in written if w]


def strip(args, protocol: str, fig_dir: Path, plt) -> str | None:
    keys = [k for k in ("codec", "teacher", "rolling", "sink", "no_cdmd", "absolute", "full") if k in args.rows]
    path0 = cell_path(args.out, protocol, args.seconds, "codec", 0)
    if not path0.is_file():
        return None
    occ = json.loads(path0.read_text())["metrics"]["restoration"]["occlusions"]
    if not occ:
        return None
    longest = int(np.argmax([o["seconds"] for o in occ]))
    rows = []
    for key in keys:
        npz = cell_path(args.out, protocol, args.seconds, key, 0).with_suffix(".npz")
        if npz.is_file():
            rows.append((key, np.load(npz)[f"occlusion{longest}"]))
    fig, axes = plt.subplots(len(rows), 3, figsize=(4.5, 1.6 * len(rows)), squeeze=False)
    for (key, frames), ax_row in zip(rows, axes):
        for j, (ax, title) in enumerate(zip(ax_row, ("before", "due back", "due back + 1 s"))):
            ax.imshow(frames[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if key == rows[0][0]:
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(key, fontsize=8)
    fig.suptitle(f"{protocol}: {occ[longest]['seconds']:g} s occlusion, world 0", fontsize=9)
    fig.tight_layout()
    return _save(fig, fig_dir / f"strip_{protocol}.png")


def _save(fig, path: Path) -> str:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or "unknown"


def environment(args) -> str:
    import torch

    commits = sorted({json.loads(p.read_text()).get("commit", "unrecorded") for p in (args.out / "cells").rglob("*.json")})
    return (f"Cells generated by `python scripts/reproduce_results.py` at commit(s) {', '.join(f'`{c}`' for c in commits)}; "
            f"report written at `{_commit()}`: torch "
            f"{torch.__version__}, {platform.machine()} CPU, {args.workers} worker process(es) x 1 torch thread, "
            f"{time.strftime('%Y-%m-%d')}.")


BLOCKS = ("recall", "occlusion", "quality", "paired", "fixed", "long", "environment")  # what write_doc fills


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


def check_worlds(args) -> None:
    """Before any generation: every world's occlusion schedule fits its length."""
    from contextforcing.data.world.heldout import heldout_pairs
    from contextforcing.data.world.track import simulate
    from contextforcing.errors import UserError

    for seconds, count in ((args.seconds, args.pairs), (args.long_seconds, args.long_pairs)):
        for world in heldout_pairs(min(count, 1), seconds):
            try:
                simulate(world)
            except UserError as e:
                die(f"held-out worlds of {seconds:g} s: {e}")


def write_doc(doc: Path, blocks: dict[str, str]) -> None:
    """Replace each `<!-- BEGIN name -->...<!-- END name -->` block of `doc`; the prose around them is kept."""
    text = doc.read_text()
    for name, body in blocks.items():
        text = _block(name).sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    tmp = doc.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, doc)


# -- main -----------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "results")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "results.md")
    p.add_argument("--pairs", type=int, default=50, help="held-out worlds at --seconds")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--long-pairs", type=int, default=16, help="held-out worlds at --long-seconds (main rows)")
    p.add_argument("--long-seconds", type=float, default=120.0)
    p.add_argument("--teacher-pairs", type=int, default=None,
                   help="worlds the (slow) teacher row is run on (default: all --pairs)")
    p.add_argument("--rows", default=",".join(r.key for r in ROWS))
    p.add_argument("--long-rows", default=",".join(LONG_ROWS))
    p.add_argument("--protocols", default=",".join(PROTOCOLS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="no generation: tables, figures, document")
    args = p.parse_args(argv)
    for name in ("rows", "long_rows", "protocols"):
        setattr(args, name, [x for x in getattr(args, name).split(",") if x])
    unknown = [k for k in args.rows + args.long_rows if k not in ROW_BY_KEY] + [p for p in args.protocols if p not in PROTOCOLS]
    if unknown:
        die(f"unknown row or protocol: {', '.join(unknown)} (rows: {', '.join(ROW_BY_KEY)})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    LIMITS.update({args.seconds: args.pairs, args.long_seconds: args.long_pairs})
    check_doc(args.doc)
    if not args.report_only:
        check_worlds(args)
        ensure_weights(args.rows + (args.long_rows if args.long_pairs else []))
        tasks = plan(args)
        print(f"{len(tasks)} cells to generate ({args.workers} workers)", flush=True)
        run_cells(tasks, args.workers)
    blocks = tables(args)
    figs = figures(args)
    blocks["environment"] = environment(args)
    assert blocks.keys() == set(BLOCKS), "tables() and BLOCKS disagree"
    write_doc(args.doc, blocks)
    print(f"wrote {args.doc} and {', '.join(figs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
