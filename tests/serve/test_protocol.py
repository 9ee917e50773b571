"""The server end of the page, over a real WebSocket: what a tab receives is the Python API's stream (frames
and plans, exactly), switches land at the next chunk boundary, the server paces itself by what was played,
bad input is one line and changes nothing, the stream limit, closing a tab, and Download."""

import gc
import json
import urllib.error
import urllib.request
import weakref

import numpy as np
import pytest
from serve_harness import Chunk, PageClient, plan_tuples, reference, second_prompt, wait_until

from contextforcing.io.video import read_video
from contextforcing.pipeline import Prompt


def started(client: PageClient) -> dict:
    message = client.json()
    assert message["type"] == "started", message
    return message


def test_a_tab_receives_the_python_api_stream_exactly(pipe, client):
    memory = {"tau": 1.0, "slow": 3, "interval": 1}  # promote at every check: the slow tier fills and turns over
    client.send(type="start", prompt=pipe.example_prompt, seed=3, memory=memory)
    info = started(client)
    assert info["memory"] == pipe.memory_for(memory).to_dict() and info["tau"] == 1.0
    chunks, _ = client.chunks(10)
    expected = reference(pipe, 10, seed=3, memory=memory)
    assert any(c.plan.tier("slow") for c in expected) and any(c.update.slow_evicted for c in expected)
    for got, want in zip(chunks, expected):
        h, m = got.header, got.header["memory"]
        assert (h["index"], h["start"], h["first_frame"], h["count"]) == (
            want.index,
            want.start,
            want.first_frame,
            len(want.frames),
        )
        assert np.array_equal(got.frames, want.frames)
        context, current = plan_tuples(want)
        assert [(e["tier"], e["frame"], e["position"], e["copy"]) for e in m["context"]] == context
        assert [(e["frame"], e["position"]) for e in m["current"]] == current
        assert (m["promoted"], m["slow_evicted"], m["evicted"], m["similarity"]) == (
            list(want.update.promoted),
            list(want.update.slow_evicted),
            list(want.update.evicted),
            want.update.similarity,
        )
        assert sorted(map(int, h["thumbs"])) == want.plan.current_frames
        assert h["prompt"] == pipe.example_prompt and h["switched"] is None


def test_a_switch_lands_at_the_next_chunk_boundary(pipe, client):
    prompt, flush = second_prompt(pipe)
    client.send(type="start", prompt=pipe.example_prompt, seed=4)
    started(client)
    before, _ = client.chunks(3)
    client.send(type="switch", prompt=prompt, flush=flush)
    after, messages = client.chunks(4)
    switch = next(m for m in messages if m["type"] == "switch")
    at = switch["chunk"]
    assert before[-1].header["index"] < at <= after[0].header["index"] + 1  # never a chunk already under way
    chunks = before + after
    for c in chunks:
        assert c.header["prompt"] == (prompt if c.header["index"] >= at else pipe.example_prompt)
        assert (c.header["switched"] is not None) == (c.header["index"] == at)
    switched = next(c for c in chunks if c.header["index"] == at).header["switched"]
    assert switched["prompt"] == prompt and switched["flush"] == flush
    # The same switch at that chunk, from the Python API: the same frames, before and after it.
    expected = reference(pipe, len(chunks), seed=4, switches=[Prompt(prompt, at, flush)])
    for got, want in zip(chunks, expected):
        assert np.array_equal(got.frames, want.frames), f"chunk {want.index}"


def test_the_server_generates_only_lead_chunks_ahead_of_playback(pipe, server, client):
    client.send(type="start", prompt=pipe.example_prompt, seed=5)
    started(client)
    video = pipe.preset.video
    lead = server.hub.limits.lead_chunks * video.chunk_frames * video.vae_stride_t
    chunks, _ = client.chunks(1, played=False)
    while sum(c.header["count"] for c in chunks) < lead:
        chunks += client.chunks(1, played=False)[0]
    with pytest.raises(TimeoutError):  # nothing played: nothing more comes
        client.next(timeout=1.5)
    client.send(type="played", frames=sum(c.header["count"] for c in chunks))
    assert isinstance(client.next(timeout=30), Chunk)


