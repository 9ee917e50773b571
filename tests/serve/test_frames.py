"""How the viewer's frames travel (serve/frames.py): compressed images the browser decodes, a fraction of raw RGB;
PNG exact, JPEG close to the frame (4:4:4: no colour bleeding on the toy model's saturated colours)."""

import numpy as np
import pytest

import contextforcing as cf
from contextforcing.serve.frames import FrameCodec, decode_frames


@pytest.fixture(scope="module")
def frames():
    pipe = cf.Pipeline.from_pretrained(device="cpu")
    return pipe(pipe.example_prompt, seconds=3, seed=11).frames[8:32]


def test_png_is_exact_and_jpeg_close_and_both_a_fraction_of_raw(frames):
    raw = frames[0].nbytes
    png_sizes, png = FrameCodec("png").encode_frames(frames)
    assert np.array_equal(decode_frames(png_sizes, png), frames) and len(png) < frames.nbytes
    sizes, jpeg = FrameCodec("jpeg", 90).encode_frames(frames)
    decoded = decode_frames(sizes, jpeg).astype(int)
    assert np.abs(decoded - frames).mean() < 4.5  # measured 3.05 levels on the embedded model's frames
    assert np.mean(sizes) < raw / 3  # measured 2.9 KB of 12 KB
    subsampled = FrameCodec("webp", 90).encode_frames(frames)[0]
    assert np.mean(subsampled) < np.mean(sizes)


def test_the_codec_is_checked():
    with pytest.raises(cf.UserError, match="--frames must be one of jpeg, webp, png, got 'gif'"):
        FrameCodec("gif").check()
    with pytest.raises(cf.UserError, match="--quality must be in 1..100"):
        FrameCodec("jpeg", 0).check()
