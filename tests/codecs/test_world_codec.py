"""The shipped world codec: loads, keeps Wan's strides, streams exactly, reconstructs held-out worlds."""

from __future__ import annotations

import pytest
import torch

from contextforcing.codecs.world import DEFAULT_PATH, load_world_codec
from contextforcing.data.world.heldout import eval_worlds
from contextforcing.data.world.render import render
from contextforcing.data.world.track import simulate
from contextforcing.errors import UserError
from contextforcing.io.video import to_uint8_frames
from contextforcing.training.world_codec import psnr_uint8

# Measured on the shipped weights (docs/world.md, "The world codec"); the threshold leaves a margin.
MIN_HELDOUT_PSNR = 30.0


@pytest.fixture(scope="module")
def codec():
    return load_world_codec()


@pytest.fixture(scope="module")
def heldout_clip():
    track = simulate(eval_worlds()[0])
    frames = render(track)[:161]  # the first 10 s
    return frames, torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def test_shipped_weights_are_small_and_load(codec):
    assert DEFAULT_PATH.is_file()
    assert DEFAULT_PATH.stat().st_size < 2_000_000
    assert (codec.latent_channels, codec.stride_t, codec.stride_hw) == (16, 4, 8)


def test_shapes_ranges_and_normalised_latents(codec, heldout_clip):
    _, video = heldout_clip
    z = codec.encode(video)
    assert z.shape == (1, 16, 41, 8, 8)
    assert torch.isfinite(z).all()
    assert abs(float(z.mean())) < 0.5 and 0.3 < float(z.std()) < 3.0
    out = codec.stream_decoder().decode(z)
    assert out.shape == (1, 3, 161, 64, 64)
    assert out.min() >= -1 and out.max() <= 1
    # a stream of 2 latent frames: 1 + 4 pixel frames
    assert codec.stream_decoder().decode(z[:, :, :2]).shape[2] == 5


def test_chunked_stream_decode_equals_one_shot(codec, heldout_clip):
    _, video = heldout_clip
    z = codec.encode(video)
    whole = codec.stream_decoder().decode(z)
    stream = codec.stream_decoder()
    parts = [stream.decode(z[:, :, i : i + 3]) for i in range(0, z.shape[2], 3)]
    assert torch.equal(torch.cat(parts, dim=2), whole)


def test_heldout_reconstruction(codec, heldout_clip):
    frames, video = heldout_clip
    decoded = to_uint8_frames(codec.stream_decoder().decode(codec.encode(video))[0])
    assert psnr_uint8(decoded, frames) >= MIN_HELDOUT_PSNR


def test_bad_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_world_codec(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="corrupted"):
        load_world_codec(bad)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(DEFAULT_PATH.read_bytes()[:5000])
    with pytest.raises(UserError):
        load_world_codec(truncated)
