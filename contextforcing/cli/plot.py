"""`contextforcing plot VIDEO.json`: the memory of a saved video over time, from its sidecar, as one PNG.

Top: for each chunk (x: when it starts in the video), every latent frame it attended (y: that frame's time in the
video), coloured by tier (sink, slow, fast) with the chunk's own frames; promotions into the slow memory are
marked where they happen, prompt switches are vertical lines. Bottom: the surprisal signal (the cosine
similarity of consecutive chunks' keys) against tau, promoted chunks marked; "not applicable" for a memory
that takes no surprisal decisions. Needs matplotlib (the [eval] extra).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from contextforcing.cli.args import examples
from contextforcing.errors import UserError
from contextforcing.io.sidecar import SavedVideo, read_sidecar

TIER_COLOURS = {"sink": "#5b8def", "slow": "#e0a33a", "fast": "#4fb98a", "current": "#c678dd"}
PROMOTED_COLOUR = "#1a9850"
EVICTED_COLOUR = "#d73027"


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plot",
        help="plot a saved video's memory over time (tiers, surprisal, promotions) from its sidecar",
        description=__doc__.split("\n\n", 1)[1].strip(),
        epilog=examples(
            "contextforcing plot video.json", "contextforcing plot out/demo/slow_fast.mp4 --out memory.png"
        ),
    )
    p.add_argument("sidecar", metavar="VIDEO.json", help="a generated video's sidecar (or the .mp4 beside it)")
    p.add_argument("--out", metavar="PNG", help="where the plot goes (default: the sidecar's name with .png)")
    p.set_defaults(func=run_plot)
    return p


def run_plot(args) -> int:
    from contextforcing.io.outputs import check_writable
    from contextforcing.runtime.extras import require

    source = Path(args.sidecar)
    if source.suffix.lower() == ".mp4":
        source = source.with_suffix(".json")
    out = Path(args.out) if args.out else source.with_suffix(".png")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} must end in .png")
    check_writable(out)
    require("matplotlib", "eval", "contextforcing plot")
    saved = read_sidecar(source)
    write_memory_plot(saved, out)
    promotions = sum(len(c.update.promoted) for c in saved.chunks)
    print(f"wrote {out} ({len(saved.chunks)} chunks, {promotions} promotions, {len(saved.switches)} prompt switches)")
    return 0


def write_memory_plot(saved: SavedVideo, out: Path) -> Path:
    """The figure of `saved` into `out`, whole or not at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from contextforcing.io.outputs import write_atomic

    fig, (tiers, surprisal) = plt.subplots(
        2, 1, figsize=(11, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]}, layout="constrained"
    )
    try:
        _draw_tiers(tiers, saved)
        _draw_surprisal(surprisal, saved)
        surprisal.set_xlabel("chunk start in the video (s)")
        fig.suptitle(_title(saved), fontsize=10)
        return write_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _title(saved: SavedVideo) -> str:
    memory = "unknown memory" if saved.memory is None else saved.memory.name
    if saved.memory is not None:
        options = saved.memory.to_dict()
        shown = [f"{k}={options[k]}" for k in ("sink", "slow", "fast", "window", "tau", "interval") if k in options]
        memory += " (" + ", ".join(shown) + ")" if shown else ""
    return f"{saved.path.name}: {memory}, seed {saved.seed}, {saved.weights}"


@dataclass
class MemoryPoints:
    """What the top panel draws, as (chunk start s, frame time s) pairs: attended frames by tier (the chunk's own
    frames as "current"), promotions into the slow memory and slow frames dropped."""

    tiers: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {t: [] for t in TIER_COLOURS})
    promoted: list[tuple[float, float]] = field(default_factory=list)
    dropped: list[tuple[float, float]] = field(default_factory=list)


def memory_points(saved: SavedVideo) -> MemoryPoints:
    points = MemoryPoints()
    at = saved.seconds_of_frame
    for c in saved.chunks:
        x = at(c.plan.start)
        for a in c.plan.context:
            points.tiers[a.tier].append((x, at(a.frame)))
        points.tiers["current"] += [(x, at(f)) for f in c.plan.current_frames]
        points.promoted += [(x, at(f)) for f in c.update.promoted]
        points.dropped += [(x, at(f)) for f in c.update.slow_evicted]
    return points


def _draw_tiers(ax, saved: SavedVideo) -> None:
    size = max(2.0, min(16.0, 2400 / max(1, len(saved.chunks))))  # markers shrink as chunks grow in number
    points = memory_points(saved)
    for tier, xy in points.tiers.items():  # a tier the memory never used has no legend entry
        if xy:
            label = "this chunk" if tier == "current" else tier
            ax.scatter(*zip(*xy), s=size, marker="s", color=TIER_COLOURS[tier], label=label, linewidths=0)
    if points.promoted:
        ax.scatter(
            *zip(*points.promoted), s=size * 6, marker="*", color=PROMOTED_COLOUR, label="promoted to slow", zorder=3
        )
    if points.dropped:
        ax.scatter(
            *zip(*points.dropped), s=size * 3, marker="x", color=EVICTED_COLOUR, label="dropped from slow", zorder=3
        )
    _mark_switches(ax, saved, label=True)
    ax.set_ylabel("attended frame's time in the video (s)")
    ax.legend(loc="upper left", fontsize=8, markerscale=1.5, ncol=4, framealpha=0.95)
    ax.grid(alpha=0.25)


def _draw_surprisal(ax, saved: SavedVideo) -> None:
    tau = saved.tau
    decided = [c for c in saved.chunks if c.update.similarity is not None]
    ax.set_ylabel("similarity")
    if tau is None or not decided:
        why = "this memory takes no surprisal decisions" if tau is None else "no surprisal decision was taken"
        ax.text(0.5, 0.5, f"surprisal: not applicable ({why})", transform=ax.transAxes, ha="center", va="center")
        ax.set_yticks([])
        _mark_switches(ax, saved, label=False)
        return
    xs = [saved.seconds_of_frame(c.plan.start) for c in decided]
    ys = [c.update.similarity for c in decided]
    ax.plot(xs, ys, color="#3d6fb8", linewidth=1, marker="o", markersize=2.5, label="similarity of consecutive chunks")
    hits = [(x, y) for x, y, c in zip(xs, ys, decided) if c.update.promoted]
    if hits:
        ax.scatter(*zip(*hits), s=40, marker="*", color=PROMOTED_COLOUR, zorder=3, label="promoted (< tau)")
    ax.axhline(tau, color=EVICTED_COLOUR, linestyle="--", linewidth=1, label=f"tau = {tau:g}")
    _mark_switches(ax, saved, label=False)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.25)


# Up to this many prompt switches are labelled with their prompt; more would cover the plot (lines only).
MAX_LABELLED_SWITCHES = 8


def _mark_switches(ax, saved: SavedVideo, label: bool) -> None:
    for n, (chunk, prompt) in enumerate(saved.switches):
        x = chunk * saved.chunk_seconds
        ax.axvline(x, color="#888888", linestyle=":", linewidth=1, label="prompt switch" if label and n == 0 else None)
        if label and len(saved.switches) <= MAX_LABELLED_SWITCHES:
            ax.annotate(
                prompt if len(prompt) <= 40 else prompt[:37] + "...",
                (x, 0.02),
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=7,
                va="bottom",
                ha="right",
                color="#555555",
            )
