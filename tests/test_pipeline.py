"""The Python front door (contextforcing/pipeline.py): one object from a model source, a call that returns a
video, a live iterator of decoded chunks that takes prompt switches, and `save` through the CLI's writer.
It is a thin layer: its frames equal the engine's (VideoStream + the codec, driven by hand) on the same seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import contextforcing as cf
from contextforcing.io.video import read_video
from contextforcing.memory.headings import chunk_headings
from contextforcing.parts import embedded_config
from contextforcing.sampling.stream import VideoStream

PROMPT = "warm room, hold, lights on, black ball"  # the embedded model reads the panorama grammar
PAN = "warm room, pan left, lights on, black ball"
DARK = "warm room, hold, lights off, black ball"


@pytest.fixture(scope="module")
def pipe():
    return cf.Pipeline.from_pretrained(device="cpu")


def test_call_returns_the_engines_frames(pipe):
    video = pipe(PROMPT, seconds=3, seed=5)
    assert video.frames.dtype == np.uint8 and video.frames.shape == (1 + 11 * 4, 64, 64, 3) and video.fps == 16
    assert len(video.chunks) == len(video.plans) == 4 and video.record["latent_frames"] == 12
    # The engine by hand: the same stream, seed, camera headings and decoder.
    text = pipe.encode([PROMPT])[PROMPT]
    stream = VideoStream(pipe.model, text, pipe.memory, pipe.preset.video, pipe.sampling, max_frames=12)
    decoder, generator, heading, frames = pipe.codec.stream_decoder(), torch.Generator().manual_seed(5), 0.0, []
    for _ in range(4):
        headings = None
        if pipe.camera is not None:
            headings = [chunk_headings(heading, pipe.camera(PROMPT), stream.frame, 3)]
            heading = headings[0][-1]
        with torch.no_grad():
            latents = stream.step(stream.noise(3, generator), generator, headings=headings)
        pixels = decoder.decode(latents.float())[0]
        frames.append(((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy())
    assert np.array_equal(np.concatenate(frames), video.frames)
    # Frames are kept once: each chunk's frames are a view of the video's.
    assert all(np.shares_memory(c.frames, video.frames) for c in video.chunks)
    assert [c.plan for c in video.chunks] == [p for p in video.plans]


def test_the_default_memory_is_the_one_the_model_was_trained_with(pipe):
    trained = embedded_config()["memory"]
    assert pipe.memory_for().to_dict() == {**cf.Memory.slow_fast().to_dict(), **trained["options"]}
    assert pipe.memory_for("slow_fast") == pipe.memory
    assert pipe.memory_for({"tau": 0.9}).options.slow == trained["options"]["slow"]
    assert pipe.memory_for({"tau": 0.9}).options.tau == 0.9
    # A named constructor changes only what it was given; .exact() takes the policy's defaults for the rest.
    given = pipe.memory_for(cf.Memory.slow_fast(slow=12))
    assert given.to_dict() == {**pipe.memory.to_dict(), "slow": 12} and given.options.slow != pipe.memory.options.slow
    assert pipe.memory_for(cf.Memory.slow_fast(slow=12).exact()) == cf.Memory.slow_fast(slow=12)
    assert pipe.memory_for(cf.Memory.slow_fast(slow=12).exact()).options.tau == cf.Memory.slow_fast().options.tau
    assert pipe.memory_for(cf.Memory.rolling(window=8)) == cf.Memory.rolling(window=8)  # another policy: its own
    assert pipe.memory_for("rolling") == cf.Memory.rolling()
    released = pipe.memory_for({"layout": "released"}).options
    assert released.layout == "released" and released.slow == trained["options"]["slow"]
    with pytest.raises(cf.UserError, match="unknown memory policy"):
        pipe.memory_for("lru")


def test_stream_yields_chunks_live_and_takes_switches(pipe):
    generation = pipe.stream(PROMPT, seconds=6, seed=1, switches={1.6: PAN})
    first = next(generation)
    assert first.index == 0 and first.prompt == PROMPT and len(first.frames) == 9  # 1 + 2 x 4 pixel frames
    assert generation.switch(DARK) == 3  # after the scheduled switch at chunk 2 (1.5 s)
    chunks = [first, *generation]
    assert [c.prompt for c in chunks] == [PROMPT, PROMPT, PAN] + [DARK] * 5
    switched = [(c.index, c.switch.frame, c.switch.flush, c.switch.recache) for c in chunks if c.switch is not None]
    assert switched == [(2, 6, False, "window"), (3, 9, False, "window")]  # each chunk knows the switch it took
    assert all(0 < len(c.switch.recached) and max(c.switch.recached) < c.start for c in chunks if c.switch)
    record = generation.record(chunks)
    assert [s["chunk"] for s in record["switches"]] == [2, 3] and len(record["memory_trace"]) == 8


def test_a_refused_switch_changes_nothing(pipe):
    """The released cache has no flush: asking for one is refused before the stream changes, which goes on."""
    generation = pipe.stream(PROMPT, seconds=3, seed=1, memory={"layout": "released"})
    next(generation)
    with pytest.raises(cf.UserError, match="has no flush"):
        generation.switch(DARK, flush=True)
    assert [c.prompt for c in generation] == [PROMPT] * 3


def test_sampling_is_settable_per_call(pipe):
    base = pipe(PROMPT, seconds=1, seed=2)
    shifted = pipe(PROMPT, seconds=1, seed=2, sampling={"shift": 3.0})
    assert shifted.record["config"]["sampling"]["shift"] == 3.0
    assert not np.array_equal(base.frames, shifted.frames)
    with pytest.raises(cf.UserError, match="unknown sampling option"):
        pipe(PROMPT, seconds=1, sampling={"stpes": 2})


def test_save_writes_the_pair(pipe, tmp_path):
    video = pipe(PROMPT, seconds=1, seed=0)
    out = pipe.save(video, tmp_path / "v.mp4")
    frames, fps = read_video(out)
    assert len(frames) == len(video.frames) and fps == 16
    assert json.loads(out.with_suffix(".json").read_text())["memory_trace"] == video.record["memory_trace"]
    with pytest.raises(cf.UserError, match="must end in .mp4"):
        pipe.save(video, tmp_path / "v.avi")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p.stream("  ", seconds=1), "empty prompt"),
        (lambda p: p.stream(PROMPT, seconds=3, switches={9.0: PAN}), "at 9 s is past the end of the video"),
        (lambda p: p.stream(PROMPT, seconds=3, switches={-1.0: PAN}), "positive number of seconds"),
        (lambda p: p.stream(PROMPT, seconds=1, memory="full"), None),
        (lambda p: p.stream(PROMPT, memory="full"), "grows with the video"),
        (lambda p: p.stream(PROMPT, seconds=0), "seconds must be None .until closed. or a positive"),
    ],
)
def test_bad_calls_are_one_line_errors(pipe, call, message):
    if message is None:
        call(pipe)
        return
    with pytest.raises(cf.UserError, match=message):
        call(pipe)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p(PROMPT, seconds="2"), "seconds must be a positive, finite number of seconds, got '2'"),
        (lambda p: p(PROMPT, seconds=None), "seconds=None would never return from pipe"),
        (lambda p: p(PROMPT, seconds=True), "seconds must be a positive, finite number of seconds, got True"),
        (lambda p: p(PROMPT, 1, switches=[(0.75, PAN)]), "switches must be a dict of seconds of video to prompts"),
        (lambda p: p(PROMPT, 1, switches=PAN), "switches must be a dict .* got str"),
        (lambda p: p(PROMPT, 1, sed=3), "pipe.. got an unknown argument 'sed'; did you mean 'seed'"),
        (lambda p: p.stream(PROMPT, 1, swtiches={}), "Pipeline.stream.. got an unknown argument 'swtiches'; did you"),
        (lambda p: p(PROMPT, 1, seed="3"), "seed must be a whole number in \\[0, 2\\*\\*64\\), got '3'"),
        (lambda p: p(PROMPT, 1, memory=3), "memory must be None .the trained memory., a policy name .full, rolling"),
        (lambda p: p(PROMPT, 1, init_video="a.mp4", init_image="b.png"), "use either init_video or init_image"),
        (lambda p: cf.Pipeline.from_pretrained(devcie="cpu"), "unknown argument 'devcie'; did you mean 'device'"),
        (lambda p: cf.Pipeline.from_pretrained(device="tpu"), "unknown device 'tpu'; choose cpu, cuda or cuda:N"),
        (lambda p: cf.Pipeline.random("tiny", threads=0), "threads must be a whole number >= 1, got 0"),
    ],
)
def test_python_errors_name_the_argument_and_its_valid_values(pipe, call, message):
    """One line in Python's words (the argument, never a command-line flag), raised before any work."""
    with pytest.raises(cf.UserError, match=message) as caught:
        call(pipe)
    assert "--" not in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_an_unknown_keyword_is_also_a_type_error(pipe):
    with pytest.raises(TypeError, match="valid: .*seed"):
        pipe(PROMPT, 1, sed=3)


