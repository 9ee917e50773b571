"""Why did the toy recipe's Stage 1 gate fail? A check of one reading: exposure bias.

The gate after Stage 1 (`scripts/gates.py dmd_gate`) asks the context teacher to keep more beyond the fast memory
than the Stage 1 student, each on its own generations; it kept less (0.16 vs 0.29). Yet the teacher gate showed the
teacher reads its memory when that memory holds true frames (loss 0.25 with its memory vs 0.54 with other views).
If the teacher fails only on its own frames, it is exposure bias: trained on true contexts, it does not trust the
drifting ones it makes.

Both models generate the gate's held-out worlds twice: from their scripts alone ("own past"), and with the first
`--given` share of the latent frames given as the truth through the codec ("true past", replacement conditioning as
`Pipeline(known_frames=...)`). Scored are the same revisits in both: seen before the cut, back after it, beyond the
fast memory; the memory score pools them (the video's revisit scores over the truth's, docs/evaluation.md).

    python scripts/exposure_check.py [--worlds 4] [--seconds 45] [--given 0.5] [--out runs/exposure.json]

It prints the pooled scores and, world by world, three sign tests (the teacher's true past against its own, and the
teacher against the student from each past).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gates import TEACHER_SAMPLING, worlds  # noqa: E402
from results_rows import EXPORTS  # noqa: E402

from contextforcing.eval.memory_score import pooled_memory_score  # noqa: E402
from contextforcing.io.outputs import write_json_atomic  # noqa: E402

MODELS = {  # label -> (export, sampling): the two models the Stage 1 gate compares, sampled as it samples them
    "context teacher": ("teacher", TEACHER_SAMPLING),
    "Stage 1 student": ("dmd", None),
}


def truth_latents(pipe, spec) -> torch.Tensor:
    """The world's frames through the model's codec: latents [1, C, F, h, w]."""
    from contextforcing.data.world.panorama import render, simulate

    return pipe.codec.encode_frames(render(simulate(spec)))


def beyond_fast_revisits(pipe, spec, sampling, known: dict | None) -> list[dict]:
    """The video's revisit rows beyond the fast memory."""
    from contextforcing.eval.panorama_runs import score, script_prompts

    first, switches = script_prompts(spec)
    video = pipe(first, spec.seconds, seed=spec.seed, sampling=sampling, switches=switches, known_frames=known)
    return [r for r in score(video, spec).revisits if r["bucket"] != "fast"]


def across(revisits: list[dict], cut: int) -> list[dict]:
    """Those seen before latent `cut` and back after it."""
    return [r for r in revisits if r["seen_latent"] < cut <= r["back_latent"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--given", type=float, default=0.5, help="share of the latent frames given as the truth")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "exposure.json")
    ap.add_argument("--teacher", type=Path, default=None, help="another teacher export (default: the recipe's)")
    ap.add_argument("--teacher-only", action="store_true", help="no Stage 1 student (and so no paired tests)")
    args = ap.parse_args(argv)
    if args.teacher is not None and not args.teacher.is_file():
        ap.error(f"--teacher {args.teacher}: no such file")  # one line, exit 2, before any work
    torch.set_num_threads(1)
    from contextforcing.eval.panorama_runs import world_pipeline

    shipped = world_pipeline()
    results, by_world = {}, {}
    models = {k: v for k, v in MODELS.items() if not (args.teacher_only and v[0] != "teacher")}
    for label, (export, sampling) in models.items():
        weights = args.teacher if export == "teacher" and args.teacher else EXPORTS / f"{export}.safetensors"
        pipe = world_pipeline(weights, memory=shipped.memory)
        rows = {"own past": {}, "true past": {}}  # condition -> world seed -> its scored revisits across the cut
        own_all = []  # every revisit beyond the fast memory of the own-past videos (the Stage 1 gate's measure)
        for spec in worlds(args.worlds, args.seconds):
            latents = truth_latents(pipe, spec)
            cut = int(latents.shape[2] * args.given)
            known = {f: latents[:, :, f : f + 1] for f in range(cut)}
            for condition, given in (("own past", None), ("true past", known)):
                revisits = beyond_fast_revisits(pipe, spec, sampling, given)
                own_all += revisits if given is None else []
                rows[condition][spec.seed] = across(revisits, cut)
                print(
                    f"{label}, world {spec.seed}, {condition}: {len(rows[condition][spec.seed])} revisits", flush=True
                )
        results[label] = {c: pooled(r) for c, r in rows.items()}
        results[label]["own past, every revisit beyond fast"] = {
            "memory": pooled_memory_score(own_all),
            "revisits": len(own_all),
        }
        by_world[label] = {c: {seed: pooled_memory_score(r) for seed, r in w.items()} for c, w in rows.items()}
    print(
        f"| model | memory score, own past | true past | revisits ({args.worlds} worlds, {args.seconds:g} s) "
        "| own past, every revisit beyond fast (revisits) |"
    )
    print("|---|---|---|---|---|")
    for label, r in results.items():
        own, true, every = r["own past"], r["true past"], r["own past, every revisit beyond fast"]
        print(
            f"| {label} | {_fmt(own['memory'])} | {_fmt(true['memory'])} | {own['revisits']} "
            f"| {_fmt(every['memory'])} ({every['revisits']}) |"
        )
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "by_world": by_world}
    if not args.teacher_only:
        record["paired"] = comparisons(by_world)
    write_json_atomic(args.out, record)
    return 0


def comparisons(by_world: dict) -> dict:
    """The three world-by-world sign tests, printed and returned."""
    teacher, student = by_world["context teacher"], by_world["Stage 1 student"]
    out = {
        "context teacher: true past above own past": paired(teacher["true past"], teacher["own past"]),
        "true past: context teacher above Stage 1 student": paired(teacher["true past"], student["true past"]),
        "own past: context teacher above Stage 1 student": paired(teacher["own past"], student["own past"]),
    }
    for name, c in out.items():
        print(
            f"{name}: higher in {c['higher']} of {c['worlds']} worlds, lower in {c['lower']} (sign test p = {c['p']:.2g})"
        )
    return out


def pooled(rows_by_world: dict[int, list[dict]]) -> dict:
    revisits = [r for rows in rows_by_world.values() for r in rows]
    return {"memory": pooled_memory_score(revisits), "revisits": len(revisits)}


def paired(a: dict[int, float | None], b: dict[int, float | None]) -> dict:
    """Worlds where `a`'s pooled score is above / below `b`'s (worlds where either has no score are left out)."""
    from results_tables import sign_test

    both = [(a[s], b[s]) for s in a if a[s] is not None and b.get(s) is not None]
    higher, lower = sum(x > y for x, y in both), sum(x < y for x, y in both)
    return {"worlds": len(both), "higher": higher, "lower": lower, "p": sign_test(higher, lower)}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
