"""The panorama world: prompt and script grammar, determinism from (script, seed), the time base, lights,
balls, events in view, exact rendering, annotations, held-out set, training scripts and the dataset."""

import dataclasses
import json

import numpy as np
import pytest

from contextforcing.codecs.text import HashTextEncoder
from contextforcing.config import PRESETS
from contextforcing.data.world.panorama.annotations import load_panorama_annotations, track_from_json, track_to_json
from contextforcing.data.world.panorama.dataset import PanoramaDatasetConfig, training_world, write_panorama_dataset
from contextforcing.data.world.panorama.generator import ScriptBuilder, chunks_for_seconds, sample_training_script
from contextforcing.data.world.panorama.geometry import (
    BALL_COLOURS,
    BALL_RADIUS,
    BALL_SPEEDS,
    BALL_Y_RANGE,
    CELL,
    COLUMN,
    FPS,
    N_PANELS,
    PANEL_MAX_RUN,
    ROOM_WIDTH,
    UNITS,
    VIEW,
    latent_end_frame,
    panel_colours,
)
from contextforcing.data.world.panorama.heldout import HELDOUT_SECONDS, TOURS, heldout_worlds, tour_script
from contextforcing.data.world.panorama.render import render, room_image
from contextforcing.data.world.panorama.revisits import track_revisits
from contextforcing.data.world.panorama.script import (
    CAMERA_ACTIONS,
    HEADINGS,
    PALETTE_NAMES,
    SPEEDS,
    PanoramaPrompt,
    WhiteBall,
    parse_panorama_prompt,
    read_script,
    script_from_chunks,
)
from contextforcing.data.world.panorama.simulate import CELL_INDEX, PanoramaSpec, simulate
from contextforcing.data.world.prompts import EVAL_SEED_BASE
from contextforcing.data.world.style import SHAPE_MASKS
from contextforcing.errors import UserError

WHITE = WhiteBall("rightward", "slow")


def small_script(lights_off=True, white=WHITE, black=True):
    b = ScriptBuilder("cool", white, black)
    b.hold(3).pan("right", 4).hold(2)
    if lights_off:
        b.lights_off(2)
    return b.pan("left", 4).build(chunks_for_seconds(12))


# ------------------------------------------------------------------------------------------------ grammar
def test_prompt_grammar_accepts_the_documented_forms():
    p = parse_panorama_prompt("warm room, pan left, lights on, white ball bouncing leftward fast, black ball")
    assert p == PanoramaPrompt("warm", "pan left", True, WhiteBall("leftward", "fast"), True)
    assert parse_panorama_prompt(p.canonical) == p
    # any clause order, case, spaces, a leading article; the white ball may bounce in place
    q = parse_panorama_prompt("  The SAND room , Lights OFF,white ball bouncing slow ,  hold")
    assert q == PanoramaPrompt("sand", "hold", False, WhiteBall(None, "slow"), False)
    assert q.canonical == "sand room, hold, lights off, white ball bouncing slow"


@pytest.mark.parametrize(
    "prompt, named",
    [
        ("teal room, hold, lights on", "unknown palette 'teal'; choose one of warm, cool"),
        ("warm room, pan up, lights on", "unknown camera action 'pan up'; choose one of hold, pan left, pan right"),
        ("warm room, hold, lights dim", "unknown light state 'dim'; choose one of on, off"),
        ("warm room, hold, lights on, white ball bouncing upward fast", "unknown ball heading 'upward'"),
        (
            "warm room, hold, lights on, white ball bouncing leftward quick",
            "unknown ball speed 'quick'; choose one of slow, fast",
        ),
        ("warm room, hold, lights on, red ball", "cannot parse clause 'red ball'"),
        ("warm room, hold, pan left, lights on", "repeats the camera"),
        ("warm room, lights on", "missing the camera action"),
        ("warm room, hold", "missing the light state"),
        ("a red ball in a room", "expected '<palette> room"),
    ],
)
def test_bad_prompts_are_one_line_errors_naming_the_bad_word(prompt, named):
    with pytest.raises(UserError) as err:
        parse_panorama_prompt(prompt)
    assert named in str(err.value) and "\n" not in str(err.value)