def test_video_and_chunk_reprs_are_short(pipe):
    video = pipe(PROMPT, seconds=3, seed=0)
    assert len(repr(video)) < 200 and "45 frames of 64x64 at 16 fps" in repr(video)
    assert len(repr(video.chunks[0])) < 300 and "DecodedChunk(index=0" in repr(video.chunks[0])


def test_progress_is_opt_in_and_on_stderr(pipe, capfd):
    pipe(PROMPT, seconds=1, seed=0)
    quiet = capfd.readouterr()
    assert quiet.err == "" and quiet.out == ""
    pipe(PROMPT, seconds=1.5, seed=0, progress=True)
    shown = capfd.readouterr()
    assert shown.out == "" and "2/2" in shown.err and "chunk" in shown.err


def test_random_pipeline_and_lazy_top_level_names():
    pipe = cf.Pipeline.random("tiny", seed=0)
    assert pipe.weights == "random-init" and pipe.memory == cf.Memory.slow_fast()
    assert set(cf.__all__) >= {"Pipeline", "Memory", "Sampling", "Video", "Generation", "ChunkPlan"}


def test_text_embeddings_are_cached_and_bounded(pipe, monkeypatch):
    from contextforcing import pipeline as module

    monkeypatch.setattr(module, "MAX_CACHED_PROMPTS", 3)
    pipe._texts.clear()
    prompts = ["plain warm room", "plain cool room", "striped cool room", "checkered forest room"]
    first = pipe.encode(prompts[:1])[prompts[0]]
    for p in prompts[1:]:
        pipe.encode([p])
    assert list(pipe._texts) == prompts[1:]  # the least recently used went
    assert torch.equal(pipe.encode(prompts[:1])[prompts[0]], first)


