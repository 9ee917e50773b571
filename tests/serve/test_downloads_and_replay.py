"""The server end of three viewer features, over real HTTP and WebSocket connections: frames travel as JPEG (the
very bytes the codec makes of the Python API's frames), downloads are named for what they hold and outlive their
tab (while the server runs), and a saved video with its sidecar replays through the stream protocol with the
memory panel its trace records."""

import json
import struct
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from serve_harness import Chunk, PageClient, reference, wait_until

from contextforcing.io.video import read_video
from contextforcing.serve.frames import FrameCodec
from contextforcing.serve.memory_view import ThumbnailStore, chunk_view


def started(client: PageClient) -> dict:
    message = client.json()
    assert message["type"] == "started", message
    return message


def test_frames_travel_as_the_codecs_jpeg_of_the_api_frames(pipe, jpeg_server):
    client = PageClient(jpeg_server)
    try:
        client.send(type="start", prompt=pipe.example_prompt, seed=5)
        started(client)
        chunks, _ = client.chunks(4)
    finally:
        client.close()
    codec = FrameCodec()
    for got, want in zip(chunks, reference(pipe, 4, seed=5)):
        assert got.header["frames"]["type"] == "image/jpeg"
        assert got.payload == b"".join(codec.encode(f) for f in want.frames)  # exactly the API frames' JPEGs
        assert np.abs(got.frames.astype(int) - want.frames).mean() < 4.5
        assert len(got.payload) < want.frames.nbytes / 3


def fetch(url: str) -> tuple[bytes, dict]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read(), dict(response.headers)


def test_downloads_are_named_and_outlive_their_tab(pipe, server):
    client = PageClient(server)
    client.send(type="start", prompt=pipe.example_prompt, seed=17)
    info = started(client)
    chunks, _ = client.chunks(3)
    client.close()  # the tab is gone: its stream stops, its frames stay downloadable
    wait_until(lambda: client.session not in server.hub.sessions, 2, "the tab's session was not closed")
    stem = info["download"]
    assert stem.startswith("contextforcing-") and stem.endswith("-seed17") and "warm-room" in stem
    url = f"{server.url}download/{client.session}"
    data, headers = fetch(url + ".mp4")
    assert f'filename="{stem}.mp4"' in headers["content-disposition"]
    sidecar_data, headers = fetch(url + ".json")
    assert f'filename="{stem}.json"' in headers["content-disposition"]
    sidecar = json.loads(sidecar_data)
    path = server.hub.downloads.get(client.session).spool  # kept, not freed
    assert (
        path is not None and sidecar["seed"] == 17 and sidecar["pixel_frames"] >= sum(c.header["count"] for c in chunks)
    )
    mp4 = tmp_file(data, "d.mp4")
    video, _ = read_video(mp4)
    assert len(video) == sidecar["pixel_frames"] and len(sidecar["memory_trace"]) >= 3


def test_only_the_newest_closed_streams_are_kept(pipe, server):
    keep = server.hub.downloads.keep_count
    sessions = []
    for seed in range(keep + 1):
        client = PageClient(server)
        client.send(type="start", prompt=pipe.example_prompt, seed=seed)
        started(client)
        client.chunks(1)
        client.close()
        sessions.append(client.session)
        wait_until(lambda: server.hub.downloads.get(client.session) is not None, 2, "not kept")
    assert server.hub.downloads.get(sessions[0]) is None  # the oldest went when one more came
    with pytest.raises(urllib.error.HTTPError) as err:
        fetch(f"{server.url}download/{sessions[0]}.mp4")
    assert err.value.code == 404
    assert fetch(f"{server.url}download/{sessions[-1]}.json")[0]


def tmp_file(data: bytes, name: str):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / name
    path.write_bytes(data)
    return path


def upload(server, mp4: bytes, record: dict, name: str = "v.json") -> tuple[int, dict]:
    head = json.dumps({"name": name, "record": record}).encode()
    request = urllib.request.Request(
        server.url + "api/replay", data=struct.pack("<I", len(head)) + head + mp4, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    """A saved video with a prompt switch and promotions: its mp4's frames (as decoded) and its sidecar."""
    prompt = pipe.example_prompt
    video = pipe(prompt, seconds=6, seed=4, memory={"tau": 0.999}, switches={3.0: prompt.replace("hold", "pan left")})
    path = pipe.save(video, tmp_path_factory.mktemp("replay") / "saved.mp4")
    return path, video


def test_a_saved_video_replays_with_its_memory_panel(pipe, server, saved):
    path, video = saved
    record = json.loads(path.with_suffix(".json").read_text())
    status, answer = upload(server, path.read_bytes(), record, "saved.json")
    assert status == 200 and answer["chunks"] == len(video.chunks)
    client = PageClient(server)
    try:
        client.send(type="replay", replay=answer["replay"])
        info = started(client)
        assert info["replay"] == "saved.json" and info["tau"] == 0.999 and info["memory"] == record["config"]["memory"]
        chunks, _ = client.chunks(2, played=False)  # held back: the replay is still running
        client.send(type="switch", prompt=pipe.example_prompt)
        error = client.json()
        assert error["type"] == "error" and "takes no prompt switches" in error["message"]
        client.send(type="played", frames=chunks[-1].header["first_frame"] + chunks[-1].header["count"])
        chunks += client.chunks(len(video.chunks) - 2)[0]
        assert client.json()["type"] == "ended"
    finally:
        client.close()
    frames, _ = read_video(path)
    assert np.array_equal(np.concatenate([c.frames for c in chunks]), frames)  # the mp4's frames (PNG: exact)
    store = ThumbnailStore(pipe.preset.video.vae_stride_t, 6)
    for got, want in zip(chunks, video.chunks):
        store.add(want)
        assert got.header["memory"] == chunk_view(want, store, pipe.preset.video)  # the trace's plan, as live
        assert got.header["prompt"] == want.prompt
    assert [c.header["switched"] is not None for c in chunks] == [c.index == 4 for c in video.chunks]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda mp4, record: (mp4, {**record, "memory_trace": record["memory_trace"][:-1]}), "memory trace describes"),
        (lambda mp4, record: (mp4, {"prompt": "p"}), "no memory_trace"),
        (lambda mp4, record: (b"not a video", record), "the video cannot be read"),
        (lambda mp4, record: (b"", record), "choose a video"),
    ],
)
def test_a_bad_replay_upload_is_one_line(server, saved, change, message):
    path, _ = saved
    mp4, record = change(path.read_bytes(), json.loads(path.with_suffix(".json").read_text()))
    status, answer = upload(server, mp4, record)
    assert status == 400 and message in answer["error"] and "\n" not in answer["error"]


def test_a_replay_takes_no_stream_slot(pipe, server, saved):
    path, _ = saved
    _, answer = upload(server, path.read_bytes(), json.loads(path.with_suffix(".json").read_text()))
    client = PageClient(server)
    try:
        client.send(type="replay", replay=answer["replay"])
        started(client)
        assert isinstance(client.next(), Chunk) and server.hub.streams == 0
    finally:
        client.close()
    time.sleep(0.1)
    assert server.hub.streams == 0
