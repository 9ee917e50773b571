"""The Python front door (contextforcing/pipeline.py): one object from a model source, a call that returns a
video, a live iterator of decoded chunks that takes prompt switches, and `save` through the CLI's writer.
It is a thin layer: its frames equal the engine's (VideoStream + the codec) on the same seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import contextforcing as cf
from contextforcing.data.video import read_video
from contextforcing.loading import embedded_config
from contextforcing.sampling.stream import VideoStream, stream_video

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
    # The engine by hand: the same stream, seed and decoder.
    text = pipe.encode([PROMPT])[PROMPT]
    stream = VideoStream(pipe.model, text, pipe.memory, pipe.preset.video, pipe.sampling, max_frames=12)
    decoder = pipe.codec.stream_decoder()
    frames = []
    for chunk in stream_video(stream, 12, generator=torch.Generator().manual_seed(5)):
        pixels = decoder.decode(chunk.latents.float())[0]
        frames.append(((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy())
    assert np.array_equal(np.concatenate(frames), video.frames)
    assert [c.plan for c in video.chunks] == [p for p in video.plans]


def test_the_default_memory_is_the_one_the_model_was_trained_with(pipe):
    trained = embedded_config()["memory"]
    assert pipe.memory_for().to_dict() == {**cf.Memory.slow_fast().to_dict(), **trained["options"]}
    assert pipe.memory_for("slow_fast") == pipe.memory
    assert pipe.memory_for({"tau": 0.9}).options.slow == trained["options"]["slow"]
    assert pipe.memory_for({"tau": 0.9}).options.tau == 0.9
    assert pipe.memory_for(cf.Memory.slow_fast(slow=12)).options.slow == 12  # a Memory is taken as given
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
    events = [e for e in generation.stream.events if e["event"] == "switch"]
    assert [e["frame"] for e in events] == [6, 9]
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
        (lambda p: p.stream(PROMPT, seconds=3, switches={9.0: PAN}), "past the video"),
        (lambda p: p.stream(PROMPT, seconds=3, switches={-1.0: PAN}), "positive number of seconds"),
        (lambda p: p.stream(PROMPT, seconds=1, memory="full"), None),
        (lambda p: p.stream(PROMPT, memory="full"), "grows with the video"),
        (lambda p: p.stream(PROMPT, seconds=0), "--seconds must be positive"),
    ],
)
def test_bad_calls_are_one_line_errors(pipe, call, message):
    if message is None:
        call(pipe)
        return
    with pytest.raises(cf.UserError, match=message):
        call(pipe)


def test_random_pipeline_and_lazy_top_level_names():
    pipe = cf.Pipeline.random("tiny", seed=0)
    assert pipe.weights == "random-init" and pipe.memory == cf.Memory.slow_fast()
    assert set(cf.__all__) >= {"Pipeline", "Memory", "Sampling", "Video", "Generation", "ChunkPlan"}


def test_the_readme_example_runs(tmp_path, monkeypatch):
    """README's Python block, as written except shorter videos and without the Wan2.1 lines (no weights here)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    lines = [line for line in block.splitlines() if "Wan2.1" not in line and "a Wan2.1 directory" not in line]
    code = "\n".join(lines).replace("seconds=60", "seconds=3").replace("seconds=10", "seconds=2")
    code = code.replace("{20.0:", "{1.5:")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "out.mp4").is_file() and (tmp_path / "out.json").is_file()


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