def test_a_closed_generation_takes_no_more_switches(pipe):
    generation = pipe.stream(PROMPT, seconds=6)
    next(generation)
    generation.close()
    with pytest.raises(cf.UserError, match="the generation is closed: it takes no more prompt switches"):
        generation.switch(PAN)
    assert next(generation, None) is None and [p.text for p in generation.prompts] == [PROMPT]


def test_every_model_comes_through_from_pretrained(tmp_path):
    """Random weights, a `world` checkpoint with the embedded parts (what the evaluation scripts load) and the
    embedded model are all `from_pretrained`; two sources at once, or a weight flag that would be ignored, are
    refused before anything is read."""
    from contextforcing.model.checkpoints import save_safetensors

    random = cf.Pipeline.from_pretrained(preset="world", random_init=True, seed=1)
    assert random.weights == "random-init" and random.prompt_check is None
    path = save_safetensors(random.model.state_dict(), tmp_path / "w.safetensors")
    world = cf.Pipeline.from_pretrained(weights=path, memory="rolling")
    assert world.weights == str(path) and world.memory == cf.Memory.rolling() and world.prompt_check is not None
    assert all(torch.equal(p, q) for p, q in zip(world.model.state_dict().values(), random.model.state_dict().values()))
    assert len(world(PROMPT, 0.75, seed=0).frames) == 9  # the panorama codec and grammar came with it
    with pytest.raises(cf.UserError, match="random_init cannot be combined with source/checkpoint"):
        cf.Pipeline.from_pretrained(random_init=True, weights=path)
    with pytest.raises(cf.UserError, match="use_ema: only for source/checkpoint weights"):
        cf.Pipeline.from_pretrained(use_ema=True)
    with pytest.raises(cf.UserError, match="checkpoint .* does not exist"):
        cf.Pipeline.from_pretrained(weights=tmp_path / "none.safetensors")
