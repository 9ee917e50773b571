"""Impossible memory configurations are user errors (one-line message, CLI exit code 2), not crashes."""

from __future__ import annotations

import pytest

from contextforcing.config import parse_overrides
from contextforcing.errors import UserError
from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.spec import make_spec

LAYOUT = MemoryLayout(num_layers=2, tokens_per_frame=2, num_heads=1, head_dim=4, chunk_frames=3)


def build(policy, options=None, max_frames=60):
    return ContextMemory(
        make_spec(policy, options), LAYOUT, key_rotation=lambda k, p: k.flatten(1, 2), max_frames=max_frames
    )


BAD = [
    # negative sizes
    ("rolling", {"window": -3}, "window"),
    ("sink", {"sink": -1}, "sink"),
    ("relative", {"sink": -2}, "sink"),
    ("ema_sink", {"sink": -1}, "sink"),
    ("slow_fast", {"slow": -1}, "slow"),
    ("slow_fast", {"sink": -1, "slow": 0}, "sink"),
    ("slow_fast", {"fast": -6}, "window"),
    # a window that cannot hold the current chunk
    ("rolling", {"window": 2}, "window"),
    ("sink", {"window": 2}, "window"),
    ("relative", {"window": 0}, "window"),
    ("ema_sink", {"window": 2}, "window"),
    ("slow_fast", {"fast": 2}, "window"),
    # slow memory (or EMA folding) without a sink
    ("slow_fast", {"sink": 0}, "sink"),
    ("ema_sink", {"sink": 0}, "sink"),
    # unknown option keys
    ("full", {"window": 3}, "window"),
    ("rolling", {"sink": 3}, "sink"),
    ("sink", {"slow": 3}, "slow"),
    ("slow_fast", {"tua": 0.9}, "tua"),
    # bad values and choices
    ("slow_fast", {"rule": "random"}, "rule"),
    ("slow_fast", {"positions": "relative"}, "positions"),
    ("slow_fast", {"promote_on": "noisy"}, "promote_on"),
    ("slow_fast", {"promote_scope": "layer"}, "promote_scope"),
    ("slow_fast", {"dedupe": "maybe"}, "dedupe"),
    ("slow_fast", {"tau": "high"}, "tau"),
    ("slow_fast", {"interval": 0}, "interval"),
    ("slow_fast", {"interval": 1.5}, "interval"),
    ("slow_fast", {"slow": "twelve"}, "slow"),
    ("ema_sink", {"alpha": 1.5}, "alpha"),
    ("ema_sink", {"alpha": -0.1}, "alpha"),
    ("rolling", {"window": 12.5}, "window"),
]


@pytest.mark.parametrize("policy, options, word", BAD, ids=[f"{p}-{o}" for p, o, _ in BAD])
def test_bad_memory_options_raise_user_error(policy, options, word):
    with pytest.raises(UserError) as err:
        build(policy, options)
    message = str(err.value)
    assert word in message and "\n" not in message


def test_unknown_policy():
    with pytest.raises(UserError, match="unknown memory policy 'lru'"):
        make_spec("lru")


def test_full_needs_the_video_length():
    with pytest.raises(UserError, match="max_frames"):
        build("full", max_frames=None)


@pytest.mark.parametrize(
    "policy, options, tiers",
    [
        ("slow_fast", {"sink": 0, "slow": 0}, (0, 0, 6)),  # no slow memory: no sink needed
        ("slow_fast", {"fast": 3}, (3, 12, 3)),  # window == chunk: no cached fast frames
        ("rolling", {"window": 3}, (0, 0, 3)),
        ("sink", {"sink": 0}, (0, 0, 9)),
        ("slow_fast", parse_overrides(["tau=0.9", "dedupe=false", "interval=2"]), (3, 12, 6)),  # as the CLI passes them
    ],
)
def test_edge_sizes_are_accepted_as_asked(policy, options, tiers):
    """The memory is built with exactly the sizes asked for (sink, slow, fast window), the rest the defaults, and
    attends at most their sum."""
    params = build(policy, options).params
    assert (params.sink, params.slow, params.window) == tiers and params.capacity == sum(tiers)
    assert all(getattr(params, k) == v for k, v in options.items() if k in ("tau", "dedupe", "interval"))
