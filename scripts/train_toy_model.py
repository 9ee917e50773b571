"""Train the embedded default model: the whole Context Forcing recipe at toy scale, then ship it.

    python scripts/train_toy_model.py            # what `make toy-model` runs

Stages, in order, each in its own run directory under ROOT (default runs/toy), each initialised from the
previous ones' exports (ROOT/exports/STAGE.safetensors, EMA weights where the stage keeps an EMA):

    teacher  context teacher with error recycling (configs/toy/teacher.yaml)
    ode      ODE pairs from the teacher, regression of the causal student (student and teacher: teacher export)
    dmd      Stage 1 DMD (generator: ode export; real score and critic: teacher export)
    cdmd     Stage 2 Contextual DMD (generator: dmd export; real score and critic: teacher export)

Rerunning resumes: a stage whose latest checkpoint has reached max_steps is skipped (its export is reused
or rewritten), an unfinished one resumes from its last checkpoint. ROOT/recipe.json keeps per stage the
wall time (summed over every run that trained it), steps and the final losses. At the end the cdmd EMA
export is copied to contextforcing/assets/world_student.safetensors with world_student.json (preset,
shapes, memory defaults, codec, recipe), the student is evaluated on held-out worlds, and
contextforcing/assets/MODEL_CARD.md is written from those measurements.

Smoke test (minutes): --root /tmp/toy --scale 0.01 --codec preview --no-ship
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from contextforcing.errors import UserError  # noqa: E402

STAGES = ("teacher", "ode", "dmd", "cdmd")
ASSETS = REPO / "contextforcing" / "assets"
MAX_BYTES = 20 * 1000 * 1000  # the shipped weights' budget: small enough to ship in the package
MEMORY_KEYS = ("sink", "slow", "fast", "rule", "tau", "interval")


def chain(stage: str, exports: Path) -> list[str]:
    """Overrides that initialise `stage` from the earlier stages' exports."""
    teacher = exports / "teacher.safetensors"
    return {
        "teacher": [],
        "ode": [f"stage.init={teacher}", f"stage.teacher_init={teacher}"],
        "dmd": [f"stage.init={exports / 'ode.safetensors'}", f"stage.real_init={teacher}"],
        "cdmd": [f"stage.init={exports / 'dmd.safetensors'}", f"stage.real_init={teacher}"],
    }[stage]


def stage_overrides(stage: str, args, root: Path) -> list[str]:
    out = [f"trainer.run_dir={root / stage}", *chain(stage, root / "exports")]
    if stage == "ode":
        out.append(f"stage.pairs_dir={root / 'ode_pairs'}")
    if stage == "teacher":
        out += [f"stage.data.codec={args.codec}", f"stage.data.cache_dir={root / 'world_cache'}"]
    out += [item.split(":", 1)[1] for item in args.set if item.split(":", 1)[0] == stage]
    return out


def scaled(cfg, scale: float):
    """Scale the step counts (smoke tests); checkpoints and EMA start scale with them."""
    if scale == 1.0:
        return cfg
    t = cfg.trainer
    t.max_steps = max(2, int(round(t.max_steps * scale)))
    t.checkpoint_every = max(1, int(round(t.checkpoint_every * scale))) if t.checkpoint_every else 0
    t.ema_start = int(t.ema_start * scale)
    t.log_every = max(1, min(t.log_every, t.max_steps))
    return cfg


def latest_step(run_dir: Path, stage: str) -> int:
    from contextforcing.training.checkpoint import CheckpointManager, read_meta

    latest = CheckpointManager(run_dir, stage).latest() if run_dir.is_dir() else None
    return int(read_meta(latest)["step"]) if latest is not None else 0


def load_record(root: Path) -> dict:
    path = root / "recipe.json"
    return json.loads(path.read_text()) if path.is_file() else {"stages": {}}


