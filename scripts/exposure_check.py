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


def scored_revisits(pipe, spec, sampling, known: dict | None, cut: int) -> list[dict]:
    """The video's revisit rows beyond the fast memory seen before latent `cut` and back after it."""
    from contextforcing.eval.panorama_runs import score, script_prompts

    first, switches = script_prompts(spec)
    video = pipe(first, spec.seconds, seed=spec.seed, sampling=sampling, switches=switches, known_frames=known)
    revisits = score(video, spec).revisits
    return [r for r in revisits if r["bucket"] != "fast" and r["seen_latent"] < cut <= r["back_latent"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--given", type=float, default=0.5, help="share of the latent frames given as the truth")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "exposure.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from contextforcing.eval.panorama_runs import world_pipeline

    shipped = world_pipeline()
    results = {}
    for label, (export, sampling) in MODELS.items():
        pipe = world_pipeline(EXPORTS / f"{export}.safetensors", memory=shipped.memory)
        rows = {"own past": [], "true past": []}
        for spec in worlds(args.worlds, args.seconds):
            latents = truth_latents(pipe, spec)
            cut = int(latents.shape[2] * args.given)
            known = {f: latents[:, :, f : f + 1] for f in range(cut)}
            for condition, given in (("own past", None), ("true past", known)):
                rows[condition] += scored_revisits(pipe, spec, sampling, given, cut)
                print(f"{label}, world {spec.seed}, {condition}: {len(rows[condition])} revisits so far", flush=True)
        results[label] = {c: {"memory": pooled_memory_score(r), "revisits": len(r)} for c, r in rows.items()}
    print(f"| model | memory score, own past | true past | revisits ({args.worlds} worlds, {args.seconds:g} s) |")
    print("|---|---|---|---|")
    for label, r in results.items():
        own, true = r["own past"], r["true past"]
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"| {label} | {fmt(own['memory'])} | {fmt(true['memory'])} | {own['revisits']} |")
    write_json_atomic(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
