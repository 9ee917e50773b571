"""The memory panel's data: which pixel frame shows each latent frame, the bounded thumbnail store (it must
hold every frame a later chunk attends, and stay flat), and the row built from a chunk's plan."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from contextforcing.pipeline import Pipeline
from contextforcing.serve.memory_view import ThumbnailStore, chunk_view, encode_png, latent_pixel_frames

MEMORIES = {
    "slow_fast, promoting at every decision": {"policy": "slow_fast", "tau": 1.0, "slow": 3},
    "slow_fast, released layout (per-layer slow, copies)": {"policy": "slow_fast", "layout": "released", "slow": 3},
    "sink": {"policy": "sink"},
    "ema_sink": {"policy": "ema_sink"},
    "rolling": {"policy": "rolling"},
    "retrieve": {"policy": "retrieve", "bank": 4, "top_k": 2, "score": "keys"},
}


@pytest.fixture(scope="module")
def tiny():
    return Pipeline.random("tiny", seed=0)


def decoded(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def test_each_latent_frame_shows_its_last_pixel_frame(tiny):
    video = tiny.preset.video
    result = tiny("a red ball", seconds=6, seed=1)
    store = ThumbnailStore(video.vae_stride_t, rows=1)
    for chunk in result.chunks:
        indices = latent_pixel_frames(chunk, video.vae_stride_t)
        # Wan's causal VAE: latent frame f ends on pixel frame pixel_frames_for(f + 1) - 1 of the whole video.
        assert [chunk.first_frame + i for i in indices] == [
            video.pixel_frames_for(f + 1) - 1 for f in chunk.plan.current_frames
        ]
        new, _ = store.add(chunk)
        for thumb, i in zip(new, indices):
            assert thumb.pixel == chunk.first_frame + i
            assert np.array_equal(decoded(thumb.png), result.frames[thumb.pixel])  # 64x64: kept whole, lossless


@pytest.mark.parametrize("memory", MEMORIES.values(), ids=MEMORIES.keys())
def test_store_holds_every_frame_a_later_chunk_attends_and_stays_bounded(tiny, memory):
    video = tiny.preset.video
    rows = 1  # the strictest store: only the last plan's frames
    store = ThumbnailStore(video.vae_stride_t, rows)
    params = tiny.memory_for(memory).params(video.chunk_frames)
    waiting = 0 if params.attend_slow is None else params.slow - params.attend_slow  # a bank's unpicked keyframes
    capacity = params.capacity + waiting
    dropped_so_far, sizes = set(), []
    for chunk in tiny.stream("a red ball", seconds=40, seed=2, memory=memory):
        needed = {a.frame for a in chunk.plan.context}
        for layer in chunk.plan.slow_per_layer or ():
            needed.update(layer)
        assert needed <= set(store.thumbnails), f"chunk {chunk.index} attends frames the store dropped"
        assert not needed & dropped_so_far
        _, dropped = store.add(chunk)
        dropped_so_far.update(dropped)
        sizes.append(len(store.thumbnails))
    assert dropped_so_far, "a 40 s stream must drop frames"
    assert max(sizes) <= rows * capacity  # capacity counts the chunk itself
    assert max(sizes[len(sizes) // 2 :]) == max(sizes)  # flat: the second half is no bigger


def test_row_is_the_plan(tiny):
    video = tiny.preset.video
    store = ThumbnailStore(video.vae_stride_t, rows=3)
    for chunk in tiny.stream("a red ball", seconds=12, seed=3, memory={"tau": 1.0, "slow": 2}):
        store.add(chunk)
        view = chunk_view(chunk, store, video)
        assert [(e["tier"], e["frame"], e["position"], e["copy"]) for e in view["context"]] == [
            (a.tier, a.frame, a.position, a.copy) for a in chunk.plan.context
        ]
        assert [(e["frame"], e["position"]) for e in view["current"]] == list(
            zip(chunk.plan.current_frames, chunk.plan.current_positions)
        )
        for e in view["context"] + view["current"]:
            assert e["time"] == (video.pixel_frames_for(e["frame"] + 1) - 1) / video.fps
        assert view["promoted"] == list(chunk.update.promoted) and view["evicted"] == list(chunk.update.evicted)
        assert view["similarity"] == chunk.update.similarity


def test_bank_row_is_the_retrieval(tiny):
    """A retrieval memory's panel shows its whole bank: each keyframe's relevance, and picked = attended as slow."""
    video = tiny.preset.video
    store = ThumbnailStore(video.vae_stride_t, rows=1)
    banks = []
    for chunk in tiny.stream(
        "a red ball", seconds=30, seed=4, memory={"policy": "retrieve", "bank": 4, "top_k": 2, "score": "keys"}
    ):
        store.add(chunk)
        view = chunk_view(chunk, store, video)
        retrieval = chunk.plan.retrieval
        assert [(e["frame"], e["relevance"]) for e in view["bank"]] == sorted(retrieval.items())
        assert {e["frame"] for e in view["bank"] if e["picked"]} == set(chunk.plan.tier("slow"))
        assert {e["frame"] for e in view["bank"]} <= set(store.thumbnails)  # every bank card has its picture
        banks.append(len(view["bank"]))
    assert max(banks) == 4 and sum(e["picked"] for e in view["bank"]) == 2  # the bank filled; 2 of 4 picked


def test_big_frames_are_shrunk_for_thumbnails():
    frame = np.random.default_rng(0).integers(0, 255, (480, 832, 3), dtype=np.uint8)
    assert decoded(encode_png(frame)).shape == (55, 96, 3)
    small = frame[:64, :64]
    assert np.array_equal(decoded(encode_png(small)), small)
