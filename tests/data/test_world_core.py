"""The synthetic world: grammar, determinism, Wan time base, schedule invariants, exact rendering."""

import dataclasses
import json

import numpy as np
import pytest

from contextforcing.data.world.annotations import load_annotations, track_from_json, track_to_json
from contextforcing.data.world.heldout import eval_worlds, heldout_pairs
from contextforcing.data.world.prompts import (
    EVAL_SEED_BASE,
    HELD_OUT_COMBOS,
    PromptSpec,
    parse_prompt,
    sample_training_prompt,
)
from contextforcing.data.world.render import render, visible_objects
from contextforcing.data.world.style import (
    BLACKOUT_COLOUR,
    CURTAIN_COLOUR,
    FPS,
    OBJECT_COLOUR_NAMES,
    OBJECT_COLOURS,
    OBJECT_SIZE,
    PALETTES,
    SHAPE_MASKS,
    SPRITE_COLOUR,
    cell_origin,
    frames_for_seconds,
)
from contextforcing.data.world.track import (
    CELL,
    COLOUR,
    FAST_MEMORY_SECONDS,
    PRESENT,
    SHAPE,
    SLOW_MEMORY_SECONDS,
    WorldSpec,
    bucket_for,
    simulate,
)
from contextforcing.errors import UserError


def test_prompt_grammar_accepts_the_documented_forms():
    assert parse_prompt("striped cool room") == PromptSpec("striped", "cool")
    assert parse_prompt("  A Checkered   Dusk room, CURTAIN occlusions ") == PromptSpec("checkered", "dusk", "curtain")
    spec = parse_prompt("plain sand room, bounce sprite, turn-away occlusions")
    assert (spec.occluder, spec.sprite_path) == ("turn-away", "bounce")
    assert parse_prompt(spec.canonical) == spec


@pytest.mark.parametrize(
    "prompt, named",
    [
        ("stripy cool room", "'stripy'"),
        ("striped teal room", "'teal'"),
        ("striped cool room, fog occlusions", "'fog'"),
        ("striped cool room, circle sprite, circle sprite", "'circle sprite'"),
        ("a red ball in a blue room", "expected"),
        ("", "expected"),
    ],
)
def test_bad_prompts_are_user_errors_naming_the_problem(prompt, named):
    with pytest.raises(UserError) as err:
        parse_prompt(prompt)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_wan_time_base():
    # 4 latent frames per second, rounded up to chunks of 3; first latent = 1 pixel frame, later ones 4
    assert frames_for_seconds(5) == 1 + 4 * (21 - 1) == 81
    assert frames_for_seconds(60) == 1 + 4 * (240 - 1)
    assert simulate(WorldSpec("plain warm room", 0, 5)).n_frames == 81


def test_deterministic_from_prompt_and_seed():
    spec = WorldSpec("striped cool room", 11, 20)
    a, b = simulate(spec), simulate(spec)
    assert np.array_equal(render(a), render(b))
    other = simulate(WorldSpec("striped cool room", 12, 20))
    assert not np.array_equal(a.objects[0], other.objects[0])
    # the prompt keys the stream too: same seed, other palette, other objects
    assert not np.array_equal(a.objects[0], simulate(WorldSpec("striped warm room", 11, 20)).objects[0])


