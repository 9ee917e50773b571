"""Room-anchored width positions (`rope_width=room`): each token sits at its column plus its frame's camera heading,
on a circle of `room_tokens` tokens. Exact where it must be: off by default (screen columns, Wan's frequencies),
only heading differences matter, a full turn changes nothing, streaming through the memory (stored frames keep
their headings, promoted copies included) equals the parallel forward, and a stored key is rotated at its own
frame's heading."""

import dataclasses

import pytest
import torch

from contextforcing.config import ModelConfig, get_preset
from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.spec import make_spec
from contextforcing.model.attention import block_causal_mask
from contextforcing.model.rope import apply_rope, rope_frequencies, rope_split
from contextforcing.model.wan import build_model

ROOM = 8  # tokens around (the tiny grid is 3 tokens wide)
CHUNKS = 4


@pytest.fixture
def room_cfg(tiny_model_cfg) -> ModelConfig:
    return dataclasses.replace(tiny_model_cfg, rope_width="room", room_tokens=ROOM).validate()


@pytest.fixture
def room_model(room_cfg):
    model = build_model(room_cfg, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _inputs(cfg, video, frames, batch=2):
    x = torch.randn(batch, cfg.in_dim, frames, video.latent_height, video.latent_width)
    t = torch.rand(batch, frames) * 1000
    text = torch.randn(batch, cfg.text_len, cfg.text_dim)
    headings = torch.randint(-6, 7, (batch, frames)).double() / 2  # half-token steps, as the panorama's pans
    return x, t, text, headings


def test_screen_positions_are_the_default_and_take_no_headings(tiny_model_cfg, tiny_video_cfg):
    assert tiny_model_cfg.rope_width == "screen" and not get_preset("wan2.1-t2v-1.3b").model.room_anchored
    model = build_model(tiny_model_cfg, seed=0)
    x, t, text, headings = _inputs(tiny_model_cfg, tiny_video_cfg, 3)
    with pytest.raises(ValueError, match="screen columns"):
        model(x, t, text, headings=headings)
    # headings of 0 add nothing to the columns
    plain = rope_frequencies(range(2), 2, 3, 24, 10000.0)
    zero = rope_frequencies(range(2), 2, 3, 24, 10000.0, headings=torch.zeros(1, 2))
    assert torch.equal(plain, zero[0])


def test_the_width_axis_wraps_round_the_room_and_only_heading_differences_matter():
    head_dim, width = 24, 3
    _, _, dw = rope_split(head_dim)
    q, k = torch.randn(1, 2 * width, 1, head_dim), torch.randn(1, 2 * width, 1, head_dim)
    base = torch.tensor([[0.5, -2.0]], dtype=torch.float64)

    def logits(headings):
        f = rope_frequencies([4, 9], 1, width, head_dim, 10000.0, headings=headings, room_tokens=ROOM)
        return apply_rope(q.double(), f)[0, :, 0] @ apply_rope(k.double(), f)[0, :, 0].T

    for shift in (3.5, float(ROOM), -2 * ROOM):
        assert torch.allclose(logits(base + shift), logits(base), atol=1e-9)
    # a token and the token one column over at one heading less sit at the same room place: same width angles
    f = rope_frequencies([0, 0], 1, width, head_dim, 10000.0, headings=torch.tensor([[1.0, 0.0]]), room_tokens=ROOM)
    angles = f.angle()[0]
    assert torch.allclose(angles[0, -dw // 2 :], angles[width + 1, -dw // 2 :], atol=1e-12)  # column 0 at 1 = 1 at 0


@torch.no_grad()
def test_a_room_model_streamed_through_its_memory_equals_its_parallel_forward(room_model, room_cfg, tiny_video_cfg):
    c = tiny_video_cfg.chunk_frames
    x, t, text, headings = _inputs(room_cfg, tiny_video_cfg, CHUNKS * c)
    parallel = room_model(x, t, text, headings=headings, frame_mask=block_causal_mask(x.shape[2], c))
    layout = MemoryLayout.for_model(room_cfg, tiny_video_cfg)
    rotation = room_model.key_rotation(tiny_video_cfg.latent_height, tiny_video_cfg.latent_width)
    memory = ContextMemory(make_spec("full"), layout, key_rotation=rotation, batch=2, max_frames=64, headings=True)
    for k in range(CHUNKS):
        chunk = slice(k * c, (k + 1) * c)
        memory.begin_chunk(k * c, c, headings[:, chunk].tolist())
        room_model(torch.randn_like(x[:, :, chunk]), torch.full_like(t[:, chunk], 900.0), text, memory=memory)
        out = room_model(x[:, :, chunk], t[:, chunk], text, memory=memory, commit=True)
        memory.commit()
        assert (out - parallel[:, :, chunk]).abs().max().item() <= 1e-5, f"chunk {k}"


@torch.no_grad()
def test_every_attended_key_is_rotated_at_its_own_frames_heading(room_model, room_cfg, tiny_video_cfg):
    """slow_fast with promotions every other chunk: each stored key the chunk attends (sink, promoted slow copies,
    fast) is its pre-RoPE key rotated at the plan's position and the heading its frame was made at."""
    c = tiny_video_cfg.chunk_frames
    spec = make_spec("slow_fast", {"sink": 3, "slow": 3, "fast": 6, "rule": "uniform", "interval": 1})
    layout = MemoryLayout.for_model(room_cfg, tiny_video_cfg)
    rotation = room_model.key_rotation(tiny_video_cfg.latent_height, tiny_video_cfg.latent_width)
    memory = ContextMemory(spec, layout, key_rotation=rotation, batch=2, headings=True)
    x, t, text, headings = _inputs(room_cfg, tiny_video_cfg, 10 * c)
    gh, gw = room_model.grid(tiny_video_cfg.latent_height, tiny_video_cfg.latent_width)
    promoted = 0
    for k in range(10):
        chunk = slice(k * c, (k + 1) * c)
        plan = memory.begin_chunk(k * c, c, headings[:, chunk].tolist())
        g = memory.groups[0]
        for a, slot in zip(plan.context, g.view_index.tolist() if g.view_index is not None else []):
            f = rope_frequencies(
                [a.position],
                gh,
                gw,
                room_cfg.head_dim,
                room_cfg.rope_theta,
                headings=headings[:, a.frame : a.frame + 1],
                room_tokens=ROOM,
            )
            expected = apply_rope(memory.k[0][:, slot], f)
            assert torch.allclose(memory.k_rot[0][:, slot], expected, atol=1e-6), (k, a)
            assert plan.headings[a.frame] == headings[0, a.frame].item()
        room_model(x[:, :, chunk], t[:, chunk], text, memory=memory, commit=True)
        promoted += len(memory.commit().promoted)
    assert promoted >= 3 and any(a.tier == "slow" for a in plan.context)
