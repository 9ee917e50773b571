"""A sidecar's memory trace reads back into the very plans and updates the generation made (trace.py), for
every layout that writes the trace differently: copies attended beside their frame, the released cache,
per-layer slow frames, windows without a slow tier, a retrieval's bank, a room-anchored model's headings."""

import json

import pytest

import contextforcing as cf
from contextforcing.io.sidecar import read_plan, read_sidecar, read_update

PROMPT = "warm room, hold, lights on, black ball"
PAN = "warm room, pan left, lights on, black ball"


@pytest.fixture(scope="module")
def pipe():
    return cf.Pipeline.from_pretrained(device="cpu")


@pytest.mark.parametrize(
    "memory",
    [
        None,
        {"tau": 0.999},  # promotes often: the slow tier fills and drops
        {"tau": 0.999, "dedupe": False},  # a promoted frame attended twice (its copy and itself)
        {"tau": 0.999, "promote_scope": "per_layer"},  # slow frames per layer
        {"layout": "released", "tau": 0.999},  # slots, copies at slot positions
        "rolling",
        "ema_sink",
        "retrieve",  # every bank keyframe with its relevance; the camera pans, so headings change
    ],
)
def test_each_chunks_plan_and_update_read_back_exactly(pipe, memory):
    video = pipe(PROMPT, seconds=12, seed=3, memory=memory, switches={4.5: PAN})
    entries = json.loads(json.dumps(video.record["memory_trace"]))  # through JSON, as a sidecar holds it
    for chunk, entry in zip(video.chunks, entries):
        assert read_plan(entry) == chunk.plan and read_update(entry) == chunk.update


def test_a_saved_video_reads_back_typed(pipe, tmp_path):
    video = pipe(PROMPT, seconds=6, seed=1, memory={"tau": 0.999}, switches={3.0: PAN})
    pipe.save(video, tmp_path / "v.mp4")
    saved = read_sidecar(tmp_path / "v.json")
    assert [c.plan for c in saved.chunks] == video.plans
    assert saved.switches == ((4, PAN),) and [c.prompt for c in saved.chunks] == [PROMPT] * 4 + [PAN] * 4
    assert saved.tau == 0.999 and saved.memory == pipe.memory_for({"tau": 0.999}) and saved.chunk_seconds == 0.75


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json", "not a JSON sidecar"),
        ('{"prompt": "p"}', "no memory_trace"),
        ('{"memory_trace": [{"chunk": 0}]}', "a memory_trace entry cannot be read"),
    ],
)
def test_unreadable_sidecars_are_one_line(tmp_path, content, message):
    path = tmp_path / "v.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(cf.UserError, match=message) as caught:
        read_sidecar(path)
    assert "\n" not in str(caught.value)
