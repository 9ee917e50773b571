"""The held-out evaluation worlds: prompts, seeds and occlusion schedules training data never uses.

Seeds are at or above `EVAL_SEED_BASE` (the dataset writer draws training seeds below it), two of the
prompts use style/palette pairs that training never shows (`HELD_OUT_COMBOS`), and every world is 60 s
with a forced occlusion schedule that has at least one occlusion in each memory bucket (short < 1.5 s,
mid up to 20 s, long beyond), so every evaluation world measures every memory span.
"""

from __future__ import annotations

from contextforcing.data.world.prompts import EVAL_SEED_BASE
from contextforcing.data.world.track import WorldSpec

EVAL_SECONDS = 60.0
SEEDS_PER_PROMPT = 2
# Occlusion lengths (s), in order. Each sums to <= 31 s so the visible stretches always fit in 60 s.
EVAL_OCCLUSION_PROFILES: tuple[tuple[float, ...], ...] = (
    (1.0, 6.0, 22.0, 0.5),
    (0.5, 3.0, 21.0, 1.0),
    (2.0, 1.25, 24.0),
)
EVAL_PROMPTS: tuple[str, ...] = (
    "striped cool room",
    "plain warm room, curtain occlusions",
    "checkered forest room, blackout occlusions, circle sprite",
    "columned slate room, turn-away occlusions, bounce sprite",
    "plain dusk room, figure8 sprite",
    "striped sand room, curtain occlusions, circle sprite",
    # style/palette pairs held out of training
    "checkered dusk room, blackout occlusions",
    "columned sand room, turn-away occlusions, figure8 sprite",
)


def eval_worlds() -> list[WorldSpec]:
    """The fixed evaluation set (16 worlds of 60 s)."""
    worlds = []
    for p, prompt in enumerate(EVAL_PROMPTS):
        for s in range(SEEDS_PER_PROMPT):
            profile = EVAL_OCCLUSION_PROFILES[(p + s) % len(EVAL_OCCLUSION_PROFILES)]
            worlds.append(WorldSpec(prompt, EVAL_SEED_BASE + 100 * p + s, EVAL_SECONDS, profile))
    return worlds


def heldout_pairs(count: int, seconds: float = EVAL_SECONDS) -> list[WorldSpec]:
    """`count` held-out (prompt, seed) worlds for larger evaluations (the ablation table, docs/results.md).

    The same prompts and seed rule as `eval_worlds`, with more seeds per prompt, seed-major, so the first
    16 are the evaluation set and any prefix spreads over all prompts. Longer clips repeat the occlusion
    profile (`seconds` up to twice EVAL_SECONDS keeps every schedule inside the clip).
    """
    repeats = max(1, round(seconds / EVAL_SECONDS))
    worlds = []
    for index in range(count):
        s, p = divmod(index, len(EVAL_PROMPTS))
        profile = EVAL_OCCLUSION_PROFILES[(p + s) % len(EVAL_OCCLUSION_PROFILES)] * repeats
        worlds.append(WorldSpec(EVAL_PROMPTS[p], EVAL_SEED_BASE + 100 * p + s, seconds, profile))
    return worlds