def write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "lines, named",
    [
        (
            [{"at": 0, "prompt": "warm room, hold, lights on"}, {"at": 3, "prompt": "cool room, hold, lights on"}],
            "line 2: room 'cool' differs from the first prompt's 'warm'",
        ),
        (
            [
                {"at": 0, "prompt": "warm room, hold, lights on"},
                {"at": 3, "prompt": "warm room, hold, lights on, black ball"},
            ],
            "line 2: the balls (black) differ from the first prompt's (none)",
        ),
        ([{"at": 1.5, "prompt": "warm room, hold, lights on"}], "line 1: the first prompt must be at 0 s"),
        (
            [{"at": 0, "prompt": "warm room, hold, lights on"}, {"at": 30, "prompt": "warm room, hold, lights off"}],
            "past the end of the video",
        ),
        (
            [
                {"at": 0, "prompt": "warm room, hold, lights on"},
                {"at": 3, "prompt": "warm room, pan sideways, lights on"},
            ],
            "line 2: bad panorama prompt",
        ),
        (
            [
                {"at": 0, "prompt": "warm room, hold, lights on"},
                {"at": 0.3, "prompt": "warm room, pan left, lights on"},
            ],
            "lands on chunk 0",
        ),
    ],
)
def test_bad_scripts_are_one_line_errors_naming_the_line(tmp_path, lines, named):
    with pytest.raises(UserError) as err:
        read_script(write(tmp_path / "s.jsonl", lines), chunks_for_seconds(10))
    assert named in str(err.value) and "\n" not in str(err.value)


def test_script_times_land_on_chunks_as_generate_places_them(tmp_path):
    # 1.9 s rounds to chunk 3 (2.25 s) exactly as `generate --prompts` rounds it (0.75 s chunks, half up)
    lines = [
        {"at": 0, "prompt": "warm room, hold, lights on"},
        {"at": 1.9, "prompt": "warm room, pan right, lights on"},
    ]
    script = read_script(write(tmp_path / "s.jsonl", lines), chunks_for_seconds(10))
    assert [e.chunk for e in script.entries] == [0, 3]
    assert script.to_jsonl().splitlines()[1] == json.dumps({"at": 2.25, "prompt": "warm room, pan right, lights on"})


def test_every_grammar_word_is_its_own_token_for_the_bag_of_words_encoder():
    words = {
        "room",
        "hold",
        "pan",
        "lights",
        "on",
        "off",
        "white",
        "ball",
        "bouncing",
        "black",
        *PALETTE_NAMES,
        *HEADINGS,
        *SPEEDS,
        *(a.split()[-1] for a in CAMERA_ACTIONS),
    }
    model = PRESETS["world"].model
    encoder = HashTextEncoder(model.text_dim, model.text_len)
    ids = {w: encoder.token_ids(w)[0] for w in words}
    assert len(set(ids.values())) == len(words)  # no two words collide in the hash table
    longest = PanoramaPrompt("warm", "pan right", False, WhiteBall("rightward", "fast"), True).canonical
    assert len(encoder.token_ids(longest)) <= model.text_len


