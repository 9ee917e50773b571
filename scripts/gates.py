"""The gates of the toy recipe (scripts/train_toy_model.py): each stage shows on held-out scripts that it earned
its place before the next stage runs. Cheap by design: a few held-out worlds, cut to `GATE_SECONDS`.

    teacher  retrieves from its memory: on the cells of held-out targets that show a part of the room only its
             memory (sink, slow) showed, its flow-matching loss (fixed noise, timesteps 250 / 500 / 750) given its
             true memory is clearly lower than given the same memory with other views of the same room swapped in
             (same positions and headings): ratio <= TEACHER_MAX_RATIO
    ode      follows the script: its videos obey the lights (> ODE_MIN_LIGHTING; a still picture scores 0.50)
             and pan with the camera (> ODE_MIN_PANS; a still picture scores 0)
    dmd      the context teacher (16 Euler steps, CFG) beats the Stage 1 student at memory_score beyond the fast
             memory (slow and beyond buckets, pooled over the worlds)
    cdmd     the Stage 2 student at least matches the Stage 1 student there, with camera (pans) and movers no
             worse than Stage 1's by more than CDMD_MAX_LOSS
A gate whose comparison number is missing fails.

Every generation goes through the Python API (`contextforcing.eval.panorama_runs`), with the memory the stage
was trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from contextforcing.errors import UserError

GATE_SECONDS = 45.0  # held-out tours: 5-8 fast and 16-19 slow revisits per world in their first 45 s
TEACHER_MAX_RATIO = 0.7  # a teacher that retrieves nothing scores about 1 (swapped views cost it nothing)
ODE_MIN_LIGHTING, ODE_MIN_PANS = 0.6, 0.1
CDMD_MAX_LOSS = 0.1
TEACHER_SAMPLING = {"euler_steps": 16, "guidance_scale": 3.0}  # the grid and CFG the ODE pairs were drawn with
EXPORTS = {"teacher": ["teacher"], "ode": ["ode"], "dmd": ["teacher", "dmd"], "cdmd": ["dmd", "cdmd"]}


class GateFailed(UserError):
    """A stage did not earn its place (one line naming the numbers)."""


@dataclass
class GateResult:
    passed: bool
    line: str
    numbers: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"passed": self.passed, "line": self.line, "numbers": self.numbers}


def worlds(count: int, seconds: float = GATE_SECONDS):
    from contextforcing.data.world.panorama import heldout_worlds
    from contextforcing.eval.panorama_runs import shortened

    return [shortened(w, seconds) for w in heldout_worlds(count)]


def _fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


# -- teacher ---------------------------------------------------------------------------------------------------
@dataclass
class RetrievalLosses:
    """A context teacher's flow-matching loss on the cells only its memory can restore, given its true memory and
    given the same memory with other views of the same room swapped in (and given only the recent frames)."""

    true_memory: list[float] = field(default_factory=list)
    swapped_views: list[float] = field(default_factory=list)
    recent_only: list[float] = field(default_factory=list)
    cells: int = 0

    def means(self) -> tuple[float | None, float | None, float | None]:
        return tuple(float(np.mean(v)) if v else None for v in (self.true_memory, self.swapped_views, self.recent_only))


def _masked_loss(flow, noise, target, cells: torch.Tensor) -> float:
    """Flow-matching loss averaged over the marked latent cells ([F, H, W] bool) of a one-sample target."""
    per_cell = ((flow.double() - (noise.double() - target.double())) ** 2).mean(1)[0]  # [F, H, W]
    return float(per_cell[cells].mean())


@torch.no_grad()
def retrieval_losses(teacher_weights: Path, cfg, count: int, seconds: float = GATE_SECONDS) -> RetrievalLosses:
    """Targets of held-out worlds that show a part of the room last seen before the recent (fast) frames, laid
    out as the student's memory would hold them; per target, 3 timesteps with fixed noise, the loss on the cells
    memory must restore (`memory_cells`) with (a) the true memory, (b) every sink and slow frame replaced by the
    same moment seen from the opposite side of the room (`turned`: same lights, balls, events; positions and
    headings unchanged), (c) the recent frames alone."""
    from contextforcing.codecs.world import PANORAMA_PATH, load_world_codec
    from contextforcing.data.world.panorama import render, simulate
    from contextforcing.data.world.panorama.geometry import ROOM_WIDTH
    from contextforcing.data.world.panorama.revisits import memory_cells, turned
    from contextforcing.memory.headings import prompt_headings
    from contextforcing.sampling.samplers import add_noise
    from contextforcing.training.stages.common import gather_frames, headings_tensor
    from contextforcing.training.stages.samples import memory_starts
    from contextforcing.training.stages.teacher import TeacherStage

    stage = TeacherStage(dataclasses.replace(cfg.stage, init=str(teacher_weights)), torch.device("cpu"))
    model, codec, chunk = stage.teacher.eval(), load_world_codec(PANORAMA_PATH), stage.video.chunk_frames
    cached_fast = stage.spec.options.fast - chunk
    cell_px = stage.video.vae_stride_hw
    out = RetrievalLosses()
    generator = torch.Generator().manual_seed(0)

    def encode(track):
        return codec.encode_frames(render(track))

    for spec in worlds(count, seconds):
        track = simulate(spec)
        latents, elsewhere = encode(track), encode(turned(track, ROOM_WIDTH // 2))
        prompts = track.chunk_prompts()
        headings = prompt_headings(stage.camera, prompts, chunk, track.n_latents) if stage.camera else None
        for start in memory_starts(track, chunk, cached_fast):
            text = stage.encoder.encode([prompts[start // chunk]])
            lay = stage.layout(start, text, latents, headings)
            memory = [f for f, tier in zip(lay.frames, lay.tiers) if tier != "fast"]
            recent = [lay.frames[i] for i in lay.fast_indices()]
            cells = torch.from_numpy(memory_cells(track, lay.target_frames, memory, recent, cell_px))
            if not cells.any():
                continue
            swapped = latents.clone()
            swapped[:, :, memory] = elsewhere[:, :, memory]
            variants = (
                (out.true_memory, latents, lay.frames, lay.positions),
                (out.swapped_views, swapped, lay.frames, lay.positions),
                (out.recent_only, latents, recent, [lay.positions[i] for i in lay.fast_indices()]),
            )
            target = gather_frames(latents, lay.target_frames)
            out.cells += int(cells.sum())
            for t in (250.0, 500.0, 750.0):
                noise = torch.randn(target.shape, generator=generator)
                tt = torch.tensor([t])
                x_t = add_noise(target, noise, stage.schedule.sigma(tt))
                for losses, source, frames, positions in variants:
                    flow = model.forward_with_context(
                        x_t,
                        tt,
                        text,
                        gather_frames(source, frames),
                        positions,
                        lay.target_positions,
                        context_headings=headings_tensor(None if headings is None else [[headings[f] for f in frames]]),
                        target_headings=headings_tensor(
                            None if headings is None else [[headings[f] for f in lay.target_frames]]
                        ),
                    )
                    losses.append(_masked_loss(flow, noise, target, cells))
    return out


def teacher_gate(exports: Path, cfg, count: int) -> GateResult:
    losses = retrieval_losses(exports / "teacher.safetensors", cfg, count)
    true, swapped, recent = losses.means()
    if true is None:
        return GateResult(False, "no held-out target needs memory beyond the fast frames (gate worlds too short)")
    ratio = true / swapped
    line = (
        f"teacher flow-matching loss on the {losses.cells} latent cells of {len(losses.true_memory) // 3} held-out "
        f"targets that only its memory can restore: {true:.4f} with its true memory, {swapped:.4f} with other views "
        f"of the same room swapped in (ratio {ratio:.3f}; must be <= {TEACHER_MAX_RATIO}), {recent:.4f} with the "
        f"recent frames only"
    )
    numbers = {"loss_memory": true, "loss_swapped": swapped, "loss_recent_only": recent, "ratio": ratio}
    return GateResult(ratio <= TEACHER_MAX_RATIO, line, {**numbers, "cells": losses.cells})


# -- students --------------------------------------------------------------------------------------------------
def behaviour(weights: Path, cfg, count: int, sampling: dict | None = None) -> dict:
    """Headline numbers of `weights` (the stage's preset and memory) on the gate worlds: per-world means, and
    memory_score beyond the fast memory pooled over all worlds (the sum of the video's revisit scores over the
    truth's, on every slow and beyond revisit of the scripts)."""
    from contextforcing.eval.panorama_runs import generate, score, world_pipeline

    pipe = world_pipeline(weights, memory=cfg.stage.memory, preset=cfg.stage.model)
    from contextforcing.eval.memory_score import pooled_memory_score

    heads, beyond = [], []
    for spec in worlds(count):
        scores = score(generate(pipe, spec, sampling=sampling), spec)
        heads.append(scores.headline())
        beyond += [r for r in scores.revisits if r["bucket"] != "fast"]
    out = {key: _mean([h[key] for h in heads]) for key in heads[0]}
    out["memory_beyond_fast"] = pooled_memory_score(beyond)
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def ode_gate(exports: Path, cfg, count: int) -> GateResult:
    m = behaviour(exports / "ode.safetensors", cfg, count)
    lighting, pans = m["lighting"], m["camera_pans"]
    ok = lighting is not None and pans is not None and lighting > ODE_MIN_LIGHTING and pans > ODE_MIN_PANS
    line = (
        f"ODE student on {count} held-out scripts ({GATE_SECONDS:g} s): lighting obeyed {_fmt(lighting, 2)} (must be > "
        f"{ODE_MIN_LIGHTING}), camera pans obeyed {_fmt(pans, 2)} (must be > {ODE_MIN_PANS})"
    )
    return GateResult(ok, line, {"ode": m})


def dmd_gate(exports: Path, cfg, count: int) -> GateResult:
    student = behaviour(exports / "dmd.safetensors", cfg, count)
    teacher = behaviour(exports / "teacher.safetensors", cfg, count, sampling=TEACHER_SAMPLING)
    t, s = teacher["memory_beyond_fast"], student["memory_beyond_fast"]
    ok = t is not None and s is not None and t > s  # a number that is missing fails the gate
    line = (
        f"memory score beyond the fast memory on {count} held-out scripts ({GATE_SECONDS:g} s): teacher {_fmt(t, 2)}, "
        f"Stage 1 student {_fmt(s, 2)}; the teacher must be higher"
    )
    return GateResult(ok, line, {"teacher": teacher, "stage1": student})


def cdmd_gate(exports: Path, cfg, count: int) -> GateResult:
    stage1 = behaviour(exports / "dmd.safetensors", cfg, count)
    stage2 = behaviour(exports / "cdmd.safetensors", cfg, count)
    m1, m2 = stage1["memory_beyond_fast"], stage2["memory_beyond_fast"]
    keys = ("camera_pans", "movers")
    missing = [k for k in keys if stage1[k] is None or stage2[k] is None]
    worse = [k for k in keys if k not in missing and stage2[k] < stage1[k] - CDMD_MAX_LOSS]
    ok = m1 is not None and m2 is not None and m2 >= m1 and not worse and not missing
    line = (
        f"memory score beyond the fast memory on {count} held-out scripts ({GATE_SECONDS:g} s): Stage 2 {_fmt(m2, 2)}, "
        f"Stage 1 {_fmt(m1, 2)}, must be at least as high; camera pans {_fmt(stage2['camera_pans'], 2)} vs "
        f"{_fmt(stage1['camera_pans'], 2)}, movers {_fmt(stage2['movers'], 2)} vs {_fmt(stage1['movers'], 2)} (at most "
        f"{CDMD_MAX_LOSS} worse)"
    )
    return GateResult(ok, line, {"stage2": stage2, "stage1": stage1})


GATES = {"teacher": teacher_gate, "ode": ode_gate, "dmd": dmd_gate, "cdmd": cdmd_gate}
