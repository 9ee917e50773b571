"""The three forward modes agree: cached streaming == block-causal parallel == clean context + target."""

import pytest
import torch

from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.spec import make_spec
from contextforcing.model.attention import block_causal_mask
from contextforcing.model.wan import build_model

CHUNKS = 4


@pytest.fixture
def setup(tiny_model_cfg, tiny_video_cfg):
    model = build_model(tiny_model_cfg, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    c = tiny_video_cfg.chunk_frames
    frames = CHUNKS * c
    x = torch.randn(2, tiny_model_cfg.in_dim, frames, tiny_video_cfg.latent_height, tiny_video_cfg.latent_width)
    t = torch.rand(2, frames) * 1000
    text = torch.randn(2, tiny_model_cfg.text_len, tiny_model_cfg.text_dim)
    return model, x, t, text, c


def _memory(model, video_cfg, policy="full", options=None, max_frames=64):
    layout = MemoryLayout.for_model(model.config, video_cfg)
    rotation = model.key_rotation(video_cfg.latent_height, video_cfg.latent_width)
    return ContextMemory(make_spec(policy, options), layout, key_rotation=rotation, batch=2, max_frames=max_frames)


# The released Context Forcing cache is a plain KV cache until its 21 slots are full; without promotions
# (tau = -1) it attends every past frame at its own index, as the block-causal parallel forward does.
PLAIN_WHILE_FILLING = [("full", None), ("slow_fast", {"layout": "released", "tau": -1.0})]


@torch.no_grad()
@pytest.mark.parametrize("policy, options", PLAIN_WHILE_FILLING, ids=["full", "released-filling"])
def test_cached_streaming_equals_block_causal_parallel(setup, tiny_video_cfg, policy, options):
    model, x, t, text, c = setup
    parallel = model(x, t, text, frame_mask=block_causal_mask(x.shape[2], c))
    memory = _memory(model, tiny_video_cfg, policy, options)
    for k in range(CHUNKS):
        chunk = slice(k * c, (k + 1) * c)
        memory.begin_chunk(k * c, c)
        # A noisy denoising pass first: it must leave no trace in the memory.
        model(torch.randn_like(x[:, :, chunk]), torch.full_like(t[:, chunk], 900.0), text, memory=memory)
        out = model(x[:, :, chunk], t[:, chunk], text, memory=memory, commit=True)
        memory.commit()
        assert (out - parallel[:, :, chunk]).abs().max().item() <= 1e-5, f"chunk {k}"
    # Keys were rotated once per chunk per layer, not once per pass.
    assert memory.rotations == (CHUNKS - 1) * model.config.num_layers


@torch.no_grad()
def test_a_commit_pass_without_its_flow_writes_the_same_memory(setup, tiny_video_cfg):
    """flow=False skips the last layer after its keys and values and the head: every stored K/V is the same
    (the promotions that read them too), and what later chunks attend with it."""
    model, x, t, text, c = setup
    options = {"tau": 0.999, "slow": 3}  # promotes often: the promotion rule reads the commit pass's keys
    memories = [_memory(model, tiny_video_cfg, "slow_fast", options) for _ in range(2)]
    for k in range(CHUNKS):
        chunk = slice(k * c, (k + 1) * c)
        outs = []
        for memory, flow in zip(memories, (True, False)):
            memory.begin_chunk(k * c, c)
            outs.append(model(x[:, :, chunk], torch.full_like(t[:, chunk], 500.0), text, memory=memory))
            written = model(x[:, :, chunk], t[:, chunk], text, memory=memory, commit=True, flow=flow)
            assert (written is None) == (not flow)
            memory.commit()
        assert torch.equal(outs[0], outs[1]), f"chunk {k}: the denoising pass read another memory"
        assert memories[0].tiers() == memories[1].tiers()
        for a, b in zip(memories[0].k + memories[0].v, memories[1].k + memories[1].v):
            assert torch.equal(a, b), f"chunk {k}: the stored keys or values differ"
    assert memories[0].tiers()["slow"], "no promotion happened: the rule never read the keys"
    with pytest.raises(ValueError, match="commit pass"):
        model(x[:, :, :c], t[:, :c], text, flow=False)


@torch.no_grad()
def test_context_target_mode_equals_streaming(setup, tiny_video_cfg):
    model, x, t, text, c = setup
    parallel = model(x, t, text, frame_mask=block_causal_mask(x.shape[2], c))
    k = CHUNKS - 1
    context, target = x[:, :, : k * c], x[:, :, k * c :]
    out = model.forward_with_context(
        target,
        t[:, k * c :],
        text,
        context,
        range(k * c),
        range(k * c, (k + 1) * c),
        t_context=t[:, : k * c],
        context_mask=block_causal_mask(k * c, c),
    )
    assert (out - parallel[:, :, k * c :]).abs().max().item() <= 1e-5


def test_gradient_checkpointing_gives_identical_gradients(setup):
    model, x, t, text, c = setup
    mask = block_causal_mask(x.shape[2], c)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        model(x, t, text, frame_mask=mask).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    model.gradient_checkpointing = False
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


@torch.no_grad()
def test_flex_attention_backend_matches_sdpa(setup):
    pytest.importorskip("torch.nn.attention.flex_attention")
    model, x, t, text, c = setup
    mask = block_causal_mask(x.shape[2], c)
    expected = model(x, t, text, frame_mask=mask)
    model.attention_backend = "flex"
    try:
        got = model(x, t, text, frame_mask=mask)
    finally:
        model.attention_backend = "sdpa"
    assert (got - expected).abs().max().item() <= 1e-5


def test_positions_past_1024_frames_work(setup):
    """No RoPE table: absolute positions beyond Wan's 1024-entry table are computed on the fly."""
    model, x, t, text, c = setup
    with torch.no_grad():
        out = model(x[:, :, :c], t[:, :c], text, positions=[5000, 5001, 5002])
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_the_rope_axes_are_made_a_tensor_once_per_device_and_reused_by_every_pass(setup, tiny_video_cfg):
    """A tensor built from host floats is a synchronous host-to-device copy on a GPU: a pass must not make one."""
    model, x, t, text, c = setup
    memory = _memory(model, tiny_video_cfg)
    memory.begin_chunk(0, c)
    model(x[:, :, :c], t[:, :c], text, memory=memory)
    made = dict(model.rope_axes._on_device)
    assert list(made) == [x.device] and len(made[x.device]) == 3
    model(x[:, :, :c], t[:, :c], text, memory=memory, commit=True)
    memory.commit()
    memory.begin_chunk(c, c)  # the next chunk's rotation of its context too
    model(x[:, :, c : 2 * c], t[:, c : 2 * c], text, memory=memory)
    assert model.rope_axes._on_device.keys() == made.keys()
    assert all(a is b for a, b in zip(model.rope_axes._on_device[x.device], made[x.device]))
    expected = (model.rope_axes.time, model.rope_axes.height, model.rope_axes.width)
    assert [f.tolist() for f in made[x.device]] == [list(e) for e in expected]  # the float64 values, exactly


def test_cross_attention_cache_is_exact_and_training_streams_never_cut_gradients(setup, tiny_video_cfg):
    from contextforcing.memory.cross import CrossAttentionCache
    from contextforcing.sampling.stream import VideoStream

    model, x, t, text, c = setup
    cache = CrossAttentionCache(text)
    with torch.no_grad():
        plain = model(x, t, text)
        first = model(x, t, cache)  # fills the cache
        again = model(x, t, cache)  # reads it
    assert len(cache.key_values) == model.config.num_layers
    assert torch.equal(plain, first) and torch.equal(first, again)
    # A training stream hands the model the text itself on every pass: the text weights receive gradients,
    # also after inference chunks of the same stream ran without autograd.
    stream = VideoStream(model, text, make_spec("rolling"), tiny_video_cfg, trainable=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        stream.step(stream.noise(c, generator), generator)
    model.zero_grad()
    stream.step(stream.noise(c, generator), generator, exit_step=1).square().mean().backward()
    assert model.text_embedding[0].weight.grad.abs().sum() > 0
    assert model.blocks[0].cross_attn.k.weight.grad.abs().sum() > 0
    inference = VideoStream(model, text, make_spec("rolling"), tiny_video_cfg)
    assert isinstance(inference.branches[0].text, CrossAttentionCache)


@torch.no_grad()
def test_first_block_keys_are_what_every_pass_hands_the_memory(setup, tiny_video_cfg):
    """`first_block_keys` of a whole clip == the first block's pre-RoPE keys of each cached chunk pass, whatever
    the chunk attends (the surprisal rule with key_layers=first reads them; training computes them at once)."""
    model, x, t, text, c = setup
    whole = model.first_block_keys(x, t)
    memory = _memory(model, tiny_video_cfg, "slow_fast", {"slow": 2})
    seen = []
    original = memory.exchange

    def record(layer, k, v, commit, copy):
        if layer == 0:
            seen.append(k.clone())
        return original(layer, k, v, commit=commit, copy=copy)

    memory.exchange = record
    for i in range(CHUNKS):
        memory.begin_chunk(i * c, c)
        model(x[:, :, i * c : (i + 1) * c], t[:, i * c : (i + 1) * c], text, memory=memory, commit=True)
        memory.commit()
    tokens = whole.shape[1] // x.shape[2]
    for i, k in enumerate(seen):
        assert torch.allclose(k, whole[:, i * c * tokens : (i + 1) * c * tokens], atol=1e-5)
