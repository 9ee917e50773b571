"""The evaluation report: metrics.json, plots, frame strips and a self-contained report.html.

Several videos (e.g. one per memory policy, same prompt and seed) are drawn side by side: one line or
bar per video in every plot, one row per video in every strip, one column per video in the tables.
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path

import numpy as np

from contextforcing.data.world.track import BUCKETS, FAST_MEMORY_SECONDS, SLOW_MEMORY_SECONDS, WorldTrack
from contextforcing.eval.evaluate import VideoResult, aggregate
from contextforcing.io.outputs import write_atomic
from contextforcing.io.video import write_json_atomic
from contextforcing.runtime.extras import require

MAX_STRIPS = 6  # strips for the longest occlusions only
STRIP_SCALE = 3  # nearest-neighbour upscaling of 64-px frames in strips
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


def _save_image(image: np.ndarray, path: Path) -> None:
    require("matplotlib", "eval", "evaluation plots")
    import matplotlib.image

    write_atomic(path, lambda tmp: matplotlib.image.imsave(tmp, image))


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


def _numeric(*values) -> bool:
    """Every value is a number (metrics.json writes "not applicable" where an event did not happen)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _points(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    """(x, y) of the rows where both are numbers; the others are left out of a plot, as metrics.json marks them."""
    pairs = [(r[x], r[y]) for r in rows if _numeric(r[x], r[y])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_panorama(results: list[VideoResult], path: Path) -> bool:
    """Camera (estimated vs script); per revisit against delay: memory (not made: x at 0), revisit error and PSNR
    of the revisited region; objects per view over time (truth dashed); the balls' speeds."""
    from contextforcing.data.world.panorama.geometry import FAST_MEMORY_SECONDS as FAST
    from contextforcing.data.world.panorama.geometry import LATENTS_PER_SECOND
    from contextforcing.data.world.panorama.geometry import SLOW_MEMORY_SECONDS as SLOW

    pano = [r for r in results if "panorama" in r.metrics]
    if not pano:
        return False
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(16, 7.6))
    camera, memory, error, psnr, objects, balls = axes.flat
    script_x = pano[0].metrics["panorama"]["camera"]["script_x"]
    t = np.arange(len(script_x)) / LATENTS_PER_SECOND
    camera.plot(t, script_x, "k--", label="script")
    for r in pano:
        m = r.metrics["panorama"]
        (line,) = camera.plot(t[: len(m["camera"]["estimated_x"])], m["camera"]["estimated_x"], label=r.name)
        colour = line.get_color()
        made = [v for v in m["revisits"] if v["made"]]
        missed = [v for v in m["revisits"] if not v["made"]]
        memory.scatter(
            *_points(made, "delay_seconds", "memory"),
            s=12,
            color=colour,
            label=f"{r.name}: {_fmt(m['headline']['memory_score'])}",
        )
        memory.scatter([v["delay_seconds"] for v in missed], [0.0] * len(missed), s=16, marker="x", color=colour)
        error.scatter(
            *_points(made, "delay_seconds", "error"),
            s=12,
            color=colour,
            label=f"{r.name} ({len(made)}/{len(m['revisits'])} made)",
        )
        psnr.scatter(*_points(made, "delay_seconds", "psnr"), s=12, color=colour, label=r.name)
        views = m["views"]
        objects.plot(views["curve_t"], views["objects_curve"], ".", ms=2, color=colour, label=r.name)
        for ball in m["movers"]["per_ball"].values():
            balls.plot(*_points(ball["curve"], "t", "vx"), ".", color=colour)
    truth_objects = pano[0].metrics["panorama"]["views"]["truth_objects_per_view"]
    if _numeric(truth_objects):
        objects.axhline(truth_objects, color="k", ls="--", lw=1, label="truth (mean)")
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
    fig.tight_layout()
    _save(fig, path)
    return True


def _fmt(v, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if _numeric(v) else str(v)


def _upscale(frame: np.ndarray) -> np.ndarray:
    return np.kron(frame, np.ones((STRIP_SCALE, STRIP_SCALE, 1), np.uint8))


def _grid(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    h, w = rows[0][0].shape[:2]
    out = np.full((len(rows) * (h + gap) - gap, len(rows[0]) * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = img
    return out


def occlusion_strips(
    results: list[VideoResult], track: WorldTrack, out_dir: Path, prefix: str = ""
) -> list[tuple[str, str]]:
    """One image per long occlusion: a row per video, frames [before, after, after + 1 s]."""
    from contextforcing.data.world.render import render

    truth = render(track)
    occs = [o for o in track.occlusions() if o.end_frame < track.n_frames and o.seconds >= FAST_MEMORY_SECONDS]
    occs = sorted(occs, key=lambda o: -o.seconds)[:MAX_STRIPS]
    strips = []
    for occ in sorted(occs, key=lambda o: o.start_frame):
        later = min(track.n_frames - 1, occ.end_frame + int(round(results[0].fps)))
        picks = [occ.before_frame, occ.end_frame, later]
        rows = [[_upscale(truth[t]) for t in picks]] + [[_upscale(r.frames[t]) for t in picks] for r in results]
        name = f"strip_{prefix}occlusion_{occ.start_frame:05d}.png"
        _save_image(_grid(rows), out_dir / name)
        caption = (
            f"{occ.kind} occlusion of {occ.seconds:g} s ({occ.bucket}) at {occ.start_frame / results[0].fps:.1f} s. "
            f"Columns: last frame before, first frame after, 1 s later. Rows: ground truth, "
            + ", ".join(r.name for r in results)
        )
        strips.append((name, caption))
    return strips


def contact_sheet(
    frames: np.ndarray, path: Path, every_seconds: float = 1.0, per_row: int = 15, fps: float = 16.0, first: int = 0
) -> None:
    """A PNG of one frame every `every_seconds` from `first`, `per_row` frames per row, upscaled (for looking at
    a whole video at once)."""
    picks = np.arange(first, len(frames), max(1, int(round(every_seconds * fps))))
    tiles = [_upscale(frames[t]) for t in picks]
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % per_row)  # pad the last row
    _save_image(_grid([tiles[i : i + per_row] for i in range(0, len(tiles), per_row)]), Path(path))


def timeline_strip(results: list[VideoResult], out_dir: Path, step_seconds: float = 10.0) -> tuple[str, str]:
    """Without annotations: frames every 10 s, a row per video."""
    fps = results[0].fps
    n = min(len(r.frames) for r in results)
    picks = [int(round(t * fps)) for t in np.arange(0, n / fps, step_seconds) if int(round(t * fps)) < n]
    rows = [[_upscale_any(r.frames[t]) for t in picks] for r in results]
    _save_image(_grid(rows), out_dir / "strip_timeline.png")
    return "strip_timeline.png", f"frames every {step_seconds:g} s; rows: " + ", ".join(r.name for r in results)


def _upscale_any(frame: np.ndarray) -> np.ndarray:
    scale = max(1, math.ceil(192 / max(frame.shape[:2])))
    return np.kron(frame, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else frame


def _summary_rows(results: list[VideoResult]) -> list[tuple[str, list[str]]]:
    def fmt(v):
        return (
            "–"
            if v is None or (isinstance(v, float) and math.isnan(v))
            else (f"{v:.4f}" if isinstance(v, float) else str(v))
        )

    rows = [
        ("frames / seconds", [f"{r.metrics['frames']} / {r.metrics['seconds']:.1f}" for r in results]),
        ("temporal flickering (VBench, exact)", [fmt(r.metrics["temporal_flickering"]) for r in results]),
        (
            "dynamic degree (proxy: Farneback flow)",
            [
                fmt(r.metrics["dynamic_degree_proxy"]["dynamic"]) if r.metrics["dynamic_degree_proxy"] else "–"
                for r in results
            ],
        ),
    ]
    names = sorted({n for r in results for n in r.metrics["features"]})
    for n in names:
        tag = " [proxy]" if any(r.metrics["features"].get(n, {}).get("proxy") for r in results) else ""
        rows.append(
            (
                f"{n}: VBench consistency{tag}",
                [fmt(r.metrics["features"].get(n, {}).get("vbench_consistency")) for r in results],
            )
        )
        rows.append(
            (f"{n}: clip-to-clip{tag}", [fmt(r.metrics["features"].get(n, {}).get("clip_to_clip")) for r in results])
        )
        times = sorted(
            {t for r in results for t in r.metrics["features"].get(n, {}).get("first_frame_similarity", {})}, key=float
        )
        for t in times:
            rows.append(
                (
                    f"{n}: first-frame similarity @ {t} s{tag}",
                    [fmt(r.metrics["features"].get(n, {}).get("first_frame_similarity", {}).get(t)) for r in results],
                )
            )
    if any("panorama" in r.metrics for r in results):
        rows += _panorama_rows(results, fmt)
    if any("world" in r.metrics for r in results):
        for bucket in BUCKETS:
            for key in ("restoration_error", "permanence"):
                rows.append(
                    (
                        f"world: {key} ({bucket})",
                        [
                            fmt(r.metrics["world"]["restoration"]["buckets"][bucket][key])
                            if "world" in r.metrics
                            else "–"
                            for r in results
                        ],
                    )
                )
        for label, get in (
            ("world: permanence (all)", lambda w: w["permanence"]),
            ("world: drift mean", lambda w: w["drift"]["mean"]),
            ("world: drift increase (last 5 s - first 5 s)", lambda w: w["drift"]["increase"]),
            ("world: sprite moving fraction", lambda w: w["dynamics"]["moving_fraction"]),
            ("world: sprite speed ratio", lambda w: w["dynamics"]["speed_ratio"]),
            ("world: palette fidelity", lambda w: w["fidelity"]["palette"]),
            ("world: shape validity", lambda w: w["fidelity"]["shape_validity"]),
        ):
            rows.append((label, [fmt(get(r.metrics["world"])) if "world" in r.metrics else "–" for r in results]))
    return rows


def _panorama_rows(results: list[VideoResult], fmt) -> list[tuple[str, list[str]]]:
    from contextforcing.data.world.panorama.geometry import BUCKETS
    from contextforcing.eval.memory_score import CAUSES
    from contextforcing.eval.panorama_metrics import HEADLINE

    def cells(get):
        return [fmt(get(r.metrics["panorama"])) if "panorama" in r.metrics else "–" for r in results]

    rows = [
        (
            f"panorama: {label} ({'higher' if higher else 'lower'} is better)",
            cells(lambda m, key=key: m["headline"][key]),
        )
        for key, label, higher in HEADLINE
    ]
    rows += [(f"panorama: memory score, cause {c}", cells(lambda m, c=c: m["memory"]["causes"][c])) for c in CAUSES]
    for b in BUCKETS:
        rows.append(
            (
                f"panorama: revisits made ({b})",
                cells(lambda m, b=b: f"{m['revisit_buckets'][b]['made']} of {m['revisit_buckets'][b]['revisits']}"),
            )
        )
        for key, label in (
            ("error", "revisit error"),
            ("permanence", "object permanence"),
            ("psnr", "PSNR (dB)"),
            ("ssim", "SSIM"),
        ):
            rows.append(
                (f"panorama: {label} ({b}, made revisits)", cells(lambda m, b=b, key=key: m["revisit_buckets"][b][key]))
            )
    rows.append(
        (
            "panorama: objects per view (truth)",
            cells(lambda m: f"{fmt(m['views']['objects_per_view'])} ({fmt(m['views']['truth_objects_per_view'])})"),
        )
    )
    rows.append(
        ("panorama: drift of palette fidelity (last 15% - first 15%)", cells(lambda m: m["views"]["palette_drift"]))
    )
    rows.append(
        ("panorama: drift of objects per view (last 15% - first 15%)", cells(lambda m: m["views"]["objects_drift"]))
    )
    rows.append(("panorama: camera step error (px per latent frame)", cells(lambda m: m["camera"]["error_px"])))
    rows.append(("panorama: palette fidelity", cells(lambda m: m["palette"])))
    return rows


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_html(
    out_dir: Path, results: list[VideoResult], images: list[tuple[str, str]], extractor_notes: list[str]
) -> None:
    esc = html.escape
    head = "".join(f"<th>{esc(r.name)}</th>" for r in results)
    body = "".join(
        f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{esc(v)}</td>" for v in vals) + "</tr>"
        for label, vals in _summary_rows(results)
    )
    figures = "".join(
        f"<figure><img src='{_embed(out_dir / name)}' alt='{esc(name)}'><figcaption>{esc(caption)}</figcaption></figure>"
        for name, caption in images
    )
    notes = "".join(f"<li>{esc(n)}</li>" for n in extractor_notes)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>contextforcing eval report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%;image-rendering:pixelated}}figure{{margin:1.5em 0}}</style></head><body>
<h1>Evaluation report</h1><p>Videos: {", ".join(esc(r.path) for r in results)}</p>
<h2>Feature extractors</h2><ul>{notes}</ul>
<h2>Metrics</h2><table><tr><th>metric</th>{head}</tr>{body}</table>
<h2>Plots</h2>{figures}</body></html>"""
    tmp = out_dir / ".report.partial.html"
    tmp.write_text(page)
    os.replace(tmp, out_dir / "report.html")


def revisit_strips(results: list[VideoResult], track, out_dir: Path, prefix: str = "") -> list[tuple[str, str]]:
    """Panorama world: one image per long revisit (the longest few), a row per video, frames [last seen,
    back]; the revisited unit is boxed in each."""
    from contextforcing.data.world.panorama.geometry import CELL
    from contextforcing.data.world.panorama.render import render
    from contextforcing.data.world.panorama.revisits import track_revisits

    truth = render(track)
    chosen, seen = [], set()
    for r in sorted(track_revisits(track), key=lambda r: -r.gap):  # one strip per return, its longest unit
        if r.back_latent not in seen and len(chosen) < MAX_STRIPS:
            chosen.append(r)
            seen.add(r.back_latent)
    strips = []
    for r in sorted(chosen, key=lambda r: r.back_latent):
        rows = [
            [_boxed(v[r.frame_before], r.x_before, CELL), _boxed(v[r.frame_after], r.x_after, CELL)]
            for v in [truth] + [res.frames for res in results]
        ]
        name = f"strip_{prefix}revisit_{r.back_latent:05d}_unit{r.unit:02d}.png"
        _save_image(_grid(rows), out_dir / name)
        strips.append(
            (
                name,
                f"revisit ({r.cause}) after {r.delay_seconds:g} s ({r.bucket}) at "
                f"{r.frame_after / results[0].fps:.1f} s. Columns: last frame that showed the boxed part, "
                f"the frame it is back. Rows: ground truth, " + ", ".join(x.name for x in results),
            )
        )
    return strips


def _boxed(frame: np.ndarray, x: int, width: int) -> np.ndarray:
    """Upscaled frame with a white box around columns x .. x + width."""
    big = _upscale(frame).copy()
    s = STRIP_SCALE
    big[:, x * s : x * s + 1] = 255
    big[:, (x + width) * s - 1 : (x + width) * s] = 255
    big[:1, x * s : (x + width) * s] = 255
    big[-1:, x * s : (x + width) * s] = 255
    return big


def _world_strips(results: list[VideoResult], track, out_dir: Path, prefix: str = "") -> list[tuple[str, str]]:
    from contextforcing.data.world.panorama.simulate import PanoramaTrack

    strip = revisit_strips if isinstance(track, PanoramaTrack) else occlusion_strips
    return strip(results, track, out_dir, prefix=prefix)


def _world_key(track) -> tuple | None:
    """What a world video is a function of (equal keys: the same ground truth)."""
    if track is None:
        return None
    if hasattr(track, "spec") and hasattr(track.spec, "script"):  # panorama
        return ("panorama", track.spec.script.to_jsonl(), track.seed, track.n_frames)
    return ("occlusion", track.prompt.canonical, track.seed, track.n_frames)


def _strips(results: list[VideoResult], tracks: list, out_dir: Path) -> list[tuple[str, str]]:
    """Side by side when all videos share one world; otherwise strips per video."""
    if all(t is None for t in tracks):
        return [timeline_strip(results, out_dir)]
    if len({_world_key(t) for t in tracks}) == 1:
        return _world_strips(results, tracks[0], out_dir)
    strips = []
    for i, (r, t) in enumerate(zip(results, tracks)):
        if t is not None:
            strips += _world_strips([r], t, out_dir, prefix=f"video{i}_")
    return strips


def write_report(
    out_dir: str | os.PathLike,
    results: list[VideoResult],
    extractor_notes: list[str],
    tracks: list[WorldTrack | None] | None = None,
) -> dict:
    out_dir = Path(out_dir)
    metrics = {
        "videos": {r.name: r.metrics for r in results},
        "aggregate_frame_weighted_consistency": aggregate(results),
        "extractors": extractor_notes,
    }
    write_json_atomic(out_dir / "metrics.json", _jsonable(metrics))
    images = []
    for name, caption, plot in (
        (
            "first_frame_similarity.png",
            "cosine similarity to the first frame per second (dots: Context Forcing's windows at 10, 20, ... s)",
            plot_first_frame,
        ),
        ("restoration_buckets.png", "restoration error and object permanence by occlusion length", plot_buckets),
        ("world_curves.png", "world metrics over time", plot_world_curves),
        ("panorama.png", "panorama world: camera, revisits, balls", plot_panorama),
    ):
        if plot(results, out_dir / name):
            images.append((name, caption))
    images += _strips(results, tracks or [None] * len(results), out_dir)
    write_html(out_dir, results, images, extractor_notes)
    return metrics


def _jsonable(obj):
    """NaN -> None so metrics.json is strict JSON; numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
