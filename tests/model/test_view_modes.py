"""The slots view (the store's attended prefix read in place, rotated-key buffer aligned with the slots; with
fixed shapes, the capacity read with a key mask) against the gather reference (tests/memory/gather_reference.py:
a gathered, rotated copy per plan): the same model output over long streams of every policy, in float32 and bf16.

Both memories are driven by the real streaming routine (`VideoStream`: 4 denoising passes + commit per
chunk, prompt switches with recache, flush), so folds, promotions (commit / any_pass, global / per layer),
recaches and flushes all change slots between chunks. Attention without a mask does not depend on the
order of its keys, so the two differ by float rounding only.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from engine_steps import steps
from gather_reference import use_gather

from contextforcing.config import ModelConfig, SamplingConfig
from contextforcing.memory.spec import make_spec
from contextforcing.model.wan import build_model
from contextforcing.sampling.stream import VideoStream

CHUNKS = 42
TOL = 1e-5  # float32

# tau above 0.99: the random-init model's chunks are alike, so a lower tau would never promote.
SURPRISAL = {"tau": 0.9995}
CASES = [
    ("full", {}, {}),
    ("rolling", {}, {}),
    ("sink", {}, {}),
    ("relative", {}, {}),
    ("ema_sink", {}, {}),
    ("ema_sink", {"sink": 2, "alpha": 0.5}, {}),
    ("slow_fast", SURPRISAL, {}),
    ("slow_fast", {"rule": "uniform", "interval": 2}, {}),
    ("slow_fast", {**SURPRISAL, "promote_scope": "per_layer"}, {}),
    ("slow_fast", {**SURPRISAL, "promote_on": "any_pass"}, {}),
    ("slow_fast", {**SURPRISAL, "promote_on": "any_pass", "promote_scope": "per_layer", "dedupe": False}, {}),
    ("slow_fast", {"rule": "uniform", "interval": 1, "positions": "absolute"}, {}),
    ("slow_fast", {**SURPRISAL, "layout": "released"}, {}),  # promotions re-plan a layer inside a pass
    ("retrieve", {"score": "keys", "bank": 8, "top_k": 3, "interval": 1}, {}),  # a bank, of which some is attended
    # prompt switches: recache of the fast window, with and without flushing sink and slow memory
    ("relative", {}, {"switch": 14}),
    ("ema_sink", {}, {"switch": 14, "flush": True}),
    ("slow_fast", SURPRISAL, {"switch": 14}),
    ("slow_fast", {**SURPRISAL, "promote_on": "any_pass"}, {"switch": 20, "flush": True}),
    ("slow_fast", {**SURPRISAL, "layout": "released"}, {"switch": 20}),
    ("full", {}, {"switch": 14}),
    ("retrieve", {"score": "keys", "bank": 8, "top_k": 3, "interval": 1}, {"switch": 20}),
    ("retrieve", {"score": "text", "bank": 8, "top_k": 3, "interval": 1}, {"switch": 20}),
]


@pytest.fixture(scope="module")
def model():
    """The tests' tiny model (tests/conftest.py), built once for this module."""
    cfg = ModelConfig(dim=48, ffn_dim=96, num_layers=2, num_heads=2, text_len=7, text_dim=20, freq_dim=32)
    return build_model(cfg, seed=0)


def texts(model, batch=1, n=2):
    c = model.config
    return [torch.randn(batch, c.text_len, c.text_dim, generator=torch.Generator().manual_seed(i)) for i in range(n)]


def stream_in_mode(model, text, policy, options, video, view_mode, **kwargs) -> VideoStream:
    """A VideoStream whose memories are the library's ("slots") or the gather reference ("gather")."""
    stream = VideoStream(
        model, text, make_spec(policy, options), video, max_frames=CHUNKS * video.chunk_frames, **kwargs
    )
    if view_mode == "gather":
        use_gather(stream)
    return stream


def rollout(model, video, policy, options, view_mode, *, switch=None, flush=False, batch=1, **kwargs):
    text, other = texts(model, batch)
    stream = stream_in_mode(model, text, policy, options, video, view_mode, **kwargs)
    chunks = steps(stream, CHUNKS * video.chunk_frames, {switch: other} if switch is not None else None, flush)
    return stream, chunks


def _id(case):
    policy, options, events = case
    return "-".join([policy, *(f"{k}={v}" for k, v in {**options, **events}.items())])


