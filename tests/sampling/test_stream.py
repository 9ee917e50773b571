"""The streaming engine (`VideoStream`): determinism, prompt switches (keep / flush), prefill, CFG sampling, known
frames. It is driven by hand (tests/sampling/engine_steps.py), one `step` per chunk as `Generation` drives it."""

import pytest
import torch
from engine_steps import steps as _steps

from contextforcing.config import SamplingConfig
from contextforcing.memory.spec import make_spec
from contextforcing.model.wan import build_model
from contextforcing.sampling.stream import SwitchEvent, VideoStream

FRAMES = 36  # 12 chunks


@pytest.fixture
def model(tiny_model_cfg):
    return build_model(tiny_model_cfg, seed=0)


def _texts(cfg, n=2):
    return [torch.randn(1, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(i)) for i in range(n)]


def _run(model, video, text, switches=None, flush=False, policy="slow_fast", options=None, **kw):
    stream = VideoStream(
        model,
        text,
        make_spec(policy, options or {"rule": "uniform", "interval": 1}),
        video,
        max_frames=FRAMES + 12,
        **kw,
    )
    return stream, _steps(stream, FRAMES, switches, flush)


def test_same_seed_same_latents(model, tiny_video_cfg):
    text, _ = _texts(model.config)
    _, a = _run(model, tiny_video_cfg, text)
    _, b = _run(model, tiny_video_cfg, text)
    assert all(torch.equal(x.latents, y.latents) for x, y in zip(a, b))


def test_switch_changes_only_what_follows_and_keeps_sink_and_slow(model, tiny_video_cfg):
    text, other = _texts(model.config)
    plain_stream, plain = _run(model, tiny_video_cfg, text)
    stream, switched = _run(model, tiny_video_cfg, text, switches={6: other})
    for k in range(6):
        assert torch.equal(plain[k].latents, switched[k].latents)
    assert not torch.allclose(plain[6].latents, switched[6].latents)
    assert stream.events == [SwitchEvent(frame=18, recached=(15, 16, 17), flush=False, recache="window")]
    # Sink and slow memory were kept: chunk 6 attends the same sink/slow frames in both runs.
    for key in ("sink", "slow", "fast", "positions"):
        assert switched[6].trace()[key] == plain[6].trace()[key]
    assert stream.branches[0].text.text is other


def test_switch_recache_rewrites_the_fast_window_and_keeps_the_sink(model, tiny_video_cfg):
    text, other = _texts(model.config)
    stream = VideoStream(model, text, make_spec("slow_fast"), tiny_video_cfg, max_frames=FRAMES)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        stream.step(stream.noise(3, gen), gen)
    memory = stream.memory
    group = memory.groups[0]

    def stored(frames):  # the last layer's pre-RoPE keys of each frame, wherever the store keeps it
        return [memory.k[-1][0, group.slots.slot[("main", f)]].clone() for f in frames]

    # Layer 0's keys are computed before any cross-attention, so only later layers can see the new text.
    window, sink = stored((15, 16, 17)), stored((0, 1, 2))
    stream.switch_prompt(other)
    assert all(not torch.equal(a, b) for a, b in zip(stored((15, 16, 17)), window))
    assert all(torch.equal(a, b) for a, b in zip(stored((0, 1, 2)), sink))
    assert memory.tiers()["sink"] == [0, 1, 2]


def test_flush_drops_sink_and_slow_and_refills_the_sink(model, tiny_video_cfg):
    text, other = _texts(model.config)
    stream, chunks = _run(model, tiny_video_cfg, text, switches={6: other}, flush=True)
    assert chunks[6].trace()["sink"] == [] and chunks[6].trace()["slow"] == []
    assert chunks[6].trace()["fast"] == [15, 16, 17, 18, 19, 20]
    assert chunks[7].trace()["sink"] == [18, 19, 20]
    assert stream.events[0].flush is True


