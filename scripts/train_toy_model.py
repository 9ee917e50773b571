"""Train the embedded default model: the whole Context Forcing recipe at toy scale on the panorama world, gated, then ship it.

    python scripts/train_toy_model.py            # what `make toy-model` runs

Stages, in order, each in its own run directory under ROOT (default runs/toy), each initialised from the
previous ones' exports (ROOT/exports/STAGE.safetensors, EMA weights where the stage keeps an EMA):

    teacher  context teacher with error recycling (configs/toy/teacher.yaml)
    ode      ODE pairs from the teacher, regression of the causal student (student and teacher: teacher export)
    dmd      Stage 1 DMD (generator: ode export; real score and critic: teacher export)
    cdmd     Stage 2 Contextual DMD (generator: dmd export; real score and critic: teacher export)

Gates (`gates.py` beside this script) check on held-out scripts that a stage earned its place before the next
one runs; a failed gate stops the pipeline with one line naming the numbers (exit code 3):

    after teacher  it uses its memory: its flow-matching loss on held-out targets that need memory beyond the
                   fast frames is lower with its memory than with the fast frames alone
    after ode      the student follows the script: camera and lights obeyed above a floor
    after dmd      the teacher beats the Stage 1 student at revisit error beyond the fast memory (else Stage 2
                   would distil a teacher no better than its student)
    after cdmd     Stage 2 beats Stage 1 at revisit error beyond the fast memory, its camera and balls no worse

Rerunning resumes: a stage whose latest checkpoint has reached max_steps is skipped (its export is reused
or rewritten), an unfinished one resumes from its last checkpoint; a gate already passed by the same
export is not measured again. ROOT/recipe.json keeps per stage the wall time (summed over every run that
trained it), steps, the final losses and the gates' numbers. At the end the cdmd EMA export is copied to
contextforcing/assets/world_student.safetensors with world_student.json (preset, shapes, memory, sampling,
codec, prompt grammar, recipe), the student is evaluated on held-out worlds, and
contextforcing/assets/MODEL_CARD.md is written from those measurements.

Smoke test (minutes): --root /tmp/toy --scale 0.01 --no-gates --no-ship
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from contextforcing.errors import UserError  # noqa: E402
from contextforcing.io.outputs import write_atomic, write_json_atomic  # noqa: E402

STAGES = ("teacher", "ode", "dmd", "cdmd")
ASSETS = REPO / "contextforcing" / "assets"
MAX_BYTES = 20 * 1000 * 1000  # the shipped weights' budget: small enough to ship in the package
CODEC = "panorama_codec.safetensors"  # the codec of the training data, in contextforcing/assets
GATE_FAILED = 3  # exit code of a failed gate


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
        out.append(f"stage.data.cache_dir={root / 'panorama_cache'}")
    out += [item.split(":", 1)[1] for item in args.set if item.split(":", 1)[0] == stage]
    return out


def scaled(cfg, scale: float):
    """Scale the step counts (smoke tests); checkpoints, EMA start, warm-up and decay scale with them."""
    if scale == 1.0:
        return cfg
    t = cfg.trainer
    t.max_steps = max(2, int(round(t.max_steps * scale)))
    t.checkpoint_every = max(1, int(round(t.checkpoint_every * scale))) if t.checkpoint_every else 0
    t.ema_start = int(t.ema_start * scale)
    t.log_every = max(1, min(t.log_every, t.max_steps))
    t.lr_warmup = int(t.lr_warmup * scale)
    t.lr_decay_steps = max(1, int(t.lr_decay_steps * scale)) if t.lr_decay_steps else 0
    return cfg


def load_config(stage: str, args, root: Path):
    from contextforcing.training.run_config import load_train_config

    return scaled(
        load_train_config(stage, args.configs / f"{stage}.yaml", stage_overrides(stage, args, root)), args.scale
    )


def latest_step(run_dir: Path, stage: str) -> int:
    from contextforcing.training.checkpoint import CheckpointManager, read_meta

    latest = CheckpointManager(run_dir, stage).latest() if run_dir.is_dir() else None
    return int(read_meta(latest)["step"]) if latest is not None else 0


def load_record(root: Path) -> dict:
    path = root / "recipe.json"
    return json.loads(path.read_text()) if path.is_file() else {"stages": {}, "gates": {}}


def save_record(root: Path, record: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "recipe.json", record)


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
    source = {
        "teacher_sha256": sha256(teacher),
        "num_frames": cfg.stage.num_frames,
        "num_pairs": cfg.stage.num_pairs,
        "memory": cfg.stage.memory,
        "guidance_scale": cfg.stage.guidance_scale,
    }
    marker = pairs / PAIRS_SOURCE
    if (pairs / "manifest.json").is_file() and marker.is_file() and json.loads(marker.read_text()) == source:
        return
    if (pairs / "manifest.json").is_file() or cfg.run_dir.is_dir():
        print(
            f"[toy-model] ode: pairs in {pairs} are not from this teacher export; regenerating them and "
            f"restarting the ode run",
            flush=True,
        )
        shutil.rmtree(pairs, ignore_errors=True)
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        (root / "exports" / "ode.safetensors").unlink(missing_ok=True)
        record["stages"].pop("ode", None)
    pairs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, source)


def run_stage(stage: str, args, root: Path, record: dict) -> None:
    from contextforcing.training import distributed as dist
    from contextforcing.training.export import export
    from contextforcing.training.trainer import run_training

    cfg = load_config(stage, args, root)
    if stage == "ode":
        check_pairs(cfg, root, record)
    entry = record["stages"].setdefault(stage, {"seconds": 0.0, "runs": 0})
    out = root / "exports" / f"{stage}.safetensors"
    done = latest_step(cfg.run_dir, stage)
    if done >= cfg.trainer.max_steps and out.is_file():
        print(f"[toy-model] {stage}: complete ({done}/{cfg.trainer.max_steps} steps), skipped", flush=True)
        return
    print(
        f"[toy-model] {stage}: {'resuming at step ' + str(done) if done else 'starting'}, "
        f"{cfg.trainer.max_steps} steps, run directory {cfg.run_dir}",
        flush=True,
    )
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
    print(
        f"[toy-model] {stage}: {entry['seconds'] / 60:.1f} min, final losses {entry.get('final_losses')}; "
        f"exported {which} to {path}",
        flush=True,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- gates -----------------------------------------------------------------------------------------------------
def run_gate(stage: str, args, root: Path, record: dict) -> None:
    """The gate after `stage` (gates.py); measured once per export (its sha256), recorded in recipe.json."""
    import gates

    exports = root / "exports"
    needed = gates.EXPORTS[stage]
    key = "+".join(sha256(exports / f"{n}.safetensors")[:16] for n in needed)
    entry = record["gates"].get(stage)
    if entry is None or entry.get("exports") != key:
        print(f"[toy-model] gate after {stage}: measuring on held-out scripts", flush=True)
        began = time.perf_counter()
        result = gates.GATES[stage](exports, load_config(stage, args, root), args.gate_worlds)
        entry = {"exports": key, "seconds": time.perf_counter() - began, **result.to_json()}
        record["gates"][stage] = entry
        save_record(root, record)
    print(f"[toy-model] gate after {stage}: {'passed' if entry['passed'] else 'FAILED'}: {entry['line']}", flush=True)
    if not entry["passed"] and not args.past_failed_gates:
        raise gates.GateFailed(f"gate after {stage} failed: {entry['line']}")


# -- ship ------------------------------------------------------------------------------------------------------
MEMORY_KEYS = ("sink", "slow", "fast", "rule", "tau", "interval", "compare", "keep", "key_layers", "positions")


def ship(args, root: Path, record: dict) -> dict:
    from safetensors.torch import load_file, save_file

    from contextforcing.config import get_preset, to_dict
    from contextforcing.data.world.panorama.heldout import heldout_worlds

    cdmd = load_config("cdmd", args, root)
    preset_name = cdmd.stage.model
    preset = get_preset(preset_name)
    state = load_file(str(root / "exports" / "cdmd.safetensors"))
    stored = "float32"
    if sum(t.numel() * 4 for t in state.values()) > MAX_BYTES:
        state, stored = {k: v.to(torch.float16) for k, v in state.items()}, "float16"
    ASSETS.mkdir(parents=True, exist_ok=True)
    weights = ASSETS / "world_student.safetensors"
    tensors = {k: v.contiguous() for k, v in state.items()}
    write_atomic(weights, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", "stored": stored}))
    memory = dict(cdmd.stage.memory)
    policy = memory.pop("policy", "slow_fast")
    config = {
        "format": "contextforcing.embedded/1",
        "preset": preset_name,
        "model": to_dict(preset.model),
        "video": to_dict(preset.video),
        "memory": {"policy": policy, "options": {k: v for k, v in memory.items() if k in MEMORY_KEYS}},
        "codec": CODEC,
        "codec_sha256": sha256(ASSETS / CODEC),
        "text_encoder": {"kind": "hash", "text_dim": preset.model.text_dim, "text_len": preset.model.text_len},
        "sampling": to_dict(cdmd.stage.sampling),
        "prompt_grammar": "panorama",  # the prompts it was trained on: contextforcing/data/world/panorama/script.py
        # a room-anchored model reads each prompt's camera action as a heading (data/world/panorama/camera.py)
        **({"camera": "panorama"} if preset.model.room_anchored else {}),
        "example_prompt": heldout_worlds(1)[0].script.entries[0].prompt.canonical,
        "weights": {
            "file": weights.name,
            "stored_dtype": stored,
            "bytes": weights.stat().st_size,
            "what": "EMA generator of Stage 2 Contextual DMD",
        },
        "recipe": {
            s: {k: v for k, v in e.items() if k in ("steps", "seconds", "final_losses")}
            for s, e in record["stages"].items()
        },
    }
    write_json_atomic(ASSETS / "world_student.json", config)
    print(
        f"[toy-model] shipped {weights} ({weights.stat().st_size / 1e6:.2f} MB, {stored}) and world_student.json",
        flush=True,
    )
    return config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("runs/toy"), help="run directories, exports, recipe.json")
    p.add_argument("--configs", type=Path, default=REPO / "configs" / "toy")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every stage's max_steps (smoke tests)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE:key=value", help="extra override for one stage")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine 2 threads ran 6x slower)",
    )
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of stages to run (default: all)")
    p.add_argument("--gate-worlds", type=int, default=4, help="held-out scripts each gate generates (shortened)")
    p.add_argument("--no-gates", action="store_true", help="skip the gates (smoke tests only)")
    p.add_argument(
        "--past-failed-gates",
        action="store_true",
        help="measure every gate but go on after a failed one (it stays FAILED in recipe.json and the model card)",
    )
    p.add_argument("--no-ship", action="store_true", help="train only; do not write contextforcing/assets")
    p.add_argument("--eval-worlds", type=int, default=16, help="held-out worlds for the model card (0: none)")
    args = p.parse_args(argv)
    import signal

    def _stop(signum, frame):  # `kill PID` stops like Ctrl-C: the stage's time so far is recorded
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    torch.set_num_threads(args.threads)
    record = load_record(args.root)
    record.setdefault("gates", {})
    record.update(threads=torch.get_num_threads())
    save_record(args.root, record)
    try:
        for stage in [s for s in STAGES if s in args.stages.split(",")]:
            run_stage(stage, args, args.root, record)
            if not args.no_gates:
                run_gate(stage, args, args.root, record)
        if args.no_ship:
            return 0
        import model_card

        config = ship(args, args.root, record)
        summary = model_card.evaluate(args.root, args.eval_worlds) if args.eval_worlds else None
        model_card.write(ASSETS / "MODEL_CARD.md", record, config, summary)
    except UserError as err:
        code = GATE_FAILED if type(err).__name__ == "GateFailed" else 2
        print(f"train_toy_model: {'' if code == GATE_FAILED else 'error: '}{err}", file=sys.stderr)
        return code
    total = sum(e["seconds"] for e in record["stages"].values())
    print(f"[toy-model] done: total training wall time {total / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