# ------------------------------------------------------------------------------------------- simulation
def test_ground_truth_is_a_deterministic_function_of_script_and_seed():
    spec = PanoramaSpec(small_script(), 3, 12)
    a, b = simulate(spec), simulate(spec)
    for field in ("panels", "objects", "frame_state", "camera_x", "lit"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert np.array_equal(a.balls, b.balls, equal_nan=True) and a.events == b.events
    assert np.array_equal(render(a), render(b))
    other = simulate(PanoramaSpec(small_script(), 4, 12))
    assert not np.array_equal(a.panels, other.panels)
    # the room depends on the seed (and palette), not on where the camera goes
    elsewhere = simulate(PanoramaSpec(small_script(lights_off=False), 3, 12))
    assert np.array_equal(a.panels, elsewhere.panels) and np.array_equal(a.objects[0], elsewhere.objects[0])


def test_camera_follows_the_script_one_latent_column_per_latent_frame():
    track = simulate(PanoramaSpec(small_script(), 0, 12))
    x = track.latent_camera
    assert np.all(x % COLUMN == 0)
    # hold 3 chunks (latents 0..8), pan right 4 chunks = 12 latent frames of 8 px, ...
    assert np.all(x[:9] == 0) and x[9] == COLUMN and x[20] == 12 * COLUMN
    assert np.array_equal(np.diff(track.camera_x[32:41]), [2] * 8)  # 2 px per pixel frame while panning
    assert track.latent_camera[-1] == 0  # and back: pan left 4 chunks


def test_lights_off_is_black_exactly_where_the_script_says():
    track = simulate(PanoramaSpec(small_script(), 0, 12))
    frames = render(track)
    off = np.flatnonzero(~track.lit)
    assert off[0] == latent_end_frame(26) + 1 and off[-1] == latent_end_frame(32)  # chunks 9-10
    assert not frames[off].any() and frames[track.lit].reshape(track.lit.sum(), -1).max(1).min() > 0


def test_balls_move_as_stated_and_bounce_between_floor_and_ceiling():
    track = simulate(PanoramaSpec(small_script(), 5, 12))
    white, black = track.balls[:, 0], track.balls[:, 1]
    speed = BALL_SPEEDS["slow"]
    step = np.mod(np.diff(white[:, 0]) + ROOM_WIDTH / 2, ROOM_WIDTH) - ROOM_WIDTH / 2
    assert np.allclose(step, speed / FPS, atol=1e-3)  # rightward, slow
    assert np.allclose(np.abs(np.diff(white[:, 1]))[np.abs(np.diff(white[:, 1])) > 1e-6].max(), speed / FPS, atol=1e-3)
    assert BALL_Y_RANGE[0] <= white[:, 1].min() and white[:, 1].max() <= BALL_Y_RANGE[1]
    assert np.ptp(black[:, 0]) == 0 and np.ptp(black[:, 1]) > 0  # the black ball bounces in place
    no_balls = simulate(PanoramaSpec(small_script(white=None, black=False), 5, 12))
    assert np.isnan(no_balls.balls).all()


def test_events_happen_only_where_the_camera_sees_them():
    tracks = [simulate(PanoramaSpec(sample_training_script(np.random.default_rng(i), 40), i, 40)) for i in range(6)]
    assert sum(len(t.events) for t in tracks) > 20
    for track in tracks:
        for e in track.events:
            cells = (
                [e.new] if e.type == "appear" else [int(track.objects[track.frame_state[e.frame], e.slot, CELL_INDEX])]
            )
            if e.type == "move":
                cells.append(e.old)
            for f in range(latent_end_frame(e.latent - 1), min(track.n_frames, latent_end_frame(e.latent + 1) + 1)):
                assert track.lit[f]
                for cell in cells:
                    x = np.mod(cell % UNITS * CELL - track.camera_x[f], ROOM_WIDTH)
                    assert x <= VIEW - CELL, (e, f)


def test_the_wall_is_aperiodic():
    for seed in range(20):
        panels = simulate(PanoramaSpec(small_script(), seed, 12)).panels
        doubled = np.concatenate([panels, panels])
        runs = [len(set(doubled[i : i + PANEL_MAX_RUN + 1])) > 1 for i in range(N_PANELS)]
        assert all(runs)
        views = {tuple(doubled[i : i + VIEW // COLUMN]) for i in range(N_PANELS)}
        assert len(views) == N_PANELS  # no view-wide stretch of wall repeats


def test_render_matches_a_per_pixel_reference():
    """Each view pixel is the room pixel at (camera x + x) mod the room's width, under the balls' discs, black
    with the lights off; the room is the wall's panel colours with each object's shape in its cell."""
    track = simulate(PanoramaSpec(small_script(), 7, 12))
    frames = render(track)
    colours = panel_colours(track.palette)
    yy, xx = np.mgrid[0:VIEW, 0:VIEW] + 0.5
    for t in (0, 40, 101, 120, 170):
        room = room_image(track, track.objects[track.frame_state[t]])
        wall = colours[np.repeat(track.panels, COLUMN)]
        objects = (room != wall[None]).any(-1)
        assert objects.sum() == sum(SHAPE_MASKS[row[3]].sum() for row in track.objects[track.frame_state[t]] if row[0])
        expected = np.stack([room[:, (track.camera_x[t] + x) % ROOM_WIDTH] for x in range(VIEW)], axis=1)
        for ball, name in enumerate(BALL_COLOURS):
            cx, cy = track.balls[t, ball]
            sx = (cx - track.camera_x[t] + ROOM_WIDTH / 2) % ROOM_WIDTH - ROOM_WIDTH / 2
            expected[(xx - sx) ** 2 + (yy - cy) ** 2 <= BALL_RADIUS**2] = BALL_COLOURS[name]
        if not track.lit[t]:
            expected[:] = 0
        assert np.array_equal(frames[t], expected), t


# ------------------------------------------------------------------------------------------- annotations
def test_annotations_round_trip_and_refuse_other_versions(tmp_path):
    track = simulate(PanoramaSpec(small_script(), 9, 12))
    data = json.loads(json.dumps(track_to_json(track)))
    again = track_from_json(data)
    assert np.array_equal(render(again), render(track))
    assert len(data["revisits"]) == len(track_revisits(track)) and data["chunk_prompts"][0] == track.chunk_prompts()[0]
    data["per_frame"]["camera_x"][5] += 2
    with pytest.raises(UserError, match="differs from what this version"):
        track_from_json(data)
    (tmp_path / "a.json").write_text('{"format": "contextforcing.panorama/1", "seed": 1}')
    with pytest.raises(UserError, match="malformed panorama annotation file"):
        load_panorama_annotations(tmp_path / "a.json")


# --------------------------------------------------------------------------------------------- held out
def test_heldout_worlds_cover_every_bucket_mostly_beyond_the_first_view():
    worlds = heldout_worlds()
    assert len(worlds) == 16 and len({(w.seed, w.script) for w in worlds}) == 16
    assert all(w.seed >= EVAL_SEED_BASE and w.seconds == HELDOUT_SECONDS for w in worlds)
    assert heldout_worlds(len(TOURS) * 3)[:16] == worlds
    for i in range(len(TOURS)):
        track = simulate(worlds[i])
        revisits = track_revisits(track)
        assert {r.bucket for r in revisits} == {"fast", "slow", "beyond"}
        assert max(r.delay_seconds for r in revisits) > 60
        assert np.mean([r.in_sink for r in revisits]) < 0.3
        assert {r.cause for r in revisits} >= {"pan", "lights"} and any(track.spec.script.balls)
        steps = set(np.sign(np.diff(track.latent_camera)).tolist())
        assert steps == {-1, 0, 1} and (~track.lit).any()
        assert tour_script(i) == worlds[i].script


def test_training_scripts_are_seeded_and_never_held_out():
    a = sample_training_script(np.random.default_rng(5), 30)
    assert a == sample_training_script(np.random.default_rng(5), 30)
    assert a != sample_training_script(np.random.default_rng(6), 30)
    heldout = {w.script for w in heldout_worlds()}
    buckets = set()
    for i in range(30):
        spec = training_world(0, i, 40)
        assert spec.seed < EVAL_SEED_BASE and spec.script not in heldout and any(spec.script.balls)
        buckets |= {r.bucket for r in track_revisits(simulate(spec))}
    assert buckets == {"fast", "slow", "beyond"}


def test_dataset_lists_clips_that_load_as_the_same_worlds(tmp_path):
    from contextforcing.data.world.panorama.loader import PanoramaClipDataset

    config = PanoramaDatasetConfig(count=3, seconds=6, seed=2)
    manifest = write_panorama_dataset(tmp_path / "ds", config)
    assert manifest["count"] == 3 and manifest["n_frames"] == 93
    on_disk, drawn = PanoramaClipDataset(tmp_path / "ds"), PanoramaClipDataset(config=config)
    item = on_disk[1]
    assert item["frames"].shape == (93, 64, 64, 3) and len(item["chunk_prompts"]) == 8
    assert np.array_equal(item["frames"].numpy(), drawn[1]["frames"].numpy())
    assert item["chunk_prompts"] == simulate(training_world(2, 1, 6)).chunk_prompts()
    with pytest.raises(UserError, match="already holds a dataset"):
        write_panorama_dataset(tmp_path / "ds", config)


def test_script_from_chunks_merges_repeats():
    p = PanoramaPrompt("dusk")
    script = script_from_chunks([p, p, dataclasses.replace(p, camera="pan left"), p])
    assert [e.chunk for e in script.entries] == [0, 2, 3]


# ---------------------------------------------------------------------------------------------------- CLI
def run_cli(argv, capsys):
    """The real command line: exit code, stdout, and the one-line error on stderr."""
    from contextforcing.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_cli_script_render_and_heldout(tmp_path, capsys):
    code, _, _ = run_cli(["world", "script", "--heldout", "1", "--out", str(tmp_path / "tour.jsonl")], capsys)
    assert code == 0 and (tmp_path / "tour.jsonl").read_text() == heldout_worlds(2)[1].script.to_jsonl()
    code, out, err = run_cli(
        [
            "world",
            "render",
            "--script",
            str(tmp_path / "tour.jsonl"),
            "--seed",
            "3",
            "--seconds",
            "90",
            "--out",
            str(tmp_path / "w"),
            "--npy",
        ],
        capsys,
    )
    assert code == 0, err
    assert {p.name for p in (tmp_path / "w").iterdir()} == {
        "video.mp4",
        "annotations.json",
        "script.jsonl",
        "frames.npy",
    }
    track = load_panorama_annotations(tmp_path / "w" / "annotations.json")
    assert track.seed == 3 and np.array_equal(np.load(tmp_path / "w" / "frames.npy"), render(track))
    assert "revisits fast/slow/beyond" in out
    code, out, _ = run_cli(["world", "heldout", "--world", "panorama", "--count", "2"], capsys)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [x["seed"] for x in lines] == [w.seed for w in heldout_worlds(2)]
    code, _, _ = run_cli(
        ["world", "dataset", "--world", "panorama", "--count", "4", "--seconds", "5", "--out", str(tmp_path / "ds")],
        capsys,
    )
    assert code == 0 and len((tmp_path / "ds" / "clips.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--seed", "1", "--seconds", "5"], "--script"),
        (["--script", "SCRIPT", "--seconds", "5"], "--seed"),
        (["--script", "SCRIPT", "--seed", "1", "--seconds", "5", "--prompt", "plain warm room"], "occlusion world"),
        (
            ["--script", "SCRIPT", "--seed", "1", "--seconds", "5", "--world", "occlusion"],
            "leave out --world occlusion",
        ),
        (["--script", "missing.jsonl", "--seed", "1", "--seconds", "5"], "does not exist"),
    ],
)
def test_cli_render_errors_are_one_line(tmp_path, capsys, argv, named):
    script = write(tmp_path / "s.jsonl", [{"at": 0, "prompt": "warm room, hold, lights on"}])
    argv = [str(script) if a == "SCRIPT" else str(tmp_path / a) if a.endswith(".jsonl") else a for a in argv]
    if "--script" not in argv and "--prompt" not in argv:
        argv = ["--world", "panorama", *argv]
    code, _, err = run_cli(["world", "render", *argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and named in err and "\n" not in err
    assert not (tmp_path / "out" / "video.mp4").exists()
