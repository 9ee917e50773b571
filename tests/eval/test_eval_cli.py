"""`eval` end to end: report files for several videos side by side, and one-line errors with exit code 2."""

import argparse
import json

import numpy as np
import pytest

from contextforcing.cli import evaluation as eval_cli
from contextforcing.data.world.annotations import track_to_json
from contextforcing.data.world.render import render
from contextforcing.data.world.track import WorldSpec, simulate
from contextforcing.errors import UserError
from contextforcing.eval import baselines
from contextforcing.io.video import VideoWriter


def run_cli(argv, capsys=None):
    """What the main CLI does with our subcommand: UserError -> one line on stderr, exit code 2."""
    parser = argparse.ArgumentParser(prog="contextforcing")
    eval_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args), None
    except UserError as err:
        return 2, str(err)


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    track = simulate(WorldSpec("striped cool room, curtain occlusions", 5, 20, (1.0, 3.0)))
    frames = render(track)
    with VideoWriter(d / "truth.mp4", 16) as w:
        w.write(frames)
    np.save(d / "forgetful.npy", baselines.forgetful(track, 1.5))
    (d / "annotations.json").write_text(json.dumps(track_to_json(track)))
    other = simulate(WorldSpec("striped cool room", 5, 10))
    (d / "other.json").write_text(json.dumps(track_to_json(other)))
    return d


def test_report_compares_videos_side_by_side(world_files, tmp_path):
    d = world_files
    code, err = run_cli(
        [
            "eval",
            str(d / "truth.mp4"),
            str(d / "forgetful.npy"),
            "--world-annotations",
            str(d / "annotations.json"),
            "--report",
            str(tmp_path / "r"),
            "--quiet",
            "--labels",
            "truth,forgetful",
        ]
    )
    assert (code, err) == (0, None)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    truth, forgetful = metrics["videos"]["truth"], metrics["videos"]["forgetful"]
    assert truth["world"]["restoration"]["buckets"]["mid"]["permanence"] == 1.0
    assert forgetful["world"]["restoration"]["buckets"]["mid"]["permanence"] < 0.5
    assert forgetful["world"]["restoration"]["buckets"]["short"]["restoration_error"] == 0.0
    assert truth["features"]["pixel"]["proxy"] is True and "10" in truth["features"]["pixel"]["first_frame_similarity"]
    assert 0 < metrics["aggregate_frame_weighted_consistency"]["pixel"] <= 1
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {
        "metrics.json",
        "report.html",
        "first_frame_similarity.png",
        "restoration_buckets.png",
        "world_curves.png",
    } <= files
    assert len([f for f in files if f.startswith("strip_occlusion")]) == 1  # only the 3 s occlusion is >= 1.5 s
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == sum(f.endswith(".png") for f in files)
    assert "src='http" not in page and "[PROXY]" in page
    assert "<th>truth</th><th>forgetful</th>" in page


def test_report_without_annotations(world_files, tmp_path):
    code, _ = run_cli(["eval", str(world_files / "truth.mp4"), "--report", str(tmp_path / "r"), "--quiet"])
    assert code == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "world" not in metrics["videos"]["truth"]
    assert (tmp_path / "r" / "strip_timeline.png").is_file()


@pytest.mark.parametrize(
    "case, needle",
    [
        ("garbage", "cannot read video"),
        ("missing_video", "does not exist"),
        ("mismatch", "annotations of a different video"),
        ("bad_annotations", "not a world annotation file"),
        ("missing_weights", "does not exist"),
        ("no_weights", "needs a local weights path"),
        ("annotation_count", "once per video"),
        ("fps_0", "--fps must be a positive number"),
        ("sizes", "the videos differ in resolution"),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_code_2(world_files, tmp_path, case, needle):
    d = world_files
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x01 definitely not a video")
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    argv = {
        "garbage": [str(tmp_path / "broken.mp4")],
        "missing_video": [str(tmp_path / "nope.mp4")],
        "mismatch": [str(d / "truth.mp4"), "--world-annotations", str(d / "other.json")],
        "bad_annotations": [str(d / "truth.mp4"), "--world-annotations", str(tmp_path / "bad.json")],
        "missing_weights": [str(d / "truth.mp4"), "--features", "dino", "--dino-weights", str(tmp_path / "x.pth")],
        "no_weights": [str(d / "truth.mp4"), "--features", "clip"],
        "annotation_count": [
            str(d / "truth.mp4"),
            str(d / "truth.mp4"),
            str(d / "truth.mp4"),
            "--world-annotations",
            str(d / "annotations.json"),
            "--world-annotations",
            str(d / "annotations.json"),
        ],
        "fps_0": [str(d / "forgetful.npy"), "--fps", "0"],
        "sizes": [str(d / "forgetful.npy"), str(tmp_path / "small.npy")],
    }[case]
    np.save(tmp_path / "small.npy", np.zeros((20, 32, 48, 3), np.uint8))
    code, err = run_cli(["eval", *argv, "--report", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and needle in err and "\n" not in err
    assert not (tmp_path / "r").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_report_that_fails_halfway_leaves_the_previous_report(world_files, tmp_path, monkeypatch):
    from contextforcing.eval import report

    out = tmp_path / "r"
    assert run_cli(["eval", str(world_files / "forgetful.npy"), "--report", str(out), "--quiet"])[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_html", full_disk)  # metrics.json and the plots are written by then
    code, err = run_cli(["eval", str(world_files / "truth.mp4"), "--report", str(out), "--quiet"])
    assert code == 2 and err.startswith(f"cannot write {out}: No space left on device") and "\n" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_a_report_on_a_real_full_disk_leaves_the_previous_report(world_files, small_disk):
    out = small_disk.path / "r"
    assert run_cli(["eval", str(world_files / "forgetful.npy"), "--report", str(out), "--quiet"])[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    small_disk.fill(leave=8192)
    code, err = run_cli(["eval", str(world_files / "truth.mp4"), "--report", str(out), "--quiet"])
    assert code == 2 and "No space left on device" in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in small_disk.path.iterdir()) == ["filler", "r"]