@pytest.mark.parametrize("seed", range(12))
def test_schedule_invariants(seed):
    track = simulate(WorldSpec("plain slate room", seed, 45))
    occs = track.occlusions()
    assert occs, "every clip of 45 s has occlusions"
    visible = track.coverage == 0
    assert visible[: 2 * FPS].all(), "the first visit lasts at least 2 s"
    for occ in occs:
        assert 0.5 <= occ.seconds <= 60 and (occ.seconds * 4) % 1 == 0  # whole latent frames
        assert occ.start_frame % 4 == 1 and occ.end_frame % 4 == 1  # latent boundaries
        assert visible[occ.end_frame : occ.end_frame + 2 * FPS].all() or occ.end_frame + 2 * FPS > track.n_frames
        assert (track.coverage[occ.start_frame : occ.end_frame] > 0).all()
    for event in track.events():
        assert event.frame % 4 == 1
        near = slice(event.frame - FPS // 2, event.frame + FPS // 2)
        assert visible[near].all(), "events happen in view, 0.5 s from any occlusion"


def test_every_event_type_occurs_and_changes_the_scene():
    kinds = set()
    for seed in range(20):
        for e in simulate(WorldSpec("plain warm room", seed, 30)).events():
            kinds.add(e.type)
            assert e.old != e.new
    assert kinds == {"appear", "move", "recolour"}


def test_occlusion_buckets():
    assert bucket_for(0.5) == bucket_for(1.25) == "short"
    assert bucket_for(FAST_MEMORY_SECONDS) == bucket_for(SLOW_MEMORY_SECONDS) == "mid"
    assert bucket_for(20.25) == bucket_for(60) == "long"


@pytest.mark.parametrize(
    "prompt",
    [
        "striped cool room, blackout occlusions",
        "checkered warm room, curtain occlusions",
        "columned forest room, turn-away occlusions",
    ],
)
def test_rendering_matches_ground_truth_exactly(prompt):
    track = simulate(WorldSpec(prompt, 3, 30, (1.0, 6.0)))
    frames = render(track)
    bg1, bg2, away = PALETTES[track.prompt.palette]
    hidden_colour = {"blackout": BLACKOUT_COLOUR, "curtain": CURTAIN_COLOUR, "turn-away": away}
    for occ in track.occlusions():
        full = np.flatnonzero(track.coverage[occ.start_frame : occ.end_frame] >= 1) + occ.start_frame
        assert (frames[full] == hidden_colour[occ.kind]).all(), "fully hidden frames are uniform"
        # the scene comes back exactly as it was; only the sprite (which kept moving) differs
        before, after = frames[occ.before_frame], frames[occ.end_frame]
        sprite = (before == SPRITE_COLOUR).all(-1) | (after == SPRITE_COLOUR).all(-1)
        assert np.array_equal(before[~sprite], after[~sprite])
    for t in np.flatnonzero(track.coverage == 0)[::23]:
        state = track.state_at(t)
        for slot in visible_objects(track, t):
            y, x = cell_origin(int(state[slot, CELL]))
            window = frames[t, y : y + OBJECT_SIZE, x : x + OBJECT_SIZE]
            colour = OBJECT_COLOURS[OBJECT_COLOUR_NAMES[state[slot, COLOUR]]]
            assert (window[SHAPE_MASKS[state[slot, SHAPE]]] == colour).all()
        sx, sy = track.sprite_xy[t].astype(int)
        assert tuple(frames[t, sy, sx]) == SPRITE_COLOUR or any(
            (frames[t, sy, sx] == OBJECT_COLOURS[n]).all() for n in OBJECT_COLOURS
        ), "sprite, or an object in front"


def test_visible_objects_respect_the_curtain():
    track = simulate(WorldSpec("plain warm room, curtain occlusions", 5, 20, (2.0,)))
    occ = track.occlusions()[0]
    half = occ.start_frame + 1  # coverage 0.5: rows 0..31 hidden
    assert track.coverage[half] == 0.5
    state = track.state_at(half)
    expected = [s for s in np.flatnonzero(state[:, PRESENT]) if cell_origin(int(state[s, CELL]))[0] >= 32]
    assert visible_objects(track, half) == expected
    assert visible_objects(track, occ.start_frame + 4) == []


def test_forced_occlusions_are_used_or_rejected():
    track = simulate(WorldSpec("plain warm room", 1, 60, (1.0, 6.0, 22.0, 0.5)))
    assert [o.seconds for o in track.occlusions()] == [1.0, 6.0, 22.0, 0.5]
    with pytest.raises(UserError, match="does not fit"):
        simulate(WorldSpec("plain warm room", 1, 10, (30.0,)))
    with pytest.raises(UserError, match="non-negative"):
        simulate(WorldSpec("plain warm room", -1, 10))


def test_held_out_worlds_cover_every_bucket_and_are_never_trained_on():
    worlds = eval_worlds()
    assert len({(w.prompt, w.seed) for w in worlds}) == len(worlds)
    for w in worlds:
        assert w.seed >= EVAL_SEED_BASE
        assert {o.bucket for o in simulate(w).occlusions()} == {"short", "mid", "long"}
    assert any(parse_prompt(w.prompt).held_out for w in worlds)
    rng = np.random.default_rng(0)
    for _ in range(500):
        spec = parse_prompt(sample_training_prompt(rng))
        assert (spec.style, spec.palette) not in HELD_OUT_COMBOS


def test_heldout_pairs_extend_the_evaluation_set_with_more_seeds():
    pairs = heldout_pairs(50)
    assert len({(w.prompt, w.seed) for w in pairs}) == 50 and all(w.seed >= EVAL_SEED_BASE for w in pairs)
    assert {(w.prompt, w.seed, w.occlusion_seconds) for w in pairs[:16]} == {
        (w.prompt, w.seed, w.occlusion_seconds) for w in eval_worlds()
    }
    for long, short in zip(heldout_pairs(8, 120.0), pairs):  # twice as long: the profile twice
        assert (long.prompt, long.seed) == (short.prompt, short.seed)
        assert long.occlusion_seconds == short.occlusion_seconds * 2
        occlusions = simulate(long).occlusions()
        assert [round(o.seconds, 2) for o in occlusions] == list(long.occlusion_seconds)


def test_annotations_round_trip_exactly(tmp_path):
    track = simulate(eval_worlds()[0])
    data = track_to_json(track)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    back = load_annotations(path)
    assert np.array_equal(render(back), render(track))
    assert back.spec == track.spec
    assert [o["bucket"] for o in data["occlusions"]] == ["short", "mid", "long", "short"]
    assert len(data["per_frame"]["visible_objects"]) == track.n_frames
    first = data["states"][0][0]
    assert set(first) == {"id", "shape", "colour", "rgb", "cell", "bbox_xywh"}
    assert [e["type"] for e in data["events"]] == [e.type for e in track.events()]


def test_bad_annotation_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="do not exist"):
        load_annotations(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        load_annotations(tmp_path / "x.json")
    with pytest.raises(UserError, match="not a world annotation"):
        track_from_json({"format": "other"})
    data = track_to_json(simulate(WorldSpec("plain warm room", 0, 5)))
    data["per_frame"]["state"] = data["per_frame"]["state"][:-3]
    with pytest.raises(UserError, match="disagree"):
        track_from_json(data)
    del data["states"]
    with pytest.raises(UserError, match="malformed"):
        track_from_json(data)


def test_objects_can_be_permuted_without_breaking_the_track():
    # used by the metric tests: a different but valid scene renders cleanly
    track = simulate(WorldSpec("plain warm room", 2, 10))
    objects = track.objects.copy()
    objects[:, :, CELL] = (objects[:, :, CELL] + 5) % 16
    frames = render(dataclasses.replace(track, objects=objects))
    assert frames.shape == (track.n_frames, 64, 64, 3)
