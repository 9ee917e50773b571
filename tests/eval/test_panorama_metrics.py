"""The panorama metrics measure what they claim: ground truth is perfect, hand-made changes give the
hand-computed numbers, forgetting fails exactly the revisits longer than its window, a still picture never
scores as well as the truth, and every metric whose event did not happen says "not applicable"."""

import dataclasses
import json

import numpy as np
import pytest
from test_eval_cli import run_cli  # tests/eval: the eval subcommand as the CLI runs it

from contextforcing.data.world.panorama.annotations import track_to_json
from contextforcing.data.world.panorama.generator import ScriptBuilder, chunks_for_seconds, sample_training_script
from contextforcing.data.world.panorama.geometry import BALL_COLOURS, BALL_Y_RANGE, CELL, OBJECT_COLOURS, panel_colours
from contextforcing.data.world.panorama.heldout import heldout_worlds
from contextforcing.data.world.panorama.render import render
from contextforcing.data.world.panorama.revisits import track_revisits
from contextforcing.data.world.panorama.script import WhiteBall
from contextforcing.data.world.panorama.simulate import PanoramaSpec, simulate
from contextforcing.eval import oracles
from contextforcing.eval.panorama_metrics import HEADLINE, NOT_APPLICABLE, panorama_metrics, panorama_scores
from contextforcing.eval.panorama_motion import MAX_SHIFT, frame_shifts, latent_steps, window_velocity
from contextforcing.io.video import VideoWriter, read_video

BAD_ERROR = 0.05  # a redrawn part of the room changes far more than 5% of its pixels


def tour(white=WhiteBall("leftward", "slow"), black=True, lights=True, seconds=40):
    """40 s with revisits in every bucket: a glance (fast), a blackout (fast), view A again (slow), a 21 s
    blackout (beyond)."""
    b = ScriptBuilder("warm", white, black)
    b.hold(3).pan("right", 1).pan("left", 1).hold(2)
    b.pan("right", 3).hold(3)
    if lights:
        b.lights_off(1)
    b.hold(2).pan("left", 3).hold(2)
    if lights:
        b.lights_off(28)
    b.hold(3)
    return b.build(chunks_for_seconds(seconds))


@pytest.fixture(scope="module")
def world():
    track = simulate(PanoramaSpec(tour(), 17, 40))  # a seed whose black ball the tour passes
    return track, render(track)


@pytest.fixture(scope="module")
def truth_scores(world):
    return panorama_scores(world[1], world[0])


def test_the_test_tour_has_every_bucket(world):
    assert {r.bucket for r in track_revisits(world[0])} == {"fast", "slow", "beyond"}


def test_ground_truth_is_perfect(truth_scores):
    h = truth_scores.headline()
    assert all(h[k] == 1.0 for k in ("camera_pans", "camera_holds", "movers", "lighting"))
    # its exact frames remember at least as well as the truth through the codec (memory_score's 1)
    assert all(h[k] is None or h[k] >= 1.0 for k in h if k.startswith("memory"))
    assert all(
        s.made == s.revisits > 0 and s.error == 0.0 and s.permanence == 1.0 for s in truth_scores.buckets.values()
    )
    assert all(s.psnr == 99.0 and s.ssim == 1.0 for s in truth_scores.buckets.values())
    assert truth_scores.movers.windows > 5 and truth_scores.palette == 1.0 and truth_scores.camera.error_px == 0.0


def test_ground_truth_through_mp4_stays_near_perfect(world, tmp_path):
    track, frames = world
    with VideoWriter(tmp_path / "gt.mp4", 16) as w:
        w.write(frames)
    s = panorama_scores(read_video(tmp_path / "gt.mp4")[0], track)
    assert s.camera.pans == 1.0 and s.camera.holds == 1.0 and s.lighting.lighting == 1.0
    for b in s.buckets.values():
        assert b.made == b.revisits and b.error < 0.02 and b.permanence == 1.0
    assert s.movers.obeyed > 0.9


def test_frame_shifts_recover_known_motion():
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (64, 400, 3)).astype(np.uint8)
    x = np.cumsum([0, 2, 2, -3, 0, 7, -16, 1, 5])
    frames = np.stack([texture[:, 100 + s : 164 + s] for s in x])
    none_dark = np.zeros(len(x), bool)
    shifts = frame_shifts(frames, none_dark)
    assert np.isnan(shifts[0]) and shifts[1:].tolist() == np.diff(x).tolist()
    assert frame_shifts(frames, none_dark, lag=4)[4:].tolist() == (x[4:] - x[:-4]).tolist()
    # per latent frame: between the last pixel frames of latent frames 0 (frame 0), 1 (frame 4), 2 (frame 8)
    assert latent_steps(frames, none_dark, 3).tolist() == [0.0, x[4] - x[0], x[8] - x[4]]
    flat = np.full((4, 64, 64, 3), 90, np.uint8)
    assert frame_shifts(flat, np.zeros(4, bool))[1:].tolist() == [0, 0, 0]  # nothing seen moving: no motion
    dark = np.array([False, True, False, False])
    assert np.isnan(frame_shifts(frames[:4], dark)[1:3]).all() and MAX_SHIFT >= 16


