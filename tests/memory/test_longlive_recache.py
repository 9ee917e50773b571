"""Prompt switches with `recache=longlive` against the plain-Python statement of LongLive 1.0's cache
(tests/memory/longlive_reference.py): which frames are re-encoded, what that one pass attends (frame,
position, and under which prompt its K/V were computed), and what every later chunk attends.

The memory is driven as the model drives it, with synthetic keys: frame and prompt are encoded in the
keys, and the rotation marks each key with its position, so what attention receives can be read back.
"""

from __future__ import annotations

import pytest
import torch
from longlive_reference import LongLiveCache, LongLiveSetup

from contextforcing.errors import UserError
from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.spec import make_spec
from contextforcing.sampling.stream import VideoStream

S, W, C, T = 3, 9, 3, 2  # LongLive 1.0: sink 3, 12 slots (our window 9 counts the current chunk)
LAYOUT = MemoryLayout(num_layers=1, tokens_per_frame=T, num_heads=1, head_dim=4, chunk_frames=C)


def mark(keys, positions):
    """Rotation stand-in: component 3 of each key += 1000 x its position."""
    offset = torch.zeros_like(keys)
    offset[..., 3] = torch.as_tensor(positions, dtype=keys.dtype).view(1, -1, 1, 1) * 1000.0
    return (keys + offset).flatten(1, 2)


def make_kv(frames, prompt):
    """Token t of frame f: (f + 1, 0, prompt + 1, 0) * (-1)^t, so frame and prompt read back exactly."""
    e = torch.tensor([[f + 1.0, 0.0, prompt + 1.0, 0.0] for f in frames])  # [F, D]
    k = torch.stack([e, -e], 1)[None, :, :, None, :]  # [1, F, T, 1, D]
    return k, k.flatten(1, 2)


def read(keys, mask):
    """(frame, position, prompt) of every attended frame, sorted by position then frame."""
    k = keys[0] if mask is None else keys[0][mask]
    k = k.reshape(-1, T, 4).double()
    half, mean = (k[:, 0] - k[:, 1]) / 2, (k[:, 0] + k[:, 1]) / 2
    out = zip(
        half[:, 0].round().long().tolist(),
        (mean[:, 3] / 1000).round().long().tolist(),
        half[:, 2].round().long().tolist(),
    )
    return sorted((f - 1, p, prompt - 1) for f, p, prompt in out)


def one_pass(mem, frames, prompt):
    """A commit pass over `frames` as the model runs it; returns what attention received."""
    step = mem.begin_pass(commit=True)
    k, k_flat = make_kv(frames, prompt)
    with torch.no_grad():
        keys, _, mask = step.keys_values(0, k_flat, mark(k, step.positions.tolist()), k_flat)
    return read(keys, mask)


def expected(entries):
    return sorted((e.frame, e.position, e.prompt) for e in entries if e is not None)


@pytest.mark.parametrize("global_sink", [True, False])
@pytest.mark.parametrize("switches", [(4, 9, 17, 18), (1, 2, 30), (3,)], ids=["mixed", "early", "at-capacity"])
def test_longlive_recache_matches_longlive(global_sink, switches):
    """Switch chunks: 4 (t = 12: the sink is rewritten, LongLive's quirk), 1-3 (inside the first 12
    frames), 9, 17, 18 and 30 (t > 12: the sink is protected; two switches in a row)."""
    ref = LongLiveCache(LongLiveSetup(sink=S, local_attn_size=S + W, chunk=C, global_sink=global_sink))
    mem = ContextMemory(make_spec("sink", {"sink": S, "window": W}), LAYOUT, key_rotation=mark)
    prompt = 0
    for chunk in range(40):
        start = chunk * C
        if chunk in switches:
            prompt += 1
            done = ref.switch()
            frames = mem.begin_recache(start, "longlive", flush=not global_sink)
            written = [q.frame for q in done.queries if q.slot is not None]  # the others change nothing
            assert frames == written, f"switch at {start}: re-encoded frames"
            assert one_pass(mem, frames, prompt) == expected(done.keys), f"switch at {start}: what the pass attends"
            mem.commit()
        step = ref.generate_chunk()
        mem.begin_chunk(start, C)
        assert one_pass(mem, range(start, start + C), prompt) == expected(step.keys), f"chunk {chunk} attends"
        mem.commit()


def test_window_recache_differs_from_longlive_as_documented():
    """Ours re-encodes only the 6 cached frames the next chunk attends; LongLive re-encodes the 9 frames of
    its window (the 3 oldest only as context for the others)."""
    window = ContextMemory(make_spec("sink"), LAYOUT, key_rotation=mark)
    longlive = ContextMemory(make_spec("sink"), LAYOUT, key_rotation=mark)
    for mem in (window, longlive):
        for chunk in range(10):
            mem.begin_chunk(chunk * C, C)
            one_pass(mem, range(chunk * C, chunk * C + C), 0)
            mem.commit()
    assert window.begin_recache(30, "window") == list(range(24, 30))
    assert longlive.begin_recache(30, "longlive") == list(range(21, 30))


def test_longlive_recache_runs_in_a_stream_and_keeps_what_it_needs(tiny_model_cfg, tiny_video_cfg):
    from contextforcing.model.wan import build_model

    model = build_model(tiny_model_cfg, seed=0)
    texts = [torch.randn(1, tiny_model_cfg.text_len, tiny_model_cfg.text_dim) for _ in range(2)]
    stream = VideoStream(model, texts[0], make_spec("sink"), tiny_video_cfg, recache="longlive")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(8):
            stream.step(stream.noise(C, generator), generator)
        assert sorted(stream.recent) == list(range(12, 24))  # the last 12 frames LongLive may re-encode
        stream.switch_prompt(texts[1])
    assert stream.events[-1].recached == tuple(range(15, 24))
    with pytest.raises(UserError, match="sink policy"):
        VideoStream(model, texts[0], make_spec("slow_fast"), tiny_video_cfg, recache="longlive")
    with pytest.raises(UserError, match="recache mode"):
        VideoStream(model, texts[0], make_spec("sink"), tiny_video_cfg, recache="lru")