def save_record(root: Path, record: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "recipe.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(root / "recipe.json")


def final_losses(losses: list[dict[str, float]], last: int = 50) -> dict[str, float]:
    """Mean of each group's loss over the last `last` steps that updated it."""
    out = {}
    for group in sorted({g for row in losses for g in row}):
        values = [row[group] for row in losses if group in row][-last:]
        out[group] = sum(values) / len(values)
    return out


PAIRS_SOURCE = "source.json"  # which teacher export the pairs in a pairs directory were sampled from


def check_pairs(cfg, root: Path, record: dict) -> None:
    """ODE pairs must come from this recipe's teacher export with this config's shapes: pairs left in the
    directory by another run (another teacher, another frame count) are removed, with an ODE run trained on them."""
    pairs, teacher = Path(cfg.stage.pairs_dir), root / "exports" / "teacher.safetensors"
    source = {"teacher_sha256": _sha256(teacher), "num_frames": cfg.stage.num_frames, "num_pairs": cfg.stage.num_pairs}
    marker = pairs / PAIRS_SOURCE
    if (pairs / "manifest.json").is_file() and marker.is_file() and json.loads(marker.read_text()) == source:
        return
    if (pairs / "manifest.json").is_file() or cfg.run_dir.is_dir():
        print(f"[toy-model] ode: pairs in {pairs} are not from this teacher export; regenerating them and "
              f"restarting the ode run", flush=True)
        shutil.rmtree(pairs, ignore_errors=True)
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        (root / "exports" / "ode.safetensors").unlink(missing_ok=True)
        record["stages"].pop("ode", None)
    pairs.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(source))


def run_stage(stage: str, args, root: Path, record: dict) -> None:
    from contextforcing.training import distributed as dist
    from contextforcing.training.checkpoint import export
    from contextforcing.training.config import load_train_config
    from contextforcing.training.trainer import run_training

    cfg = scaled(load_train_config(stage, args.configs / f"{stage}.yaml", stage_overrides(stage, args, root)), args.scale)
    if stage == "ode":
        check_pairs(cfg, root, record)
    entry = record["stages"].setdefault(stage, {"seconds": 0.0, "runs": 0})
    out = root / "exports" / f"{stage}.safetensors"
    done = latest_step(cfg.run_dir, stage)
    if done >= cfg.trainer.max_steps and out.is_file():
        print(f"[toy-model] {stage}: complete ({done}/{cfg.trainer.max_steps} steps), skipped", flush=True)
        return
    print(f"[toy-model] {stage}: {'resuming at step ' + str(done) if done else 'starting'}, "
          f"{cfg.trainer.max_steps} steps, run directory {cfg.run_dir}", flush=True)
    began = time.perf_counter()
    result = None
    try:
        result = run_training(cfg)
    finally:
        dist.destroy()
        entry["seconds"] += time.perf_counter() - began
        entry["runs"] += 1
        entry["steps"] = latest_step(cfg.run_dir, stage)
        entry["max_steps"] = cfg.trainer.max_steps
        if result is not None and result.losses:
            entry["final_losses"] = final_losses(result.losses)
            entry["first_losses"] = entry.get("first_losses") or final_losses(result.losses[:20], 20)
            entry["steps_per_second"] = result.steps_per_second
        entry["overrides"] = stage_overrides(stage, args, root)
        save_record(root, record)
    path, which = export(cfg.run_dir, out)
    entry["export"] = str(path)
    entry["exported"] = which
    save_record(root, record)
    print(f"[toy-model] {stage}: {entry['seconds'] / 60:.1f} min, final losses {entry.get('final_losses')}; "
          f"exported {which} to {path}", flush=True)


