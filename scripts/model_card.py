"""The embedded model's card (contextforcing/assets/MODEL_CARD.md), written by scripts/train_toy_model.py from what
that run measured: the recipe's stages, times and gates (ROOT/recipe.json), the shipped model on the held-out
panorama worlds with its trained memory and with a 3 s rolling window (through the Python API), and its speed
(`contextforcing bench`, the embedded model: no model flags).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ROLLING = {"policy": "rolling", "window": 12}  # a 3 s window (Self-Forcing's local attention)
MEMORIES = {"trained memory": None, "slow tier emptied": {"slow": 0}, "rolling window 3 s": ROLLING}
BENCH_SECONDS = 90.0
BUCKETS = ("fast", "slow", "beyond")
# What the frames look like, written by hand after looking at `make demo`'s contact sheets of the shipped model
# (docs/demo): a claim no number makes, so it is rewritten whenever the model is retrained.
LOOKS = (
    "- What its frames look like (`make demo`, seed 7, docs/demo, looked at): blurred shapes on the right wall "
    "stripes, in the wrong palette (cyan, blue and green where the truth has red, yellow, black, white and magenta "
    "shapes), with more objects per view than the truth. Lights and pans follow the script. After the tour's 24 s "
    "blackout the trained memory brings back the arrangement of the view it left, where the rolling window draws a "
    "different room; neither sets the balls moving, and in the tour's last held minute both keep one still frame "
    "while the truth's ball bounces."
)


def bench(threads: int) -> dict:
    """`contextforcing bench` of the embedded model (CLI, JSON), decode included."""
    cmd = [
        sys.executable,
        "-m",
        "contextforcing.cli",
        "bench",
        "--seconds",
        f"{BENCH_SECONDS:g}",
        "--decode",
        "--json",
        "--device",
        "cpu",
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True).stdout
    return json.loads(out)


def evaluate(root: Path, count: int) -> dict:
    """The shipped model on the first `count` held-out worlds (90 s): its trained memory, the slow tier emptied and
    a 3 s rolling window; every revisit of the script kept with its memory and the truth's."""
    from contextforcing.data.world.panorama import heldout_worlds
    from contextforcing.eval.panorama_runs import generate, score, world_pipeline

    pipe = world_pipeline()
    rows = {label: [] for label in MEMORIES}
    for spec in heldout_worlds(count):
        for label, memory in MEMORIES.items():
            began = time.perf_counter()
            video = generate(pipe, spec, memory=memory)
            wall = time.perf_counter() - began
            scores = score(video, spec)
            revisits = [{k: r[k] for k in ("bucket", "cause", "memory", "truth_memory")} for r in scores.revisits]
            views = scores.views
            rows[label].append(
                {
                    "seed": spec.seed,
                    "wall_seconds": wall,
                    "headline": scores.headline(),
                    "revisits": revisits,
                    "objects": [views.objects_per_view, views.truth_objects_per_view],
                }
            )
            print(f"[toy-model] eval {label}, world seed {spec.seed}: {wall:.1f} s, {scores.headline()}", flush=True)
    summary = {
        "worlds": count,
        "seconds": heldout_worlds(1)[0].seconds,
        "rows": rows,
        "threads": torch.get_num_threads(),
        "bench": {str(t): bench(t) for t in (1, 2)},
    }
    (root / "eval.json").write_text(json.dumps(summary, indent=1))
    return summary


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def pooled(worlds: list[dict], keep=lambda r: True) -> float | None:
    """memory_score pooled over worlds: the video's revisit scores over the truth's, on the chosen revisits."""
    from contextforcing.eval.memory_score import pooled_memory_score

    return pooled_memory_score(r for w in worlds for r in w["revisits"] if keep(r))


