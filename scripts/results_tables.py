"""The tables and figures of docs/results.md, from the cells scripts/reproduce_results.py wrote.

Memory scores are pooled over worlds: the sum of a row's revisit scores over the sum of the truth's (through the
codec) on the same revisits, so every revisit of every world weighs the same. Paired comparisons use one value
per world (the same ratio within the world) and test world by world.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from results_rows import BASELINE, REPO, ROW_BY_KEY

BUCKETS = ("fast", "slow", "beyond")
CAUSES = ("pan", "lights", "pan+lights")
BOOTSTRAP_RESAMPLES = 2000


def cell_path(out: Path, seconds: float, key: str, index: int) -> Path:
    return out / "cells" / f"{seconds:g}s" / key / f"{index:03d}.json"


def load_cells(out: Path, seconds: float, key: str, limit: int | None = None) -> list[dict]:
    folder = out / "cells" / f"{seconds:g}s" / key
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [json.loads(p.read_text()) for p in paths if limit is None or int(p.stem) < limit]


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# -- memory over sets of revisits ------------------------------------------------------------------------------
def BEYOND_FAST(r) -> bool:  # noqa: N802 (a named selection, used like a constant)
    return r["bucket"] != "fast"


def PAN_BEYOND_FAST(r) -> bool:  # noqa: N802
    return r["bucket"] != "fast" and r["cause"] == "pan"


def pooled_memory(cells: list[dict], keep=lambda r: True) -> float | None:
    """memory_score over the chosen revisits of every cell, pooled."""
    from contextforcing.eval.memory_score import pooled_memory_score

    return pooled_memory_score((r for c in cells for r in c["revisits"] if keep(r)), truth_key="truth")


def world_memory(cell: dict, keep) -> float | None:
    return pooled_memory([cell], keep)


# -- paired statistics ----------------------------------------------------------------------------------------
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


def per_world(cells: list[dict], get) -> dict:
    return {c["seed"]: v for c in cells if (v := get(c)) is not None}


# -- tables ---------------------------------------------------------------------------------------------------
def _fmt(v, digits=2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| row | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def headline_table(args) -> str:
    columns = [
        "n",
        "memory score, all / fast / slow / beyond",
        "memory score, camera came back beyond the fast memory",
        "memory score by cause: camera / lights / both",
        "revisits made",
        "camera obeyed, pans / holds",
        "movers obeyed",
        "lighting obeyed",
        "objects per view (truth)",
        "s per video",
    ]
    rows = []
    for key in args.rows:
        cells = load_cells(args.out, args.seconds, key, args.worlds)
        label = ROW_BY_KEY[key].label
        if not cells:
            rows.append([label, "0"] + ["not measured"] * (len(columns) - 1))
            continue
        made = sum(r["made"] for c in cells for r in c["revisits"])
        total = sum(len(c["revisits"]) for c in cells)
        memory = [pooled_memory(cells)] + [pooled_memory(cells, lambda r, b=b: r["bucket"] == b) for b in BUCKETS]
        causes = [pooled_memory(cells, lambda r, c=c: r["cause"] == c) for c in CAUSES]

        def head(name):
            return _fmt(mean([c["headline"][name] for c in cells]))

        objects = mean([c["views"]["objects_per_view"] for c in cells])
        truth_objects = mean([c["views"]["truth_objects_per_view"] for c in cells])
        rows.append(
            [
                label,
                str(len(cells)),
                " / ".join(_fmt(v) for v in memory),
                _fmt(pooled_memory(cells, PAN_BEYOND_FAST)),
                " / ".join(_fmt(v) for v in causes),
                f"{made / total:.2f}" if total else "n/a",
                f"{head('camera_pans')} / {head('camera_holds')}",
                head("movers"),
                head("lighting"),
                f"{_fmt(objects, 1)} ({_fmt(truth_objects, 1)})",
                f"{np.median([c['generation_seconds'] for c in cells]):.1f}",
            ]
        )
    return _table(columns, rows)


def field_table(args) -> str:
    """The field's numbers: PSNR and SSIM of revisited regions against their earlier view by delay (made revisits),
    the old revisit error and permanence, and drift (last 15% minus first 15% of the video)."""
    columns = [
        "PSNR (dB), fast / slow / beyond",
        "SSIM, fast / slow / beyond",
        "revisit error, fast / slow / beyond",
        "object permanence, fast / slow / beyond",
        "drift: palette fidelity / objects per view",
    ]
    rows = []
    for key in args.rows:
        cells = load_cells(args.out, args.seconds, key, args.worlds)
        if not cells:
            continue

        def by_bucket(what, digits):
            values = [
                mean([r[what] for c in cells for r in c["revisits"] if r["made"] and r["bucket"] == b]) for b in BUCKETS
            ]
            return " / ".join(_fmt(v, digits) for v in values)

        drift = [mean([c["views"][k] for c in cells]) for k in ("palette_drift", "objects_drift")]
        rows.append(
            [
                ROW_BY_KEY[key].label,
                by_bucket("psnr", 1),
                by_bucket("ssim", 2),
                by_bucket("error", 3),
                by_bucket("permanence", 2),
                f"{_fmt(drift[0], 3)} / {_fmt(drift[1], 1)}",
            ]
        )
    return _table(columns, rows)


def promotion_table(args) -> str:
    """For the rows whose memory promotes: how often, and how many promoted frames the script keeps dark."""
    rows = []
    for key in args.rows:
        cells = [c for c in load_cells(args.out, args.seconds, key, args.worlds) if c.get("promoted")]
        if not cells:
            continue
        count = sum(len(c["promoted"]) for c in cells)
        dark = sum(c["promoted_dark"] for c in cells)
        rows.append([ROW_BY_KEY[key].label, f"{count / len(cells):.1f}", f"{dark / count:.2f}"])
    return _table([f"promotions per video ({rows and args.seconds:g} s)", "share of promoted frames dark"], rows)


PAIRED = (
    ("memory score beyond the fast memory", lambda c: world_memory(c, BEYOND_FAST)),
    ("memory score, camera came back beyond the fast memory", lambda c: world_memory(c, PAN_BEYOND_FAST)),
    ("movers obeyed", lambda c: c["headline"]["movers"]),
    ("camera obeyed (pans)", lambda c: c["headline"]["camera_pans"]),
)


def paired_table(args) -> str:
    base = load_cells(args.out, args.seconds, BASELINE, args.worlds)
    rows = []
    for key in args.rows:
        if key == BASELINE:
            continue
        cells = load_cells(args.out, args.seconds, key, args.worlds)
        cols = [paired_difference(per_world(cells, get), per_world(base, get)) for _, get in PAIRED]
        rows.append([ROW_BY_KEY[key].label] + cols)
    return _table([name for name, _ in PAIRED], rows)


def targets_block(args) -> str:
    """The aims for the shipped memory, each tested on the held-out worlds: met or not, with its numbers."""
    cells = {k: load_cells(args.out, args.seconds, k, args.worlds) for k in ROW_BY_KEY}
    pan = {k: per_world(v, lambda c: world_memory(c, PAN_BEYOND_FAST)) for k, v in cells.items()}
    lines = []

    def beats(key: str, other: str) -> str:
        if not pan[key] or not pan[other]:
            return f"not measured ({other} has no cells)"
        shared = sorted(pan[key].keys() & pan[other].keys())
        wins = sum(pan[key][w] > pan[other][w] for w in shared)
        losses = sum(pan[key][w] < pan[other][w] for w in shared)
        p = sign_test(wins, losses)
        verdict = "met" if wins > losses and p < 0.01 else "NOT met"
        return f"{verdict}: higher in {wins} of {len(shared)} worlds, lower in {losses} (sign test p = {p:.2g})"

    trained = pooled_memory(cells[BASELINE], PAN_BEYOND_FAST)
    forgets = pooled_memory(cells["forgets"], PAN_BEYOND_FAST)
    halfway = None if trained is None or forgets is None else (forgets + 1.0) / 2
    lines.append(
        f"- trained memory above rolling on memory score (camera came back, beyond the fast memory): "
        f"{beats(BASELINE, 'rolling')}"
    )
    lines.append(f"- ... above the slow tier emptied: {beats(BASELINE, 'slow_empty')}")
    lines.append(
        f"- ... at least halfway from the forgetting oracle ({_fmt(forgets)}) to the truth (1): "
        + ("not measured" if halfway is None else f"{'met' if trained >= halfway else 'NOT met'}: {trained:.2f}")
        + f" (halfway: {_fmt(halfway)})"
    )
    objects = mean([c["views"]["objects_per_view"] for c in cells[BASELINE]])
    truth = mean([c["views"]["truth_objects_per_view"] for c in cells[BASELINE]])
    if objects is not None and truth:
        ok = truth / 2 <= objects <= 2 * truth
        lines.append(
            f"- objects per view within 2x of the truth: {'met' if ok else 'NOT met'}: {objects:.1f} vs {truth:.1f}"
        )
    for key, what in (("camera_pans", "camera pans"), ("lighting", "lighting")):
        value = mean([c["headline"][key] for c in cells[BASELINE]])
        lines.append(f"- {what} obeyed: {_fmt(value)}")
    lines.append(
        f"- teacher above the Stage 1 student (beyond the fast memory): {stage_order(cells, 'teacher', 'no_cdmd')}"
    )
    lines.append(
        f"- Stage 2 at least matches Stage 1 (beyond the fast memory): {stage_order(cells, BASELINE, 'no_cdmd')}"
    )
    return "\n".join(lines)


def stage_order(cells: dict, higher: str, lower: str) -> str:
    a, b = (pooled_memory(cells[k], BEYOND_FAST) for k in (higher, lower))
    if a is None or b is None:
        return "not measured"
    worlds = min(len(cells[higher]), len(cells[lower]))
    return f"{'met' if a >= b else 'NOT met'}: {a:.2f} vs {b:.2f} (pooled over {worlds} worlds)"


# -- figures --------------------------------------------------------------------------------------------------
DELAY_EDGES = np.array([0.75, 1.5, 3, 6, 12, 20, 35, 80])
FIGURE_ROWS = (
    "truth_codec",
    "forgets",
    "repeat64",
    "teacher",
    "rolling",
    "sink",
    "slow_empty",
    "no_cdmd",
    "screen",
    "previous",
)


def figures(args) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = args.doc.parent / "results"
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in [k for k in (*FIGURE_ROWS, BASELINE) if k in args.rows]:
        cells = load_cells(args.out, args.seconds, key, args.worlds)
        mids, values = [], []
        for lo, hi in zip(DELAY_EDGES[:-1], DELAY_EDGES[1:]):
            value = pooled_memory(cells, lambda r, lo=lo, hi=hi: lo < r["delay"] <= hi)
            if value is not None:
                mids.append(math.sqrt(lo * hi))
                values.append(value)
        if values:
            style = "--" if ROW_BY_KEY[key].kind == "oracle" else "-"
            ax.plot(mids, values, marker="o", label=key, lw=2.5 if key == BASELINE else 1.2, ls=style)
    for x in (1.5, 20):
        ax.axvline(x, color="grey", ls=":", lw=0.8)
    ax.set(
        xscale="log",
        xlabel="revisit delay (s)",
        ylabel="memory score (1: truth through the codec)",
        title=f"memory against delay, {args.worlds} held-out worlds of {args.seconds:g} s",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    written = [_save(fig, fig_dir / "memory_by_delay.png", plt), strip(args, fig_dir, plt)]
    return [w for w in written if w]


def strip(args, fig_dir: Path, plt) -> str | None:
    """Before / when back at world 0's longest revisit of the script, per model row (and the truth)."""
    rows = []
    for key in args.rows:
        npz = cell_path(args.out, args.seconds, key, 0).with_suffix(".npz")
        if npz.is_file() and (ROW_BY_KEY[key].kind == "model" or key == "truth_codec"):
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
    fig.suptitle("world 0: the longest revisit of the script", fontsize=8)
    fig.tight_layout()
    return _save(fig, fig_dir / "strip_longest_revisit.png", plt)


def _save(fig, path: Path, plt) -> str:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