def test_forgetting_fails_the_revisits_longer_than_its_window(world):
    track, frames = world
    for window in (0.0, 1.5, 20.0):
        rows = panorama_scores(oracles.forgetting(track, frames, window), track).revisits
        assert rows and all(r["made"] for r in rows)
        kept = [r["error"] for r in rows if r["delay_seconds"] <= window]
        redrawn = [r["error"] for r in rows if r["delay_seconds"] > window]
        assert all(e == 0.0 for e in kept)
        # a random redraw can match by chance (two wall panels, no object: 1 in 9), but mostly it does not
        assert np.mean(np.array(redrawn) > BAD_ERROR) >= 0.75 and np.mean(redrawn) > 0.3


def test_revisit_error_counts_changed_pixels_outside_the_balls(world, truth_scores):
    track, frames = world
    r = next(r for r in track_revisits(track) if r.bucket == "slow")
    video = frames.copy()
    region = video[r.frame_after][:, r.x_after : r.x_after + CELL]
    wall = [tuple(c) for c in panel_colours(track.palette)]
    # repaint 4 full columns of the unit with a wall colour none of them had, and add a white ball blob
    for col in range(4):
        column = region[:, col]
        other = next(c for c in wall if not (column == c).all(-1).any())
        column[:] = other
    region[20:30, 8:14] = BALL_COLOURS["white"]
    row = next(
        x for x in panorama_scores(video, track).revisits if (x["unit"], x["back_latent"]) == (r.unit, r.back_latent)
    )
    before = frames[r.frame_before][:, r.x_before : r.x_before + CELL]
    balls = np.zeros((64, CELL), bool)
    for c in BALL_COLOURS.values():
        balls |= (before == c).all(-1) | (region == c).all(-1)
    grown = balls.copy()
    grown[1:] |= balls[:-1]
    grown[:-1] |= balls[1:]
    grown2 = grown.copy()
    grown2[:, 1:] |= grown[:, :-1]
    grown2[:, :-1] |= grown[:, 1:]
    changed = np.zeros((64, CELL), bool)
    changed[:, :4] = True
    expected = (changed & ~grown2).sum() / (~grown2).sum()
    assert row["error"] == pytest.approx(expected)


def test_permanence_is_the_share_of_objects_found_again_in_their_cell(world):
    track, frames = world
    colours = np.array(list(OBJECT_COLOURS.values()), np.uint8)

    def object_pixels(region):
        return (region[..., None, :] == colours).all(-1)  # [64, 16, colours]

    r = next(
        r
        for r in track_revisits(track)
        if object_pixels(frames[r.frame_before][:, r.x_before : r.x_before + CELL]).sum() >= 60
    )
    video = frames.copy()
    region = video[r.frame_after][:, r.x_after : r.x_after + CELL]
    found = object_pixels(region)
    for k in range(len(colours)):  # every object of the unit takes the next colour
        region[found[..., k]] = colours[(k + 1) % len(colours)]
    row = next(
        x for x in panorama_scores(video, track).revisits if (x["unit"], x["back_latent"]) == (r.unit, r.back_latent)
    )
    assert row["objects_before"] >= 1 and row["permanence"] == 0.0
    assert row["error"] > 0


def test_camera_panning_the_wrong_way_fails_the_pans(world):
    track, _ = world
    mirrored = ScriptBuilder("warm", WhiteBall("leftward", "slow"), True)
    for p in track.prompts():
        turn = {"pan left": "pan right", "pan right": "pan left"}.get(p.camera, p.camera)
        mirrored.add(1, camera=turn, lights_on=p.lights_on)
    other = simulate(PanoramaSpec(mirrored.build(track.spec.n_chunks), track.seed, 40))
    s = panorama_scores(render(other), track)
    assert s.camera.pans == 0.0 and s.camera.holds == 1.0


def test_balls_frozen_or_too_fast_do_not_obey(world):
    track, _ = world
    frozen = dataclasses.replace(track, balls=np.repeat(track.balls[:1], track.n_frames, axis=0))
    assert panorama_scores(render(frozen), track).movers.obeyed == 0.0
    fast = simulate(PanoramaSpec(tour(white=WhiteBall("leftward", "fast")), track.seed, 40))
    s = panorama_scores(render(fast), track)
    assert s.movers.per_ball["white"]["obeyed"] == 0.0 and s.movers.per_ball["black"]["obeyed"] == 1.0