def test_bad_input_is_one_line_and_the_server_keeps_serving(pipe, client):
    bad = [
        ({"type": "start", "prompt": "   "}, "empty prompt"),
        ({"type": "start", "prompt": pipe.example_prompt, "memory": {"slow": -1}}, "must not be negative"),
        ({"type": "start", "prompt": pipe.example_prompt, "memory": {"policy": "nope"}}, "unknown memory policy"),
        ({"type": "start", "prompt": pipe.example_prompt, "memory": {"sink": "abc"}}, "must be a number"),
        ({"type": "start", "prompt": pipe.example_prompt, "memory": {"policy": "full"}}, "give a length"),
        # The same check as the CLI and the Python API, against what the machine can hold: nothing is allocated.
        (
            {"type": "start", "prompt": pipe.example_prompt, "memory": {"slow": 30_000_000}},
            "memory option slow=30,000,000 (slow_fast) needs ",
        ),
        ({"type": "start", "prompt": "a" * 100_000}, "a message may be at most 65,536 bytes, got 100,"),
        ({"type": "start", "prompt": pipe.example_prompt, "memory": {"sink": [[[[[[[[[1]]]]]]]]]}}, "nest at most 8"),
        ({"type": "start", "prompt": pipe.example_prompt, "seed": -1}, "seed must be"),
        ({"type": "start", "prompt": pipe.example_prompt, "seconds": 1e9}, "--max-seconds"),
        ({"type": "switch", "prompt": pipe.example_prompt}, "no stream is running"),
        ({"type": "dance"}, "unknown message type"),
    ]
    unreadable = "not a prompt the model can read at all 123"
    try:
        pipe.check_prompt(unreadable)
    except Exception as err:  # the model's own one-line error is what the page must show
        bad.append(({"type": "start", "prompt": unreadable}, str(err)))
    for message, expected in bad:
        client.send(**message)
        reply = client.json()
        assert reply["type"] == "error" and expected in reply["message"] and "\n" not in reply["message"], reply
    client.ws.send("{not json")
    assert "unreadable message" in client.json()["message"]
    client.ws.send("[" * 30_000)  # deeper than the JSON parser can recurse: refused before it is parsed
    assert client.json()["message"] == "a message may nest at most 8 levels of JSON, got 30000"
    assert server_streams(client) == 0
    client.send(type="start", prompt=pipe.example_prompt, seed=6)
    started(client)
    chunks, _ = client.chunks(2)
    assert len(chunks) == 2


def server_streams(client: PageClient) -> int:
    with urllib.request.urlopen(client.url + "api/status", timeout=10) as response:
        return json.loads(response.read())["streams"]


def test_tabs_closed_right_after_start_leave_the_server_streaming(pipe, server):
    for _ in range(server.hub.limits.max_streams + 1):
        tab = PageClient(server)
        tab.send(type="start", prompt=pipe.example_prompt, seed=10)
        tab.close()  # the stream may still be setting up, or its task not yet have run
    wait_until(lambda: server.hub.streams == 0, 10.0, "a closed tab kept its stream slot")
    tab = PageClient(server)
    try:
        tab.send(type="start", prompt=pipe.example_prompt, seed=10)
        started(tab)
        assert len(tab.chunks(1)[0]) == 1
    finally:
        tab.close()


def test_a_tab_beyond_the_limit_is_told_busy_and_a_closed_tab_frees_its_stream(pipe, server):
    tabs = [PageClient(server) for _ in range(server.hub.limits.max_streams + 1)]
    try:
        for tab in tabs[:-1]:
            tab.send(type="start", prompt=pipe.example_prompt, seed=7)
            started(tab)
        tabs[-1].send(type="start", prompt=pipe.example_prompt, seed=7)
        busy = tabs[-1].json()
        assert busy["type"] == "busy" and "busy" in busy["message"]
        tabs[0].chunks(1)
        tabs[0].close()
        wait_until(
            lambda: server.hub.streams < server.hub.limits.max_streams, 1.0, "the closed tab's stream is not freed"
        )
        tabs[-1].send(type="start", prompt=pipe.example_prompt, seed=7)
        started(tabs[-1])
        assert len(tabs[-1].chunks(1)[0]) == 1
    finally:
        for tab in tabs:
            tab.close()
    wait_until(lambda: server.hub.status() == {"streams": 0, "sessions": 0, "max_streams": 2}, 1.0, "tabs left behind")


def test_a_closed_tabs_stream_is_freed_at_once_not_by_the_garbage_collector(pipe, server):
    tab = PageClient(server)
    tab.send(type="start", prompt=pipe.example_prompt, seed=9)
    started(tab)
    tab.chunks(2)
    generation = weakref.ref(server.hub.sessions[tab.session].generation)
    gc.disable()  # a reference cycle would keep the stream (its memory, its frames) until a full collection
    try:
        tab.close()
        wait_until(lambda: generation() is None, 5.0, "the closed tab's generation is still alive")
    finally:
        gc.enable()


def test_stop_ends_the_stream_and_download_is_the_stream_so_far(pipe, server, client):
    client.send(type="start", prompt=pipe.example_prompt, seed=8)
    started(client)
    chunks, _ = client.chunks(4)
    client.send(type="stop")
    while True:  # the chunk in progress may still come
        item = client.next()
        if isinstance(item, Chunk):
            chunks.append(item)
        elif item["type"] == "ended":
            break
    assert item["reason"] == "stopped" and item["frames"] == sum(c.header["count"] for c in chunks)
    frames = np.concatenate([c.frames for c in chunks])
    url = f"{server.url}download/{client.session}"
    with urllib.request.urlopen(url + ".mp4") as response:
        assert response.headers["content-type"] == "video/mp4"
        data = response.read()
    path = server.hub.sessions[client.session].spool  # still the tab's: nothing was freed by the download
    assert path is not None
    mp4 = tmp_mp4(data)
    video, fps = read_video(mp4)
    assert fps == pipe.preset.video.fps and video.shape == frames.shape
    assert np.abs(video.astype(int) - frames).mean() < 6  # h264 at the CLI's quality
    with urllib.request.urlopen(url + ".json") as response:
        sidecar = json.load(response)
    assert sidecar["pixel_frames"] == len(frames) and sidecar["seed"] == 8
    assert [t["chunk"] for t in sidecar["memory_trace"]] == [c.header["index"] for c in chunks]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{server.url}download/nobody.mp4")
    assert err.value.code == 404


def tmp_mp4(data: bytes):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "download.mp4"
    path.write_bytes(data)
    return path