# -- ship ------------------------------------------------------------------------------------------------------
def ship(args, root: Path, record: dict) -> dict:
    from safetensors.torch import load_file, save_file

    from contextforcing.config import get_preset, to_dict
    from contextforcing.training.config import load_train_config
    from contextforcing.training.stages.data import world_codec_file

    cdmd = load_train_config("cdmd", args.configs / "cdmd.yaml", stage_overrides("cdmd", args, root))
    preset_name = cdmd.stage.model
    preset = get_preset(preset_name)
    state = load_file(str(root / "exports" / "cdmd.safetensors"))
    stored = "float32"
    if sum(t.numel() * 4 for t in state.values()) > MAX_BYTES:
        state, stored = {k: v.to(torch.float16) for k, v in state.items()}, "float16"
    ASSETS.mkdir(parents=True, exist_ok=True)
    weights = ASSETS / "world_student.safetensors"
    tmp = weights.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt", "stored": stored})
    tmp.replace(weights)
    os.chmod(weights, 0o644)
    memory = dict(cdmd.stage.memory)
    policy = memory.pop("policy", "slow_fast")
    config = {
        "format": "contextforcing.embedded/1",
        "preset": preset_name,
        "model": to_dict(preset.model),
        "video": to_dict(preset.video),
        "memory": {"policy": policy, "options": {k: v for k, v in memory.items() if k in MEMORY_KEYS}},
        "codec": args.codec,
        "codec_sha256": _sha256(world_codec_file()) if args.codec == "world" else None,
        "text_encoder": {"kind": "hash", "text_dim": preset.model.text_dim, "text_len": preset.model.text_len},
        "sampling": to_dict(cdmd.stage.sampling),
        "prompt_grammar": "world",  # the prompts it was trained on: contextforcing/data/world/prompts.py
        "example_prompt": "striped cool room, curtain occlusions, circle sprite",
        "weights": {"file": weights.name, "stored_dtype": stored, "bytes": weights.stat().st_size,
                    "what": "EMA generator of Stage 2 Contextual DMD"},
        "recipe": {s: {k: v for k, v in e.items() if k in ("steps", "seconds", "final_losses")}
                   for s, e in record["stages"].items()},
    }
    (ASSETS / "world_student.json").write_text(json.dumps(config, indent=1) + "\n")
    print(f"[toy-model] shipped {weights} ({weights.stat().st_size / 1e6:.2f} MB, {stored}) and world_student.json",
          flush=True)
    return config


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def evaluate(args, root: Path) -> dict:
    """Generate held-out worlds with the shipped student (slow_fast memory, CPU) and score them."""
    import numpy as np

    from contextforcing.data.world.heldout import eval_worlds
    from contextforcing.data.world.render import render
    from contextforcing.data.world.track import simulate
    from contextforcing.eval.evaluate import load_frames
    from contextforcing.eval.world_metrics import world_metrics
    from contextforcing.generation import GenerationRequest, run_generation
    from contextforcing.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(device="cpu")
    out_dir = root / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    worlds = eval_worlds()[:: max(1, len(eval_worlds()) // args.eval_worlds)][: args.eval_worlds]
    for i, spec in enumerate(worlds):
        video = out_dir / f"heldout{i}.mp4"
        req = GenerationRequest(prompt=spec.prompt, seconds=spec.seconds, out=str(video), preset=pipeline.preset_name,
                                seed=spec.seed, device="cpu")
        began = time.perf_counter()
        sidecar = run_generation(req, pipeline, progress=False)
        wall = time.perf_counter() - began
        frames, _ = load_frames(str(video))
        track = simulate(spec)
        metrics = world_metrics(frames, track, video.name)
        truth = world_metrics(render(track), track, "ground truth")
        rows.append({"prompt": spec.prompt, "seed": spec.seed, "seconds": spec.seconds, "wall_seconds": wall,
                     "chunk_seconds_median": float(np.median(sidecar["chunk_seconds"])), "metrics": _headline(metrics),
                     "ground_truth": _headline(truth)})
        print(f"[toy-model] eval {i}: {spec.prompt!r} seed {spec.seed}: {wall:.1f} s wall, {rows[-1]['metrics']}",
              flush=True)
    summary = {"worlds": rows, "threads": torch.get_num_threads()}
    (root / "eval.json").write_text(json.dumps(summary, indent=1))
    return summary


def _num(v):
    return None if v is None else float(v)


def _headline(m: dict) -> dict:
    buckets = m["restoration"]["buckets"]
    return {"palette": _num(m["fidelity"]["palette"]), "shape_validity": _num(m["fidelity"]["shape_validity"]),
            "drift_mean": _num(m["drift"].get("mean")), "moving_fraction": _num(m["dynamics"].get("moving_fraction")),
            "speed_ratio": _num(m["dynamics"].get("speed_ratio")), "permanence": _num(m["permanence"]),
            "restoration_error": {b: _num(v.get("restoration_error")) for b, v in buckets.items()}}


def _median(values):
    values = sorted(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v)))
    return values[len(values) // 2] if values else None


def _fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def write_card(args, root: Path, record: dict, config: dict, summary: dict | None) -> None:
    stages = record["stages"]
    total = sum(e["seconds"] for e in stages.values())
    lines = [
        "# Embedded default model: `world` student (Context Forcing, toy scale)",
        "",
        "The model `contextforcing generate` uses when no model flags are given. Generated by "
        "`scripts/train_toy_model.py` (`make toy-model`); every number below was measured by that run.",
        "",
        "## What it is",
        "",
        f"- Causal Wan2.1-style DiT, preset `{config['preset']}`: dim {config['model']['dim']}, "
        f"{config['model']['num_layers']} layers, {config['model']['num_heads']} heads, ffn {config['model']['ffn_dim']}, "
        f"patch {tuple(config['model']['patch_size'])} on an 8x8 latent grid (16 tokens per latent frame), "
        f"{config['weights']['bytes'] / 1e6:.1f} MB ({config['weights']['stored_dtype']}).",
        f"- Weights: the EMA generator of Stage 2 (Contextual DMD). Text: the built-in hashed encoder "
        f"(`HashTextEncoder`, {config['model']['text_dim']}-d, {config['model']['text_len']} tokens). "
        f"Codec: `{config['codec']}` ({'the learned world codec, contextforcing/assets/world_codec.safetensors' if config['codec'] == 'world' else 'the weight-free preview codec: channels 0-2 are RGB means of 8x8 cells'}).",
        f"- Memory it was trained with and uses by default: `{config['memory']['policy']}` "
        + ", ".join(f"{k}={v}" for k, v in config["memory"]["options"].items()) + " (bounded positions).",
        f"- Sampling: 4 steps {list(config['sampling']['denoising_steps'])}, shift {config['sampling']['shift']}, "
        "then one clean commit pass per chunk of 3 latent frames.",
        "",
        "## Data",
        "",
        "The synthetic world (docs/world.md): training prompts from the world grammar, training seeds "
        "(below the held-out seed range), 64x64 frames at 16 fps rendered on the fly and encoded with the codec "
        "above. The teacher draws its clips from a fixed pool of worlds (`data.pool` in configs/toy/teacher.yaml) "
        "whose latents are cached; ODE pairs, DMD and Contextual DMD need prompts only.",
        "",
        "## Recipe and cost",
        "",
        f"Measured on this machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{record.get('threads', '?')} torch threads. Total wall time {total / 60:.1f} min "
        "(summed over every run of every stage, pair generation and exports included).",
        "",
        *([f"Not counted: {sum(e.get('seconds', 0) for e in record['discarded'].values() if isinstance(e, dict)) / 60:.1f} "
           f"min of discarded stage runs ({record['discarded'].get('why', 'see recipe.json')})", ""]
          if record.get("discarded") else []),
        "| stage | what | init | steps | wall time | final losses (mean of the last 50 steps per group) |",
        "|---|---|---|---|---|---|",
    ]
    what = {"teacher": ("context teacher, error recycling", "random"),
            "ode": ("ODE pairs + regression", "teacher export"),
            "dmd": ("Stage 1 DMD", "ode export; real score + critic: teacher"),
            "cdmd": ("Stage 2 Contextual DMD", "dmd export; real score + critic: teacher")}
    for s in STAGES:
        e = stages.get(s, {})
        losses = ", ".join(f"{g} {v:.4g}" for g, v in (e.get("final_losses") or {}).items()) or "–"
        lines.append(f"| {s} | {what[s][0]} | {what[s][1]} | {e.get('steps', '–')} / {e.get('max_steps', '–')} | "
                     f"{e.get('seconds', 0) / 60:.1f} min | {losses} |")
    lines += ["", "Configs: `configs/toy/{teacher,ode,dmd,cdmd}.yaml` (the chaining overrides are in "
              "`scripts/train_toy_model.py`). The DMD losses are surrogate losses whose value is not a quality "
              "measure; the critic loss is flow matching on the student's own samples.", ""]
    if summary:
        rows = summary["worlds"]
        lines += [
            "## Measured on held-out worlds",
            "",
            f"{len(rows)} held-out worlds (`contextforcing world heldout`), {rows[0]['seconds']:g} s each, generated on "
            f"CPU with the default `slow_fast` memory ({summary['threads']} torch threads); metrics from "
            "`contextforcing.eval.world_metrics` against each world's annotations (docs/evaluation.md).",
            "",
            "| prompt | seed | wall s | palette fidelity | shape validity | drift | sprite moving | permanence | restoration error short / mid / long |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            m = r["metrics"]
            rest = " / ".join(_fmt(m["restoration_error"].get(b)) for b in ("short", "mid", "long"))
            lines.append(f"| {r['prompt']} | {r['seed']} | {r['wall_seconds']:.1f} | {_fmt(m['palette'])} | "
                         f"{_fmt(m['shape_validity'], 2)} | {_fmt(m['drift_mean'], 4)} | {_fmt(m['moving_fraction'], 2)} | "
                         f"{_fmt(m['permanence'], 2)} | {rest} |")
        med = {k: _median([r["metrics"][k] for r in rows]) for k in ("palette", "shape_validity", "drift_mean",
                                                                       "moving_fraction", "permanence")}
        lines += ["", "Medians: " + ", ".join(f"{k} {_fmt(v)}" for k, v in med.items()) + ". "
                  f"Median wall time per {rows[0]['seconds']:g} s video: {_median([r['wall_seconds'] for r in rows]):.1f} s.",
                  "",
                  "How to read these: the model is free-running from a text prompt and never sees the world's occlusion "
                  "schedule, so the annotated occlusions do not happen in its video at the annotated times; restoration "
                  "error and permanence then compare frames on either side of times where the generated video may or "
                  "may not be occluded. Palette fidelity, shape validity, drift and sprite motion are meaningful for any "
                  "video of the prompt. The ground truth scores 1.000 palette, 1.00 shape validity and 0.000 restoration "
                  "error on the same worlds (docs/evaluation.md).", ""]
    limits = ["- Toy scale: about half an hour of CPU training; it knows the world only as well as the numbers above say."]
    if summary:
        rows = summary["worlds"]
        moving = _median([r["metrics"]["moving_fraction"] for r in rows])
        if moving is not None and moving < 0.5:
            limits.append(f"- Dynamics: the median fraction of 1 s windows in which the sprite moves is {moving:.2f}: the "
                          "model draws the room and its objects as a still scene and does not animate the sprite.")
        limits.append("- It is not conditioned on an occlusion schedule (text only), so whether it ever occludes or "
                      "changes the scene is up to the model; on held-out prompts the restoration numbers above are "
                      "therefore not a test of memory across occlusions.")
    lines += ["## Limits", "", *limits, ""]
    (ASSETS / "MODEL_CARD.md").write_text("\n".join(lines))
    print(f"[toy-model] wrote {ASSETS / 'MODEL_CARD.md'}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("runs/toy"), help="run directories, exports, recipe.json")
    p.add_argument("--configs", type=Path, default=REPO / "configs" / "toy")
    p.add_argument("--codec", choices=("world", "preview"), default=None,
                   help="codec of the teacher's data (default: world if its weights exist, else preview)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every stage's max_steps (smoke tests)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE:key=value", help="extra override for one stage")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of stages to run (default: all)")
    p.add_argument("--no-ship", action="store_true", help="train only; do not write contextforcing/assets")
    p.add_argument("--eval-worlds", type=int, default=4, help="held-out worlds for the model card (0: none)")
    args = p.parse_args(argv)
    import signal

    def _stop(signum, frame):  # `kill PID` stops like Ctrl-C: the stage's time so far is recorded
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    if args.threads:
        torch.set_num_threads(args.threads)
    from contextforcing.data.world.style import FRAME_SIZE  # noqa: F401  (fail early if the world is missing)
    from contextforcing.training.stages.data import world_codec_file

    record = load_record(args.root)
    if args.codec is None:
        args.codec = record.get("codec") or ("world" if world_codec_file().is_file() else "preview")
    if record.get("codec") not in (None, args.codec):
        raise UserError(f"{args.root} was trained with codec {record['codec']!r}; use another --root for {args.codec!r}")
    if args.codec == "preview":
        print("[toy-model] WARNING: training on the weight-free preview codec (no world codec weights)", flush=True)
    record.update(codec=args.codec, threads=torch.get_num_threads())
    save_record(args.root, record)
    try:
        for stage in [s for s in STAGES if s in args.stages.split(",")]:
            run_stage(stage, args, args.root, record)
        if args.no_ship:
            return 0
        config = ship(args, args.root, record)
        summary = evaluate(args, args.root) if args.eval_worlds else None
        write_card(args, args.root, record, config, summary)
    except UserError as err:
        print(f"train_toy_model: error: {err}", file=sys.stderr)
        return 2
    total = sum(e["seconds"] for e in record["stages"].values())
    print(f"[toy-model] done: total training wall time {total / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