def held_out_rows(rows: dict) -> list[str]:
    header = (
        "| memory | memory score, all / fast / slow / beyond | camera came back, beyond the fast memory | "
        "camera pans / holds | movers | lighting | objects per view (truth) | s per video |"
    )
    lines = [header, "|---" * 8 + "|"]
    for label, worlds in rows.items():
        memory = [pooled(worlds)] + [pooled(worlds, lambda r, b=b: r["bucket"] == b) for b in BUCKETS]
        pan = pooled(worlds, lambda r: r["bucket"] != "fast" and r["cause"] == "pan")

        def head(key):
            return _fmt(_mean([w["headline"][key] for w in worlds]), 2)

        objects = [_mean([w["objects"][i] for w in worlds]) for i in (0, 1)]
        lines.append(
            f"| {label} | {' / '.join(_fmt(v, 2) for v in memory)} | {_fmt(pan, 2)} | {head('camera_pans')} / "
            f"{head('camera_holds')} | {head('movers')} | {head('lighting')} | {_fmt(objects[0], 1)} "
            f"({_fmt(objects[1], 1)}) | {np.median([w['wall_seconds'] for w in worlds]):.1f} |"
        )
    return lines


def _fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def _bench_line(threads: str, b: dict) -> str:
    """One row: median time per chunk and the video's seconds over the whole stream's wall time."""
    chunk_seconds = 3 / 4  # a chunk is 3 latent frames; Wan counts 4 latent frames per second
    video = b["latent_frames"] / 4
    return (
        f"| {threads} | {video:g} s in {b['wall_s']:.1f} s ({video / b['wall_s']:.1f}x real time) | "
        f"{b['median_chunk_s'] * 1000:.1f} ms ({chunk_seconds / b['median_chunk_s']:.1f}x) |"
    )


