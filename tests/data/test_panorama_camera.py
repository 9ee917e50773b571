"""The panorama camera a room-anchored model reads: headings integrated from the script's prompts are the
simulator's camera, in tokens."""

import numpy as np
import pytest

from contextforcing.config import get_preset
from contextforcing.data.world.panorama import heldout_worlds, simulate
from contextforcing.data.world.panorama.camera import PanoramaCamera
from contextforcing.data.world.panorama.generator import sample_training_script
from contextforcing.data.world.panorama.geometry import ROOM_WIDTH
from contextforcing.data.world.panorama.simulate import PanoramaSpec
from contextforcing.errors import UserError
from contextforcing.memory.headings import chunk_headings, prompt_headings


def _camera():
    preset = get_preset("world")
    return PanoramaCamera.for_model(preset.model, preset.video), preset.video.chunk_frames


@pytest.mark.parametrize("index", range(4))
def test_script_headings_are_the_simulated_camera_of_heldout_worlds(index):
    camera, chunk = _camera()
    track = simulate(heldout_worlds(4)[index])
    headings = prompt_headings(camera, track.chunk_prompts(), chunk, track.n_latents)
    np.testing.assert_array_equal(np.array(headings) * camera.token_px, track.latent_camera)


def test_script_headings_of_random_training_scripts():
    camera, chunk = _camera()
    for seed in range(6):
        spec = PanoramaSpec(sample_training_script(np.random.default_rng(seed), 30.0), seed, 30.0)
        track = simulate(spec)
        headings = prompt_headings(camera, track.chunk_prompts(), chunk, track.n_latents)
        np.testing.assert_array_equal(np.array(headings) * camera.token_px, track.latent_camera)


def test_chunk_headings_continue_from_the_previous_frame():
    assert chunk_headings(0.0, 0.5, 0, 3) == [0.0, 0.5, 1.0]  # frame 0 is the first view
    assert chunk_headings(1.0, -0.5, 3, 3) == [0.5, 0.0, -0.5]


def test_the_world_preset_room_is_the_panorama_room():
    camera, _ = _camera()
    assert get_preset("world").model.room_tokens * camera.token_px == ROOM_WIDTH
    assert not get_preset("world-screen").model.room_anchored


def test_a_model_whose_room_is_another_size_is_refused():
    import dataclasses

    preset = get_preset("world")
    model = dataclasses.replace(preset.model, room_tokens=12)
    with pytest.raises(UserError, match="panorama room is 256 px"):
        PanoramaCamera.for_model(model, preset.video)
