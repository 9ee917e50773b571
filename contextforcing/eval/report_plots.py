"""The evaluation report's plots (matplotlib, the [eval] extra), one line or bar per video: first-frame similarity,
restoration by occlusion length, world metrics over time, and the panorama world's camera, revisits and balls."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contextforcing.data.world.track import BUCKETS, FAST_MEMORY_SECONDS, SLOW_MEMORY_SECONDS
from contextforcing.eval.evaluate import VideoResult
from contextforcing.runtime.extras import require

PLOT_DPI = 100


def _plt():
    matplotlib = require("matplotlib", "eval", "evaluation plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(tmp, dpi=PLOT_DPI, bbox_inches="tight")
    _plt().close(fig)
    os.replace(tmp, path)


def plot_first_frame(results: list[VideoResult], path: Path) -> bool:
    names = sorted({n for r in results for n in r.metrics["features"]})
    if not names:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in results:
            f = r.metrics["features"].get(name)
            if f:
                (line,) = ax.plot(f["first_frame_curve_t"], f["first_frame_curve"], label=r.name)
                pts = f["first_frame_similarity"]
                ax.plot([float(t) for t in pts], list(pts.values()), "o", color=line.get_color())
        proxy = " (weight-free proxy)" if any(r.metrics["features"].get(name, {}).get("proxy") for r in results) else ""
        ax.set(title=f"similarity to first frame: {name}{proxy}", xlabel="time (s)", ylabel="cosine")
        ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_world_curves(results: list[VideoResult], path: Path) -> bool:
    worlds = [r for r in results if "world" in r.metrics]
    if not worlds:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
    for r in worlds:
        w = r.metrics["world"]
        axes[0].plot(w["drift"]["curve_t"], [np.nan if v is None else v for v in w["drift"]["curve"]], label=r.name)
        axes[1].plot(
            w["fidelity"]["curve_t"], [np.nan if v is None else v for v in w["fidelity"]["curve"]], label=r.name
        )
        axes[2].plot(w["dynamics"]["curve_t"], w["dynamics"]["speed"], label=r.name)
    if worlds[0].metrics["world"]["dynamics"]["curve_t"]:
        d = worlds[0].metrics["world"]["dynamics"]
        axes[2].plot(d["curve_t"], d["true_speed"], "k--", label="ground truth")
    axes[0].set(title="background drift", xlabel="time (s)", ylabel="mean |frame - background| / 255")
    axes[1].set(title="palette fidelity", xlabel="time (s)", ylabel="fraction of legal pixels")
    axes[2].set(title="sprite speed", xlabel="time (s)", ylabel="px / s")
    for ax in axes:
        ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_buckets(results: list[VideoResult], path: Path) -> bool:
    worlds = [r for r in results if "world" in r.metrics]
    if not worlds:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    width = 0.8 / len(worlds)
    x = np.arange(len(BUCKETS))
    for i, r in enumerate(worlds):
        b = r.metrics["world"]["restoration"]["buckets"]
        err = [np.nan if b[k]["restoration_error"] is None else b[k]["restoration_error"] for k in BUCKETS]
        perm = [np.nan if b[k]["permanence"] is None else b[k]["permanence"] for k in BUCKETS]
        axes[0].bar(x + i * width, err, width, label=r.name)
        axes[1].bar(x + i * width, perm, width, label=r.name)
    labels = [
        f"short\n< {FAST_MEMORY_SECONDS} s",
        f"mid\n<= {SLOW_MEMORY_SECONDS:g} s",
        f"long\n> {SLOW_MEMORY_SECONDS:g} s",
    ]
    for ax, title in zip(axes, ("restoration error (lower is better)", "object permanence (higher is better)")):
        ax.set_xticks(x + width * (len(worlds) - 1) / 2, labels)
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[1].set_ylim(0, 1.05)
    _save(fig, path)
    return True


def is_number(*values) -> bool:
    """Every value is a number (metrics.json writes "not applicable" where an event did not happen)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _points(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    """(x, y) of the rows where both are numbers; the others are left out of a plot, as metrics.json marks them."""
    pairs = [(r[x], r[y]) for r in rows if is_number(r[x], r[y])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_panorama(results: list[VideoResult], path: Path) -> bool:
    """Camera (estimated vs script); per revisit against delay: memory (not made: x at 0), revisit error and PSNR
    of the revisited region; objects per view over time (truth dashed); the balls' speeds."""
    from contextforcing.data.world.panorama.geometry import LATENTS_PER_SECOND

    pano = [r for r in results if "panorama" in r.metrics]
    if not pano:
        return False
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(16, 7.6))
    camera, objects = axes.flat[0], axes.flat[4]
    script_x = pano[0].metrics["panorama"]["camera"]["script_x"]
    t = np.arange(len(script_x)) / LATENTS_PER_SECOND
    camera.plot(t, script_x, "k--", label="script")
    for r in pano:
        _panorama_curves(axes.flat, t, r)
    truth_objects = pano[0].metrics["panorama"]["views"]["truth_objects_per_view"]
    if is_number(truth_objects):
        objects.axhline(truth_objects, color="k", ls="--", lw=1, label="truth (mean)")
    _label_panorama(axes.flat)
    fig.tight_layout()
    _save(fig, path)
    return True


def _panorama_curves(axes, t: np.ndarray, r: VideoResult) -> None:
    """One video's lines and points on the six panorama axes, in one colour."""
    camera, memory, error, psnr, objects, balls = axes
    m = r.metrics["panorama"]
    (line,) = camera.plot(t[: len(m["camera"]["estimated_x"])], m["camera"]["estimated_x"], label=r.name)
    colour = line.get_color()
    made = [v for v in m["revisits"] if v["made"]]
    missed = [v for v in m["revisits"] if not v["made"]]
    memory_label = f"{r.name}: {number_text(m['headline']['memory_score'])}"
    memory.scatter(*_points(made, "delay_seconds", "memory"), s=12, color=colour, label=memory_label)
    memory.scatter([v["delay_seconds"] for v in missed], [0.0] * len(missed), s=16, marker="x", color=colour)
    error_label = f"{r.name} ({len(made)}/{len(m['revisits'])} made)"
    error.scatter(*_points(made, "delay_seconds", "error"), s=12, color=colour, label=error_label)
    psnr.scatter(*_points(made, "delay_seconds", "psnr"), s=12, color=colour, label=r.name)
    views = m["views"]
    objects.plot(views["curve_t"], views["objects_curve"], ".", ms=2, color=colour, label=r.name)
    for ball in m["movers"]["per_ball"].values():
        balls.plot(*_points(ball["curve"], "t", "vx"), ".", color=colour)


def _label_panorama(axes) -> None:
    """Titles, units and the fast / slow memory lines of the six panorama axes."""
    from contextforcing.data.world.panorama.geometry import FAST_MEMORY_SECONDS as FAST
    from contextforcing.data.world.panorama.geometry import SLOW_MEMORY_SECONDS as SLOW

    camera, memory, error, psnr, objects, balls = axes
    for ax in (memory, error, psnr):
        for v in (FAST, SLOW):
            ax.axvline(v, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="delay (s)", xscale="log")
    camera.set(title="camera (view's left edge, px)", xlabel="time (s)", ylabel="px")
    memory.set(
        title="memory per revisit (x: not made; legend: memory score)", ylabel="1 - error / null", ylim=(-0.05, 1.05)
    )
    error.set(
        title="revisit error against delay (lines: fast / slow memory)",
        ylabel="fraction of pixels changed",
        ylim=(-0.02, 1.02),
    )
    psnr.set(title="PSNR of revisited regions", ylabel="dB")
    objects.set(title="objects per view", xlabel="time (s)", ylabel="objects")
    balls.set(title="ball velocity in the room (per 1 s window)", xlabel="time (s)", ylabel="px / s")
    for ax in (camera, memory, error, objects):
        ax.legend(fontsize=8)


def number_text(v, digits: int = 2) -> str:
    """A number with `digits` decimals; anything else (metrics.json's "not applicable") as it is."""
    return f"{v:.{digits}f}" if is_number(v) else str(v)