def test_vertical_speed_is_net_away_from_floor_and_ceiling():
    up = np.full(12, -1.0)  # 1 px per frame upwards, mid-air
    assert window_velocity(np.zeros(12), up, np.linspace(40, 30, 24)) == (0.0, 1.0)
    loop = np.array([-1.0] * 5 + [1.25] * 4 + [-1.0] * 3)  # plays 9 frames, jumps back: goes nowhere
    assert window_velocity(np.zeros(12), loop, np.linspace(36, 30, 24))[1] <= 0.25
    bounce = np.array([-1.0] * 6 + [1.0] * 6)  # turns at the ceiling: the rate of its path
    assert window_velocity(np.zeros(12), bounce, np.linspace(20, BALL_Y_RANGE[0], 24)) == (0.0, 1.0)


def test_lighting_counts_both_ways(world):
    track, frames = world
    inverted = frames.copy()
    inverted[~track.lit] = frames[track.lit][0]
    inverted[track.lit] = 0
    assert panorama_scores(inverted, track).lighting.lighting == 0.0
    never_dark = panorama_scores(oracles.copy_last_visible(track, frames), track)
    assert never_dark.lighting.dark_when_off == 0.0 and never_dark.lighting.lit_when_on == 1.0


def _not_worse(truth, other, higher):
    return other is None or (other >= truth if higher else other <= truth)


def test_a_still_picture_never_scores_as_well_as_the_truth():
    specs = heldout_worlds(1) + [PanoramaSpec(tour(), 3, 40)]
    specs += [PanoramaSpec(sample_training_script(np.random.default_rng(i), 15), i, 15) for i in range(8)]
    for spec in specs:
        track = simulate(spec)
        frames = render(track)
        truth = panorama_scores(frames, track).headline()
        for still in (oracles.still_picture(track, frames), oracles.copy_the_sink(track, frames)):
            got = panorama_scores(still, track).headline()
            never_better = all(
                got[k] is None or truth[k] is None or _not_worse(got[k], truth[k], higher) for k, _, higher in HEADLINE
            )
            worse_somewhere = any(
                truth[k] is not None and not _not_worse(truth[k], got[k], higher) for k, _, higher in HEADLINE
            )
            assert never_better and worse_somewhere, (spec.seed, got, truth)


# ------------------------------------------------------------------------------------- not applicable
def test_no_pan_in_the_script_leaves_the_pan_score_not_applicable():
    spec = PanoramaSpec(ScriptBuilder("sand", WhiteBall(None, "fast"), False).hold(4).build(4), 1, 3)
    track = simulate(spec)
    m = panorama_metrics(render(track), track)
    assert m["headline"]["camera_pans"] == NOT_APPLICABLE and m["headline"]["camera_holds"] == 1.0


def test_a_script_that_always_pans_leaves_the_hold_score_not_applicable():
    spec = PanoramaSpec(ScriptBuilder("sand", None, True).pan("left", 4).build(4), 1, 3)
    track = simulate(spec)
    m = panorama_metrics(render(track), track)
    assert m["headline"]["camera_holds"] == NOT_APPLICABLE and m["headline"]["camera_pans"] == 1.0


def test_no_lights_off_leaves_lighting_not_applicable():
    track = simulate(PanoramaSpec(tour(lights=False), 2, 40))
    m = panorama_metrics(render(track), track)
    assert m["headline"]["lighting"] == NOT_APPLICABLE and m["lighting"]["lit_when_on"] == 1.0


def test_no_ball_in_the_script_or_none_shown_leaves_movers_not_applicable(world):
    track = simulate(PanoramaSpec(tour(white=None, black=False), 2, 40))
    assert panorama_metrics(render(track), track)["headline"]["movers"] == NOT_APPLICABLE
    track = world[0]
    m = panorama_metrics(render(track, balls=False), track)
    assert m["headline"]["movers"] == NOT_APPLICABLE and m["movers"]["windows"] == 0


def test_a_bucket_without_revisits_in_the_script_is_not_applicable():
    track = simulate(PanoramaSpec(tour(lights=False, seconds=14), 2, 14))
    m = panorama_metrics(render(track), track)
    beyond = m["revisit_buckets"]["beyond"]
    assert beyond["revisits"] == 0 and m["headline"]["memory_beyond"] == NOT_APPLICABLE
    assert beyond["error"] == NOT_APPLICABLE and beyond["permanence"] == NOT_APPLICABLE
    assert m["revisit_buckets"]["slow"]["error"] == 0.0 and m["headline"]["memory_slow"] >= 1.0


