"""The retrieval memory (`retrieve`): a FIFO bank of keyframes, of which each chunk attends the `top_k` most relevant
by view overlap (camera headings), by keys or by the prompt a keyframe was made under; checked chunk by chunk against a plain statement of the rule, with the
store reading exactly what is attended, and the training replay equal to streaming."""

from __future__ import annotations

import pytest
import torch

from contextforcing.errors import UserError
from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.spec import make_spec, tier_params

C, T, D = 3, 2, 4
ROOM, VIEW = 16, 4  # the world preset's room and view, in tokens
OPTIONS = {"sink": 3, "bank": 6, "top_k": 2, "fast": 6, "interval": 1}


def _memory(score, headings=True):
    layout = MemoryLayout(2, T, 1, D, C, view_tokens=VIEW, room_tokens=ROOM)
    spec = make_spec("retrieve", {**OPTIONS, "score": score})
    return ContextMemory(spec, layout, key_rotation=lambda k, *_: k.flatten(1, 2), headings=headings)


def _commit(memory, start, keys):
    """A commit pass whose every token's key (both layers) is `keys` [D]."""
    step = memory.begin_pass(commit=True)
    k = keys.reshape(1, 1, 1, D).expand(1, C * T, 1, D).float()
    for layer in range(2):
        step.keys_values(layer, k, k, k)
    memory.commit()


def _circular(d):
    return abs((d + ROOM / 2) % ROOM - ROOM / 2)


def reference_picks(bank, relevance, top_k):
    """The rule in plain words: the top_k most relevant keyframes of the bank, ties to the more recent."""
    ranked = sorted(bank, key=lambda f: (-relevance[f], -f))
    return sorted(ranked[:top_k])


def test_view_retrieval_picks_the_keyframes_that_saw_the_current_view():
    memory = _memory("view")
    heading = 0.0
    headings, bank, checked = {}, [], 0
    for chunk in range(30):
        start = chunk * C
        step = 0.5 if (chunk // 4) % 3 != 2 else -0.5  # pan right, then back: old views come into sight again
        frames = []
        for f in range(start, start + C):
            heading = heading + step if f else 0.0
            frames.append(heading)
            headings[f] = heading
        plan = memory.begin_chunk(start, C, [frames])
        fast = set(plan.tier("fast"))
        candidates = [f for f in bank if f not in fast]
        now = headings[start]
        relevance = {f: max(0.0, VIEW - _circular(headings[f] - now)) / VIEW for f in candidates}
        assert plan.tier("slow") == reference_picks(candidates, relevance, OPTIONS["top_k"]), f"chunk {chunk}"
        assert plan.retrieval == pytest.approx(relevance)
        assert memory.key_frames() == plan.attended_frames  # the store reads what the plan attends, nothing more
        checked += bool(candidates)
        _commit(memory, start, torch.ones(D))
        if start >= 6:  # admitted once the sink is full and the fast window holds a chunk: the chunk's last frame
            bank = (bank + [start + C - 1])[-OPTIONS["bank"] :]
        assert memory.tiers()["slow"] == bank, f"chunk {chunk}: the bank is a FIFO of the chunks' last frames"
    assert checked > 20 and memory.slots == tier_params(memory.spec, C).capacity + OPTIONS["bank"] - OPTIONS["top_k"]


def test_keys_retrieval_picks_the_keyframes_most_like_the_last_chunk():
    memory = _memory("keys", headings=False)
    rng = torch.Generator().manual_seed(0)
    scenes = torch.eye(D) * 5 + torch.randn(D, D, generator=rng) * 0.1
    keys, bank = {}, []
    for chunk in range(30):
        start = chunk * C
        plan = memory.begin_chunk(start, C)
        fast = set(plan.tier("fast"))
        candidates = [f for f in bank if f not in fast]
        if candidates:
            query = keys[start - 1]
            relevance = {f: float(torch.cosine_similarity(keys[f], query, dim=0)) for f in candidates}
            assert plan.tier("slow") == reference_picks(candidates, relevance, OPTIONS["top_k"]), f"chunk {chunk}"
        scene = scenes[(chunk * 7) % 5 % D]  # scenes come back out of order
        for f in range(start, start + C):
            keys[f] = scene
        _commit(memory, start, scene)
        if start >= 6:
            bank = (bank + [start + C - 1])[-OPTIONS["bank"] :]


def test_text_retrieval_picks_the_keyframes_made_under_a_prompt_like_the_current_one():
    memory = _memory("text", headings=False)
    rng = torch.Generator().manual_seed(1)
    prompts = [torch.randn(1, 5, D, generator=rng) for _ in range(3)]  # [B, L, D] text embeddings
    made_under, bank, checked = {}, [], 0
    with pytest.raises(ValueError, match="set_prompt"):
        memory.begin_chunk(0, C)
    for chunk in range(30):
        start = chunk * C
        prompt = prompts[(chunk // 3) % 3]  # a switch every 3 chunks; earlier prompts come back
        memory.set_prompt(prompt)
        plan = memory.begin_chunk(start, C)
        for f in range(start, start + C):
            made_under[f] = prompt.mean(dim=(0, 1))
        candidates = [f for f in bank if f not in set(plan.tier("fast"))]
        now = prompt.mean(dim=(0, 1))
        relevance = {f: float(torch.cosine_similarity(made_under[f], now, dim=0)) for f in candidates}
        assert plan.tier("slow") == reference_picks(candidates, relevance, OPTIONS["top_k"]), f"chunk {chunk}"
        checked += len({round(r, 4) for r in relevance.values()}) > 1  # a bank of more than one prompt
        _commit(memory, start, torch.ones(D))
        if start >= 6:
            bank = (bank + [start + C - 1])[-OPTIONS["bank"] :]
    assert checked > 10
    with pytest.raises(UserError, match="score=keys"):
        ContextMemory.replay(make_spec("retrieve", {**OPTIONS, "score": "text"}), C, 6)


def test_options_are_checked_and_view_needs_a_room_anchored_model():
    with pytest.raises(UserError, match="top_k <= bank"):
        make_spec("retrieve", {"top_k": 9, "bank": 4}, chunk_frames=C)
    with pytest.raises(UserError, match="score=view"):
        _memory("view", headings=False)
    # auto (the default): a room-anchored model's view, any other model's keys
    assert (_memory("auto").params.score, _memory("auto", headings=False).params.score) == ("view", "keys")
    assert tier_params(make_spec("retrieve"), C).capacity == 3 + 8 + 6  # what a chunk attends, as slow_fast 3/8/6