def test_prefill_commits_given_latents_first(model, tiny_video_cfg):
    text, _ = _texts(model.config)
    init = torch.randn(1, model.config.in_dim, 6, tiny_video_cfg.latent_height, tiny_video_cfg.latent_width)
    stream = VideoStream(model, text, make_spec("sink"), tiny_video_cfg, max_frames=FRAMES)
    stream.prefill(init)
    assert stream.frame == 6 and stream.memory.tiers()["sink"] == [0, 1, 2]
    (chunk,) = _steps(stream, 3)
    assert chunk.start == 6 and chunk.trace()["sink"] == [0, 1, 2] and chunk.trace()["fast"][:3] == [3, 4, 5]
    # The memory holds exactly what a commit pass over the prefilled latents writes.
    fresh = VideoStream(model, text, make_spec("sink"), tiny_video_cfg, max_frames=FRAMES)
    fresh.memory.begin_chunk(0, 3)
    with torch.no_grad():
        model(init[:, :, :3], torch.zeros(1, 3), fresh.branches[0].text, memory=fresh.memory, commit=True)
    fresh.memory.commit()  # the commit pass's keys and values are written here
    slot = stream.memory.groups[0].slots.slot[("main", 0)]
    fresh_slot = fresh.memory.groups[0].slots.slot[("main", 0)]
    assert torch.allclose(stream.memory.k[1][:, slot], fresh.memory.k[1][:, fresh_slot])


def test_classifier_free_guidance_multistep_sampling(model, tiny_video_cfg):
    text, uncond = _texts(model.config)
    guided = SamplingConfig(guidance_scale=3.0)
    stream, chunks = _run(model, tiny_video_cfg, text, sampling=guided, uncond_text=uncond, euler_num_steps=4)
    assert len(stream.branches) == 2  # one memory per conditioning, as teacher sampling needs
    assert stream.steps[0] == 1000.0 and len(stream.steps) == 4
    # Guidance 1 is the conditional model alone.
    _, cond_only = _run(model, tiny_video_cfg, text, euler_num_steps=4)
    _, scale_one = _run(
        model, tiny_video_cfg, text, sampling=SamplingConfig(guidance_scale=1.0), uncond_text=uncond, euler_num_steps=4
    )
    assert torch.equal(cond_only[-1].latents, scale_one[-1].latents)
    assert not torch.allclose(chunks[-1].latents, cond_only[-1].latents)


def test_streaming_inference_builds_no_autograd_graph(model, tiny_video_cfg):
    text, _ = _texts(model.config)
    _, chunks = _run(model, tiny_video_cfg, text)
    assert all(c.latents.grad_fn is None and not c.latents.requires_grad for c in chunks)


def _latents(model, video, frames, seed):
    shape = (1, model.config.in_dim, frames, video.latent_height, video.latent_width)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_known_frames_are_shown_exactly_and_condition_the_others(model, tiny_video_cfg):
    text, _ = _texts(model.config)
    given = _latents(model, tiny_video_cfg, FRAMES, 3)
    known = {f: given[:, :, f : f + 1] for f in (4, 10, 11)}  # one frame of chunk 1, two of chunk 3
    _, plain = _run(model, tiny_video_cfg, text)
    stream = VideoStream(
        model, text, make_spec("slow_fast", {"rule": "uniform", "interval": 1}), tiny_video_cfg, max_frames=FRAMES + 12
    )
    chunks = _steps(stream, FRAMES, known=known)
    video = torch.cat([c.latents for c in chunks], dim=2)
    for f, latent in known.items():
        assert torch.equal(video[:, :, f : f + 1], latent)
    assert torch.equal(chunks[0].latents, plain[0].latents)  # nothing known yet: the same draw
    other = video[:, :, 3]  # frame 3 shares chunk 1 with the known frame 4 and attends to it
    assert not torch.allclose(other, plain[1].latents[:, :, 0], atol=1e-3)


def test_a_wholly_known_chunk_is_committed_as_prefill_commits_it(model, tiny_video_cfg):
    text, _ = _texts(model.config)
    given = _latents(model, tiny_video_cfg, 6, 4)
    spec = make_spec("slow_fast", {"rule": "surprisal"})
    streamed = VideoStream(model, text, spec, tiny_video_cfg, max_frames=FRAMES)
    known = {f: given[:, :, f : f + 1] for f in range(6)}
    _steps(streamed, 6, known=known)
    prefilled = VideoStream(model, text, spec, tiny_video_cfg, max_frames=FRAMES)
    prefilled.prefill(given)
    assert streamed.memory.tiers() == prefilled.memory.tiers()
    for layer in range(model.config.num_layers):
        assert torch.equal(streamed.memory.k[layer], prefilled.memory.k[layer])
        assert torch.equal(streamed.memory.v[layer], prefilled.memory.v[layer])