@pytest.mark.parametrize("fixed_shapes", [False, True], ids=["attended", "fixed-shapes"])
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_slots_view_equals_the_gather_reference(model, tiny_video_cfg, case, fixed_shapes):
    policy, options, events = case
    ref_stream, ref = rollout(model, tiny_video_cfg, policy, options, "gather", **events)
    stream, got = rollout(model, tiny_video_cfg, policy, options, "slots", fixed_shapes=fixed_shapes, **events)
    for index, (a, b) in enumerate(zip(ref, got)):
        plans = [dataclasses.replace(c.plan, retrieval=None) for c in (a, b)]  # relevance: compared below
        assert (plans[0], a.update.promoted, a.update.evicted) == (plans[1], b.update.promoted, b.update.evicted), (
            f"chunk {index}: the memories planned differently"
        )
        if a.plan.retrieval is not None:  # read from keys that differ by float rounding
            assert b.plan.retrieval == pytest.approx(a.plan.retrieval, abs=1e-5)
        if a.update.similarity is not None:  # the keys it is taken from differ by float rounding
            assert abs(a.update.similarity - b.update.similarity) <= 1e-5
        err = (a.latents - b.latents).abs().max().item()
        assert err <= TOL, f"chunk {index}: slots view differs from the gather reference by {err:.3g}"
    # Rotated once per chunk per layer with context, in both modes; a promotion inside a pass (released
    # layout) re-rotates its layer in the slots view, where the gather reference rotates lazily.
    layers = model.config.num_layers
    assert ref_stream.memory.rotations >= (CHUNKS - 2) * layers
    if options.get("layout") == "released":
        promotions = sum(len(c.update.promoted) for c in got)
        assert stream.memory.rotations <= ref_stream.memory.rotations + promotions * layers
    else:
        assert stream.memory.rotations == ref_stream.memory.rotations
    if policy == "slow_fast" and options.get("rule") != "uniform":
        assert any(c.plan.tier("slow") for c in got), "surprisal never promoted: the case tests nothing"


BF16_CASES = [("sink", {}, {}), ("slow_fast", {"rule": "uniform", "interval": 2}, {"switch": 14})]
BF16_TOL = 0.05  # bf16 keeps 8 bits of mantissa: summation order moves outputs of order 1 by a few 1e-3


@pytest.mark.parametrize("case", BF16_CASES, ids=[_id(c) for c in BF16_CASES])
def test_slots_view_equals_the_gather_reference_in_bf16(model, tiny_video_cfg, case):
    policy, options, events = case
    half = build_model(model.config, seed=0).to(torch.bfloat16)
    _, ref = rollout(half, tiny_video_cfg, policy, options, "gather", **events)
    _, got = rollout(half, tiny_video_cfg, policy, options, "slots", **events)
    assert all(a.plan == b.plan for a, b in zip(ref, got))
    err = max((a.latents.float() - b.latents.float()).abs().max().item() for a, b in zip(ref, got))
    assert err <= BF16_TOL, f"bf16 slots view differs from the gather reference by {err:.3g}"


def test_batch_and_guidance_branches(model, tiny_video_cfg):
    """Two conditioning branches (one memory each) and a batch of 2."""
    _, uncond = texts(model, batch=2)
    kwargs = dict(sampling=SamplingConfig(guidance_scale=3.0), uncond_text=uncond, euler_num_steps=3, batch=2)
    _, ref = rollout(model, tiny_video_cfg, "slow_fast", {"rule": "uniform"}, "gather", **kwargs)
    _, got = rollout(model, tiny_video_cfg, "slow_fast", {"rule": "uniform"}, "slots", **kwargs)
    assert max((a.latents - b.latents).abs().max().item() for a, b in zip(ref, got)) <= TOL


def test_autograd_gets_copies_and_the_same_gradients(model, tiny_video_cfg):
    """With autograd recording (training rollouts) the slots mode hands over copies, never its buffers, and
    gradients equal the reference's, gradient checkpointing included."""
    text, _ = texts(model)
    grads = {}
    for view_mode in ("gather", "slots"):
        for checkpointing in (False, True):
            model.zero_grad()
            model.gradient_checkpointing = checkpointing
            stream = stream_in_mode(
                model, text, "slow_fast", {"rule": "uniform", "interval": 1}, tiny_video_cfg, view_mode, trainable=True
            )
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for _ in range(8):
                    stream.step(stream.noise(3, generator), generator)
            # Three chunks with a graph: later chunks rewrite the slot buffers before the backward pass.
            loss = sum(
                stream.step(stream.noise(3, generator), generator, exit_step=1).square().mean() for _ in range(3)
            )
            loss.backward()
            grads[view_mode, checkpointing] = [p.grad.clone() for p in model.parameters()]
    model.gradient_checkpointing = False
    reference = grads["gather", False]
    for key, got in grads.items():
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(reference, got)), key