def write(path: Path, record: dict, config: dict, summary: dict | None) -> None:
    from contextforcing.io.outputs import write_text_atomic

    stages, gates = record["stages"], record.get("gates", {})
    total = sum(e["seconds"] for e in stages.values())
    o = config["memory"]["options"]
    lines = [
        "# Embedded default model: `world` student (Context Forcing, toy scale, panorama world)",
        "",
        "The model `contextforcing generate` and `cf.Pipeline.from_pretrained()` use when no model is named. Generated by "
        "`scripts/train_toy_model.py` (`make toy-model`); every number below was measured by that run.",
        "",
        "## What it is",
        "",
        f"- Causal Wan2.1-style DiT, preset `{config['preset']}`: dim {config['model']['dim']}, "
        f"{config['model']['num_layers']} layers, {config['model']['num_heads']} heads, ffn {config['model']['ffn_dim']}, "
        f"patch {tuple(config['model']['patch_size'])} on an 8x8 latent grid (16 tokens per latent frame), "
        f"{config['weights']['bytes'] / 1e6:.1f} MB ({config['weights']['stored_dtype']}).",
        "- Weights: the EMA generator of Stage 2 (Contextual DMD). Text: the built-in hashed encoder "
        f"(`HashTextEncoder`, {config['model']['text_dim']}-d, {config['model']['text_len']} tokens). Codec: "
        f"`{config['codec']}` (the panorama world's learned codec, sha256 {config['codec_sha256'][:12]}...).",
        f"- Prompts: the panorama grammar (docs/world.md), e.g. `{config['example_prompt']}`; a script switches them "
        "on chunk boundaries (`generate --prompts`, `pipe.stream(..., switches=...)`).",
        f"- Memory it was trained with and uses by default: `{config['memory']['policy']}` sink {o['sink']}, slow {o['slow']}, "
        f"fast {o['fast']} (capacity {o['sink'] + o['slow'] + o['fast']} latent frames, bounded positions); promotion by "
        f"surprisal, tau {o['tau']}, checked every {o['interval']} chunks, against the last checked chunk "
        f"(`compare={o['compare']}`), on the first block's keys (`key_layers={o['key_layers']}`), keeping the chunk's "
        f"{o['keep']} latent frame (`keep={o['keep']}`).",
        f"- Sampling: 4 steps {list(config['sampling']['denoising_steps'])}, shift {config['sampling']['shift']}, then one "
        "clean commit pass per chunk of 3 latent frames.",
        *(
            [
                f"- Width positions anchored to the room (`rope_width=room`, {config['model']['room_tokens']} tokens "
                "around): each token sits at its column plus the camera's heading, which the model reads from the "
                "prompts' camera actions (`camera: panorama`), so a wall keeps its position after a pan; the temporal "
                "positions stay bounded."
            ]
            if config["model"].get("rope_width") == "room"
            else []
        ),
        "",
        "## Data",
        "",
        "The scripted panorama world (docs/world.md): random training scripts and world seeds (`training_world`, seeds "
        "below the held-out range; the held-out scripts and seeds are never used in training), 64x64 frames at 16 fps, "
        "encoded with the panorama codec. The teacher reads a pool of 400 clips of 90 s whose latents are cached; ODE "
        "pairs, Stage 1 and Stage 2 read training scripts only (their own random streams).",
        "",
        "## Recipe and cost",
        "",
        f"Measured on this machine: {os.cpu_count()} CPU cores (shared with other work), torch {torch.__version__}, "
        f"{record.get('threads', '?')} torch thread(s). Total training wall time {total / 60:.1f} min (summed over every "
        "run of every stage, pair generation and exports included; gates not included).",
        "",
        "| stage | what | init | steps | wall time | first / final losses (mean of the first 20 / last 50 steps per group) |",
        "|---|---|---|---|---|---|",
    ]
    what = {
        "teacher": (
            "context teacher: one-chunk targets in the student's memory layout, text dropout 10%, "
            "error recycling, lr warm-up + cosine",
            "random",
        ),
        "ode": ("ODE pairs (16 Euler steps, CFG 3) + teacher-forced regression", "teacher export"),
        "dmd": ("Stage 1 DMD, 12-frame rollouts, CFG 3", "ode export; real score + critic: teacher"),
        "cdmd": ("Stage 2 Contextual DMD, 24-72-frame rollouts, CFG 3", "dmd export; real score + critic: teacher"),
    }
    for s in ("teacher", "ode", "dmd", "cdmd"):
        e = stages.get(s, {})
        first, final = e.get("first_losses") or {}, e.get("final_losses") or {}
        losses = ", ".join(f"{g} {first.get(g, float('nan')):.4g} / {v:.4g}" for g, v in final.items()) or "n/a"
        lines.append(
            f"| {s} | {what[s][0]} | {what[s][1]} | {e.get('steps', 'n/a')} / {e.get('max_steps', 'n/a')} | "
            f"{e.get('seconds', 0) / 60:.1f} min | {losses} |"
        )
    lines += [
        "",
        "Configs: `configs/toy/{teacher,ode,dmd,cdmd}.yaml` (the chaining overrides are in "
        "`scripts/train_toy_model.py`). The DMD losses are surrogate losses whose value is not a quality "
        "measure; the critic loss is flow matching on the student's own samples.",
        "",
        "## Gates",
        "",
        "Each stage was checked on held-out scripts before the next ran (`scripts/gates.py`):",
        "",
    ]
    for s in ("teacher", "ode", "dmd", "cdmd"):
        g = gates.get(s)
        lines.append(
            f"- after {s}: " + ("not run" if g is None else f"{'passed' if g['passed'] else 'FAILED'}: {g['line']}")
        )
    lines.append("")
    if summary:
        rows = summary["rows"]
        lines += [
            "## Measured on held-out worlds",
            "",
            f"The first {summary['worlds']} held-out worlds (`contextforcing world heldout --world panorama`), "
            f"{summary['seconds']:g} s each, generated from their scripts alone (no frames given) on CPU "
            f"({summary['threads']} torch thread), seed = world seed; metrics `eval.panorama_metrics` "
            "(docs/evaluation.md). Memory scores are pooled over the worlds (1: the ground truth through the codec; "
            "the forgetting oracle scores about 0, every cheater of docs/evaluation.md at most a few hundredths); the "
            "other numbers are means over worlds.",
            "",
            *held_out_rows(rows),
        ]
        lines += [
            "",
            "docs/results.md compares every memory policy and the ablations on the same worlds.",
            "",
            "## Speed",
            "",
            f"`contextforcing bench --seconds {BENCH_SECONDS:g} --decode --threads N` (no model flags: this model, its "
            "trained memory; the codec's decode included), on the shared 2-core machine:",
            "",
            "| torch threads | whole stream | median time per chunk (0.75 s of video) |",
            "|---|---|---|",
        ]
        lines += [_bench_line(t, b) for t, b in summary["bench"].items()]
        lines.append("")
    lines += [
        "## Limits",
        "",
        f"- Toy scale: {total / 3600:.1f} hours of CPU training on a synthetic world; it knows that world only as well as the "
        "numbers above say, and nothing else.",
        LOOKS,
        "",
    ]
    write_text_atomic(path, "\n".join(lines))
    print(f"[toy-model] wrote {path}", flush=True)
