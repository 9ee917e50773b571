"""The rows of docs/results.md (scripts/reproduce_results.py): oracles and cheaters, every memory policy on the shipped
model, the promotion rules, the ablations, the models of the recipe's other stages, and the screen-anchored recipe.

A row is a generator of videos from a held-out world's script: an oracle (`contextforcing.eval.oracles`, through the
panorama codec as a model's latents would be), or a model (the shipped student, or an export of the toy recipe)
with a memory and sampling over its trained ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = Path(os.environ.get("CF_TOY_RUNS", REPO / "runs"))
EXPORTS = RUNS / "toy" / "exports"  # make toy-model's exports
SCREEN_EXPORTS = RUNS / "toy_screen" / "exports"  # the same recipe with screen-column width positions
SHIPPED = "shipped"  # the packaged student (EMA of Stage 2, contextforcing/assets/world_student.safetensors)
CONTIGUOUS_WINDOW = 17  # frames the contiguous teacher sees: the student's memory budget (3 + 8 + 6)
TEACHER_SAMPLING = {"euler_steps": 16, "guidance_scale": 3.0}  # the grid and CFG the ODE pairs were drawn with
# Stage 2 students trained here: the shipped recipe (configs/toy/cdmd.yaml from the Stage 1 export, same seed and
# steps) with one ablated choice each, so the row differs from the shipped one in that choice only.
STAGE2_VARIANTS = {
    "cdmd_contiguous": ("stage.teacher_context=contiguous", f"stage.context_window={CONTIGUOUS_WINDOW}"),
    "cdmd_absolute": ("stage.memory.positions=absolute",),
}
# The model this repository shipped before room-anchored positions (screen columns, the previous teacher recipe, whose
# retrieval gate measured 0.989): read from git, so the row needs no training.
PREVIOUS = "previous"
PREVIOUS_COMMIT = "80a5fc9001310cde9749b001b8fc64efb3c71261"
PREVIOUS_WEIGHTS = RUNS / "previous_student.safetensors"
SCREEN = "screen:cdmd"  # the screen-anchored recipe's Stage 2 export (SCREEN_EXPORTS/cdmd.safetensors)
PAPER_RULE = {"compare": "previous", "key_layers": "all", "keep": "first", "tau": 0.95}


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    kind: str = "model"  # model | oracle
    weights: str = SHIPPED  # SHIPPED, an export name under EXPORTS, or SCREEN
    memory: dict | None = None  # over the trained memory (None: as trained); "policy" names another policy
    sampling: dict | None = None
    oracle: str | None = None  # oracle rows: which (see ORACLES)

    @property
    def preset(self) -> str | None:
        """The preset of the row's weights (None: the shipped model's own config)."""
        return "world-screen" if self.weights in (SCREEN, PREVIOUS) else None

    def weights_path(self) -> Path | None:
        if self.weights == SHIPPED:
            return None
        if self.weights == SCREEN:
            return SCREEN_EXPORTS / "cdmd.safetensors"
        if self.weights == PREVIOUS:
            return PREVIOUS_WEIGHTS
        return EXPORTS / f"{self.weights}.safetensors"


def oracle_videos():
    """Oracle name -> (track, truth frames) -> frames (before the codec)."""
    from contextforcing.eval import oracles as o

    return {
        "truth": lambda t, f: f,
        "forgets": lambda t, f: o.forgetting(t, f, 0.0),
        "sink_view": lambda t, f: o.forgetting(t, f, 0.0, keep_sink=True),
        "still": o.still_picture,
        "constant": o.constant_darkening,
        "repeat32": lambda t, f: o.repeating_room(t, f, 32),
        "repeat64": lambda t, f: o.repeating_room(t, f, 64),
        "forget_blur": o.forgetting_blurred,
        "wrong_room": o.wrong_room,
        "no_objects": o.forgetting_without_objects,
        "crowded": o.forgetting_crowded,
        "other_seed": o.other_seed_remembered,
    }


def _oracle(key: str, label: str) -> Row:
    return Row(key, label, kind="oracle", oracle=key if key != "truth_codec" else "truth")


ROWS = [
    _oracle("truth_codec", "perfect memory: the ground truth through the codec"),
    _oracle("forgets", "forgets: follows the script, redraws every revisit"),
    _oracle("sink_view", "remembers the first view only (what a sink holds)"),
    _oracle("still", "still picture (first frame)"),
    _oracle("constant", "cheat: constant image that darkens when told"),
    _oracle("repeat32", "cheat: memoryless room repeating every 32 px"),
    _oracle("repeat64", "cheat: memoryless room repeating every 64 px"),
    _oracle("forget_blur", "cheat: forgetting + blur"),
    _oracle("wrong_room", "cheat: another room after every absence"),
    _oracle("no_objects", "cheat: forgetting, no objects"),
    _oracle("crowded", "cheat: forgetting, objects in most cells"),
    _oracle("other_seed", "control: another seed's room, kept"),
    Row(
        "full",
        "full: every past frame, absolute positions (CausVid / Self-Forcing as trained)",
        memory={"policy": "full"},
    ),
    Row("rolling", "rolling window, 12 frames = 3 s (Self-Forcing)", memory={"policy": "rolling", "window": 12}),
    Row("sink", "sink 3 + window 9 (LongLive)", memory={"policy": "sink", "sink": 3, "window": 9}),
    Row(
        "relative",
        "sink 3 + window 9, relative positions (Infinity-RoPE)",
        memory={"policy": "relative", "sink": 3, "window": 9},
    ),
    Row("ema_sink", "EMA sink 3 + window 6 (Reward Forcing)", memory={"policy": "ema_sink", "sink": 3, "window": 6}),
    Row(
        "slow_fast",
        "**Context Forcing: slow_fast as trained** (room-anchored positions; surprisal against the last checked "
        "chunk, first-block keys, last frame kept)",
    ),
    Row("slow_empty", "slow_fast with the slow tier emptied (sink 3 + fast 6)", memory={"slow": 0}),
    Row(
        "retrieve_view",
        "retrieval: sink 3 + the 8 of a 32-keyframe bank that saw the current view + fast 6 (17 attended)",
        memory={"policy": "retrieve", "bank": 32, "top_k": 8, "interval": 2, "score": "view"},
    ),
    Row(
        "retrieve_keys",
        "retrieval: sink 3 + the 8 of a 32-keyframe bank most like the last chunk's keys + fast 6 (17 attended)",
        memory={"policy": "retrieve", "bank": 32, "top_k": 8, "interval": 2, "score": "keys"},
    ),
    Row(
        "retrieve_text",
        "retrieval: sink 3 + the 8 of a 32-keyframe bank made under prompts most like the current one + fast 6",
        memory={"policy": "retrieve", "bank": 32, "top_k": 8, "interval": 2, "score": "text"},
    ),
    Row(
        "rolling17",
        "rolling window of 17 frames (as many attended as slow_fast)",
        memory={"policy": "rolling", "window": 17},
    ),
    Row(
        "sink17",
        "sink 3 + window 14 (as many attended as slow_fast)",
        memory={"policy": "sink", "sink": 3, "window": 14},
    ),
    Row(
        "paper_rule",
        "slow_fast, the paper's surprisal rule (against the previous chunk, keys of all layers, first "
        "frame kept, tau 0.95)",
        memory=PAPER_RULE,
    ),
    Row(
        "compare_previous",
        "slow_fast, surprisal against the previous chunk (else as trained)",
        memory={"compare": "previous"},
    ),
    Row("keep_first", "slow_fast, first frame kept (else as trained)", memory={"keep": "first"}),
    Row("uniform", "slow_fast, uniform promotion every 2 chunks", memory={"rule": "uniform", "interval": 2}),
    Row("released", "slow_fast, the released cache exactly (`layout=released`)", memory={"layout": "released"}),
    Row("absolute", "without bounded positions, at inference only", memory={"positions": "absolute"}),
    Row(
        "absolute_trained",
        "without bounded positions, trained so (Stage 2 and inference at absolute positions)",
        weights="cdmd_absolute",
        memory={"positions": "absolute"},
    ),
    Row(
        "contiguous",
        f"Stage 2 teacher on a contiguous {CONTIGUOUS_WINDOW}-frame window (released code)",
        weights="cdmd_contiguous",
    ),
    Row("no_cdmd", "without Contextual DMD (the Stage 1 student, trained memory)", weights="dmd"),
    Row(
        "screen",
        "screen-anchored width positions (the same recipe, Wan's screen columns; Stage 2, trained memory)",
        weights=SCREEN,
    ),
    Row(
        "previous",
        "the previous shipped model (screen-anchored width positions, the previous teacher recipe; trained memory)",
        weights=PREVIOUS,
    ),
    Row(
        "teacher",
        "context teacher (16 Euler steps, CFG 3, trained memory)",
        weights="teacher",
        sampling=TEACHER_SAMPLING,
    ),
]
ROW_BY_KEY = {r.key: r for r in ROWS}
BASELINE = "slow_fast"
