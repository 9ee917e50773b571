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

from contextforcing.data.world.track import BUCKETS, FAST_MEMORY_SECONDS, WorldTrack
from contextforcing.eval.evaluate import VideoResult, aggregate
from contextforcing.eval.report_plots import (
    plot_buckets,
    plot_first_frame,
    plot_panorama,
    plot_world_curves,
)
from contextforcing.io.outputs import write_atomic
from contextforcing.io.video import write_json_atomic
from contextforcing.runtime.extras import require

MAX_STRIPS = 6  # strips for the longest occlusions only
STRIP_SCALE = 3  # nearest-neighbour upscaling of 64-px frames in strips


def _save_image(image: np.ndarray, path: Path) -> None:
    require("matplotlib", "eval", "evaluation plots")
    import matplotlib.image

    write_atomic(path, lambda tmp: matplotlib.image.imsave(tmp, image))


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
    for n in sorted({n for r in results for n in r.metrics["features"]}):
        rows += _feature_rows(results, n, fmt)
    if any("panorama" in r.metrics for r in results):
        rows += _panorama_rows(results, fmt)
    if any("world" in r.metrics for r in results):
        rows += _world_rows(results, fmt)
    return rows


def _feature_rows(results: list[VideoResult], n: str, fmt) -> list[tuple[str, list[str]]]:
    """One feature extractor's consistency rows, one column per video."""
    tag = " [proxy]" if any(r.metrics["features"].get(n, {}).get("proxy") for r in results) else ""
    features = [r.metrics["features"].get(n, {}) for r in results]
    rows = [
        (f"{n}: VBench consistency{tag}", [fmt(f.get("vbench_consistency")) for f in features]),
        (f"{n}: clip-to-clip{tag}", [fmt(f.get("clip_to_clip")) for f in features]),
    ]
    times = sorted({t for f in features for t in f.get("first_frame_similarity", {})}, key=float)
    for t in times:
        rows.append(
            (
                f"{n}: first-frame similarity @ {t} s{tag}",
                [fmt(f.get("first_frame_similarity", {}).get(t)) for f in features],
            )
        )
    return rows


def _world_rows(results: list[VideoResult], fmt) -> list[tuple[str, list[str]]]:
    """The occlusion world's restoration, permanence, drift, dynamics and fidelity rows."""
    rows = []
    for bucket in BUCKETS:
        for key in ("restoration_error", "permanence"):
            rows.append(
                (
                    f"world: {key} ({bucket})",
                    [
                        fmt(r.metrics["world"]["restoration"]["buckets"][bucket][key]) if "world" in r.metrics else "–"
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
