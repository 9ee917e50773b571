"""memory_score: 1 for the truth through the codec, about 0 for every memoryless generator, cheaters included
(a constant image, a repeating room, blur, scene-level forgetting, empty and crowded rooms); revisits that did not
happen count as forgotten; the null is the closest place a revisit is not."""

import numpy as np
import pytest

from contextforcing.codecs.world import PANORAMA_PATH, load_world_codec
from contextforcing.data.world.panorama import heldout_worlds, render, simulate
from contextforcing.data.world.panorama.geometry import CELL, latent_end_frame
from contextforcing.data.world.panorama.revisits import track_revisits
from contextforcing.eval import oracles
from contextforcing.eval.memory_score import RECENT_LATENTS, PlaceMatcher, mismatch, video_sightings
from contextforcing.eval.panorama_metrics import ColourClasses, panorama_scores, reference_for
from contextforcing.eval.panorama_runs import shortened

SECONDS = 60.0  # held-out world 0 cut to a minute: revisits in every bucket, both causes
CHEATERS = {
    "constant image that darkens when told": oracles.constant_darkening,
    "blurred first view held still": oracles.blurred_still,
    "repeating room, 32 px": lambda t, f: oracles.repeating_room(t, f, 32),
    "repeating room, 64 px": lambda t, f: oracles.repeating_room(t, f, 64),
    "forgetting, blurred": oracles.forgetting_blurred,
    "wrong room after every absence": oracles.wrong_room,
    "forgetting, no objects": oracles.forgetting_without_objects,
    "forgetting, crowded room": oracles.forgetting_crowded,
}


@pytest.fixture(scope="module")
def world():
    track = simulate(shortened(heldout_worlds(1)[0], SECONDS))
    return track, render(track), load_world_codec(PANORAMA_PATH)


@pytest.fixture(scope="module")
def scores(world):
    track, truth, codec = world
    rows = {"truth": codec.round_trip(truth), "forgetting": codec.round_trip(oracles.forgetting(track, truth))}
    rows |= {name: codec.round_trip(make(track, truth)) for name, make in CHEATERS.items()}
    rows["control"] = codec.round_trip(oracles.other_seed_remembered(track, truth))
    return {name: panorama_scores(video, track) for name, video in rows.items()}


def test_the_truth_through_the_codec_scores_one_and_exact_frames_at_least_that(world, scores):
    track, truth, _ = world
    assert scores["truth"].memory.overall == pytest.approx(1.0)
    exact = panorama_scores(truth, track).memory
    assert exact.overall >= 1.0 and exact.beyond_fast >= 0.95


@pytest.mark.parametrize("name", CHEATERS)
def test_every_cheater_scores_far_below_the_truth(scores, name):
    memory = scores[name].memory
    assert memory.overall <= 0.3, memory


@pytest.mark.parametrize("name", CHEATERS)
def test_no_cheater_beats_forgetting_on_the_revisits_the_camera_brings_back(scores, name):
    assert scores[name].memory.causes["pan"] <= scores["forgetting"].memory.causes["pan"] + 0.1


def test_forgetting_is_about_zero_and_a_consistent_room_of_its_own_scores_like_the_truth(scores):
    assert scores["forgetting"].memory.overall <= 0.1
    # Not a cheat: a free-running generator draws its own room, and keeping it is memory.
    assert scores["control"].memory.overall >= 0.8


def test_every_revisit_of_the_script_counts_and_one_not_made_is_forgotten(world, scores):
    track, _, _ = world
    still = scores["constant image that darkens when told"]
    assert len(still.revisits) == len(track_revisits(track))
    missed = [r for r in still.revisits if not r["made"]]
    assert missed and all(r["memory"] == 0.0 for r in missed)
    # the denominator is the truth's over every revisit, made by this video or not
    assert still.memory.truth_sum == pytest.approx(sum(r["truth_memory"] for r in still.revisits))
    assert still.memory.truth_sum == pytest.approx(scores["truth"].memory.video_sum)


def test_the_null_is_the_closest_place_the_revisit_is_not(world):
    """Hand-built: a revisit left as the truth shows it scores 1 (error 0) against a null that is the closest
    other place; the same revisit with its region copied from a window shown just before scores 0."""
    track, truth, _ = world
    colours = ColourClasses(track.palette)
    classes = colours.classify(truth)[0]
    balls = np.isin(classes, colours.balls)
    sightings = video_sightings(track.latent_camera.astype(float), ~track.latent_lit)
    matcher = PlaceMatcher(classes, balls, latent_end_frame, sightings)

    def region(c, latent, x):
        return c[latent_end_frame(latent)][:, x : x + CELL]

    r = next(
        r
        for r in track_revisits(track)
        if r.cause == "pan"
        and not region(balls, r.back_latent, r.x_after).any()
        and not region(balls, r.seen_latent, r.x_before).any()
    )
    after = (region(classes, r.back_latent, r.x_after), region(balls, r.back_latent, r.x_after))
    others = [
        mismatch(after[0], region(classes, s.latent, s.x), after[1], region(balls, s.latent, s.x))
        for s in matcher.candidates(r)
    ]
    others = [o for o in others if o is not None]
    assert matcher.null(r, after) == min(others) > 0
    assert matcher.match(r, True).score == 1.0
    recent = [s for k in range(r.back_latent - RECENT_LATENTS, r.back_latent) for s in sightings[k]]
    source = next(s for s in matcher.candidates(r) if s in recent)
    copied = classes.copy()
    copied[latent_end_frame(r.back_latent)][:, r.x_after : r.x_after + CELL] = region(classes, source.latent, source.x)
    assert PlaceMatcher(copied, balls, latent_end_frame, sightings).match(r, True).score == 0.0


def test_memory_score_is_not_applicable_without_a_revisit_of_that_kind(world):
    track, truth, _ = world
    m = panorama_scores(truth, track, reference=reference_for(track)).memory
    assert all(v is not None for v in m.buckets.values())
    short = simulate(shortened(heldout_worlds(1)[0], 6.0))
    m = panorama_scores(render(short), short).memory
    assert m.buckets["beyond"] is None and m.beyond_fast is None  # no revisit beyond 1.5 s in 6 s


def test_pooling_over_videos_sums_before_it_divides():
    from contextforcing.eval.memory_score import pooled_memory_score

    rows = [
        {"memory": 0.2, "truth_memory": 1.0},
        {"memory": 0.9, "truth_memory": 1.0},
        {"memory": 0.0, "truth_memory": 0.0},
    ]
    assert pooled_memory_score(rows) == pytest.approx(1.1 / 2.0)  # not the mean of per-video ratios
    assert pooled_memory_score([{"memory": 0.5, "truth": 2.0}], truth_key="truth") == pytest.approx(0.25)
    assert pooled_memory_score([]) is None and pooled_memory_score(rows[2:]) is None  # no event: not applicable
