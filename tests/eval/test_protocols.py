"""Evaluation protocols: which latent frames of a world the generator is given."""

import numpy as np
import pytest
import torch

from contextforcing.data.world.style import FPS, latents_for_frames
from contextforcing.data.world.track import WorldSpec, simulate
from contextforcing.errors import UserError
from contextforcing.eval.protocols import (
    RECALL_SECONDS,
    given_latents,
    hidden_latents,
    known_frames,
    latent_pixel_frames,
    recall_latents,
)


@pytest.fixture(scope="module", params=["blackout", "curtain", "turn-away"])
def track(request):
    return simulate(WorldSpec(f"striped cool room, {request.param} occlusions", 11, 30.0, (0.5, 3.0, 8.0)))


def _latent_of(frame):
    return 0 if frame == 0 else 1 + (frame - 1) // 4


def test_latent_pixel_frames_tile_the_video():
    frames = [f for lat in range(latents_for_frames(81)) for f in latent_pixel_frames(lat, 81)]
    assert frames == list(range(81))
    assert all(_latent_of(f) == lat for lat in range(21) for f in latent_pixel_frames(lat, 81))


def test_occlusion_protocol_gives_exactly_the_wholly_hidden_latents(track):
    given = given_latents("occlusion", track)
    assert given == hidden_latents(track)
    for lat in range(latents_for_frames(track.n_frames)):
        hidden = all(track.coverage[f] >= 1 for f in latent_pixel_frames(lat, track.n_frames))
        assert (lat in given) == hidden
    for occ in track.occlusions():  # each occlusion is hidden for its length, less its ramps
        inside = [
            lat for lat in given if occ.start_frame <= latent_pixel_frames(lat, track.n_frames).start < occ.end_frame
        ]
        ramps = 0 if occ.kind == "blackout" else 2
        assert len(inside) == max(0, round(occ.seconds * 4) - ramps)


def test_recall_protocol_draws_the_return_of_every_occlusion_and_gives_the_rest(track):
    drawn, given = recall_latents(track), given_latents("recall", track)
    assert sorted(drawn + given) == list(range(latents_for_frames(track.n_frames)))
    for occ in track.occlusions():
        assert _latent_of(occ.before_frame) in given  # "before" is the ground truth ...
        assert _latent_of(occ.end_frame) in drawn  # ... "after" is the model's
        window = [
            lat
            for lat in drawn
            if occ.start_frame <= latent_pixel_frames(lat, track.n_frames).stop
            and latent_pixel_frames(lat, track.n_frames).start < occ.end_frame + RECALL_SECONDS * FPS
        ]
        assert len(window) <= RECALL_SECONDS * 4 + 2  # the way back (at most one ramp) and the recall second
    assert set(drawn).isdisjoint(hidden_latents(track))


def test_known_frames_slices_the_world_latents(track):
    n = latents_for_frames(track.n_frames)
    latents = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1, 1).expand(1, 2, n, 2, 2)
    known = known_frames("occlusion", track, latents)
    assert sorted(known) == hidden_latents(track)
    assert all(torch.all(known[lat] == lat) for lat in known)
    with pytest.raises(UserError, match="frames"):
        known_frames("occlusion", track, latents[:, :, :-1])
    with pytest.raises(UserError, match="protocol"):
        given_latents("bogus", track)


@pytest.mark.parametrize("protocol", ["occlusion", "recall"])
def test_generated_world_shows_the_given_frames_exactly(protocol):
    from contextforcing.codecs.world import load_world_codec
    from contextforcing.eval.protocols import generate_world, world_latents
    from contextforcing.io.video import to_uint8_frames
    from contextforcing.pipeline import Pipeline

    track = simulate(WorldSpec("plain warm room, blackout occlusions", 3, 18.0, (0.5, 2.0)))
    pipe = Pipeline.random("world", seed=0)
    pipe.codec = load_world_codec()  # the occlusion world's codec: its latents are what the protocols give
    frames = generate_world(pipe, track, protocol, seed=0, memory="slow_fast")
    truth = to_uint8_frames(pipe.codec.stream_decoder().decode(world_latents(pipe.codec, track))[0])
    assert frames.shape == truth.shape == (track.n_frames, 64, 64, 3)
    given = given_latents(protocol, track)
    shown = [f for lat in given for f in latent_pixel_frames(lat, track.n_frames)]
    drawn = [f for f in range(track.n_frames) if f not in set(shown)]
    assert np.array_equal(frames[shown], truth[shown])
    assert not np.array_equal(frames[drawn], truth[drawn])  # a random model does not draw the world