def test_revisits_a_still_picture_never_makes_are_not_applicable(world):
    track, frames = world
    m = panorama_metrics(oracles.still_picture(track, frames), track)
    for b in ("fast", "slow", "beyond"):
        assert m["revisit_buckets"][b]["made"] == 0 and m["revisit_buckets"][b]["revisits"] > 0
        assert m["revisit_buckets"][b]["error"] == NOT_APPLICABLE
        assert m["headline"][f"memory_{b}"] == 0.0  # a revisit that did not happen counts as forgotten
    assert {r["not_made_because"] for r in m["revisits"]} == {"never out of sight"}


def test_a_camera_that_does_not_come_back_makes_no_revisit(world):
    track, _ = world
    away = ScriptBuilder("warm", WhiteBall("leftward", "slow"), True)
    for p in track.prompts():
        away.add(1, camera="pan right" if p.camera == "pan left" else p.camera, lights_on=True)
    other = simulate(PanoramaSpec(away.build(track.spec.n_chunks), track.seed, 40))
    rows = panorama_scores(render(other), track).revisits
    assert any(r["not_made_because"] == "camera did not come back" for r in rows)


def test_permanence_is_not_applicable_where_no_object_was_there(world):
    track, _ = world
    empty = dataclasses.replace(track, objects=np.zeros_like(track.objects))
    m = panorama_metrics(render(empty), track)
    for b in ("fast", "slow", "beyond"):
        assert m["revisit_buckets"][b]["permanence"] == NOT_APPLICABLE
        assert m["revisit_buckets"][b]["error"] == 0.0


def test_eval_cli_reports_panorama_metrics_and_not_applicable_everywhere(world, tmp_path, capsys):
    track, frames = world
    (tmp_path / "annotations.json").write_text(json.dumps(track_to_json(track)))
    np.save(tmp_path / "truth.npy", frames)
    np.save(tmp_path / "still.npy", oracles.still_picture(track, frames))
    code, err = run_cli(
        [
            "eval",
            str(tmp_path / "truth.npy"),
            str(tmp_path / "still.npy"),
            "--labels",
            "truth,still",
            "--world-annotations",
            str(tmp_path / "annotations.json"),
            "--report",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    assert code == 0, err
    out = capsys.readouterr().out
    still_line = next(line for line in out.splitlines() if line.startswith("still:"))
    assert "camera pans 0.00" in still_line and "memory score 0.00" in still_line and "revisits made 0/" in still_line
    truth_line = next(line for line in out.splitlines() if line.startswith("truth:"))
    assert "memory score 1." in truth_line and "camera pans 1.00" in truth_line
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    still = metrics["videos"]["still"]["panorama"]
    assert still["revisit_buckets"]["beyond"]["error"] == NOT_APPLICABLE and still["headline"]["memory_beyond"] == 0.0
    assert metrics["videos"]["truth"]["panorama"]["revisit_buckets"]["beyond"]["error"] == 0.0
    page = (tmp_path / "r" / "report.html").read_text()
    assert (
        "memory score (beyond)" in page and "revisit error (beyond, made revisits)" in page and NOT_APPLICABLE in page
    )
    assert any(p.name.startswith("strip_revisit") for p in (tmp_path / "r").iterdir())
    short = frames[:-4]
    np.save(tmp_path / "short.npy", short)
    code, err = run_cli(
        [
            "eval",
            str(tmp_path / "short.npy"),
            "--world-annotations",
            str(tmp_path / "annotations.json"),
            "--report",
            str(tmp_path / "r3"),
        ]
    )
    assert code == 2 and "annotations of a different video" in err and "\n" not in err


def test_a_made_revisit_without_an_error_goes_through_the_whole_report(world, tmp_path):
    """A revisit can happen and still have no error (its region mostly ball-coloured in one of the two frames):
    metrics.json writes "not applicable" there, and every plot, table and strip of the report takes it."""
    from contextforcing.eval.evaluate import evaluate_video
    from contextforcing.eval.report import write_report

    track, frames = world
    result = evaluate_video("video", "video.npy", frames, 16.0, [], track)
    metrics = result.metrics["panorama"] = json.loads(json.dumps(result.metrics["panorama"]))  # as metrics.json
    made = [r for r in metrics["revisits"] if r["made"]]
    for r in made[:3]:  # as revisit_row writes such a revisit
        r.update({k: NOT_APPLICABLE for k in ("error", "permanence", "psnr", "ssim")})
        r["not_scored_because"] = "the region is mostly ball-coloured in one of the two frames"
    (tmp_path / "r").mkdir()  # the eval command makes it, beside its staged report
    write_report(tmp_path / "r", [result], [], tracks=[track])
    page = (tmp_path / "r" / "report.html").read_text()
    assert (tmp_path / "r" / "panorama.png").stat().st_size > 10_000 and NOT_APPLICABLE in page
    written = json.loads((tmp_path / "r" / "metrics.json").read_text())["videos"]["video"]["panorama"]["revisits"]
    assert sum(r["error"] == NOT_APPLICABLE for r in written if r["made"]) >= 3
