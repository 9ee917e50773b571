"""Dataset shards: written in parallel, loaded exactly, both storage modes; and the `world` CLI."""

import argparse
import json

import numpy as np
import pytest
import torch

from contextforcing.cli import main
from contextforcing.cli import world_data as world_cli
from contextforcing.data.world.dataset import DatasetConfig, training_spec, write_dataset
from contextforcing.data.world.loader import WorldClipDataset
from contextforcing.data.world.prompts import EVAL_SEED_BASE
from contextforcing.data.world.render import render
from contextforcing.data.world.style import frames_for_seconds
from contextforcing.data.world.track import simulate
from contextforcing.errors import UserError
from contextforcing.io.video import read_video


def run_cli(argv) -> int:
    """What the main CLI does with our subcommand: UserError -> exit code 2."""
    parser = argparse.ArgumentParser(prog="contextforcing")
    world_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError:
        return 2


@pytest.mark.parametrize("workers", [1, 2])
def test_dataset_round_trip(tmp_path, workers):
    config = DatasetConfig(count=7, seconds=6, shard_size=3, workers=workers)
    manifest = write_dataset(tmp_path / "ds", config, progress=False)
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 1]
    assert manifest["n_frames"] == frames_for_seconds(6) == 93 and manifest["bytes"] > 0
    ds = WorldClipDataset(tmp_path / "ds")
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 7
    for i in (0, 4, 6):
        spec = training_spec(config, i)
        assert spec.seed < EVAL_SEED_BASE
        item = ds[i]
        assert item["prompt"] == spec.prompt and item["seed"] == spec.seed
        assert np.array_equal(item["frames"].numpy(), render(simulate(spec)))
        assert item["frames"].dtype == torch.uint8 and item["coverage"].shape == (93,)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers - 1)))
    assert batch["frames"].shape == (4, 93, 64, 64, 3)
    with pytest.raises(IndexError):
        ds[7]


def test_frames_store_equals_state_store(tmp_path):
    a = write_dataset(tmp_path / "a", DatasetConfig(count=3, seconds=4, workers=1), progress=False)
    b = write_dataset(tmp_path / "b", DatasetConfig(count=3, seconds=4, workers=1, store="frames"), progress=False)
    assert b["bytes"] > a["bytes"]
    sa, sb = WorldClipDataset(tmp_path / "a"), WorldClipDataset(tmp_path / "b")
    for i in range(3):
        assert torch.equal(sa[i]["frames"], sb[i]["frames"])


def test_dataset_errors(tmp_path):
    write_dataset(tmp_path / "ds", DatasetConfig(count=1, seconds=2, workers=1), progress=False)
    with pytest.raises(UserError, match="already holds"):
        write_dataset(tmp_path / "ds", DatasetConfig(count=1, seconds=2, workers=1), progress=False)
    with pytest.raises(UserError, match="--store"):
        DatasetConfig(count=1, seconds=2, store="latents").validate()
    with pytest.raises(UserError, match="not a world dataset"):
        WorldClipDataset(tmp_path)
    assert (
        run_cli(
            ["world", "dataset", "--world", "occlusion", "--count", "0", "--seconds", "2", "--out", str(tmp_path / "x")]
        )
        == 2
    )


def test_cli_dataset(tmp_path, capsys):
    code = run_cli(
        [
            "world",
            "dataset",
            "--world",
            "occlusion",
            "--count",
            "5",
            "--seconds",
            "3",
            "--out",
            str(tmp_path / "d"),
            "--shard-size",
            "2",
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["count"] == 5 and len(manifest["shards"]) == 3
    assert "5 clips" in capsys.readouterr().out


def test_cli_render_writes_video_and_annotations(tmp_path):
    out = tmp_path / "w"
    code = run_cli(
        [
            "world",
            "render",
            "--world",
            "occlusion",
            "--prompt",
            "striped cool room, curtain occlusions",
            "--seed",
            "4",
            "--seconds",
            "16",
            "--occlusions",
            "1,2",
            "--out",
            str(out),
            "--npy",
        ]
    )
    assert code == 0
    data = json.loads((out / "annotations.json").read_text())
    frames, fps = read_video(out / "video.mp4")
    assert fps == 16 and frames.shape == (data["n_frames"], 64, 64, 3)
    assert np.array_equal(np.load(out / "frames.npy"), render(simulate(training_like(data))))
    assert [o["seconds"] for o in data["occlusions"]] == [1.0, 2.0]
    assert not list(out.glob(".*")), "no partial files left behind"


def training_like(data):
    from contextforcing.data.world.track import WorldSpec

    return WorldSpec(data["prompt"], data["seed"], data["seconds"], tuple(data["occlusion_seconds"]))


def test_cli_render_errors(tmp_path, capsys):
    occlusion = ["world", "render", "--world", "occlusion"]
    assert (
        run_cli([*occlusion, "--prompt", "a blue room", "--seed", "1", "--seconds", "2", "--out", str(tmp_path)]) == 2
    )
    assert run_cli([*occlusion, "--seed", "1", "--out", str(tmp_path)]) == 2
    assert run_cli([*occlusion, "--heldout", "99", "--out", str(tmp_path)]) == 2
    assert run_cli([*occlusion, "--heldout", "0", "--out", str(tmp_path / "h")]) == 0
    capsys.readouterr()
    assert run_cli(["world", "heldout", "--world", "occlusion"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 16 and all(line["seed"] >= EVAL_SEED_BASE for line in lines)


def test_the_occlusion_world_is_chosen_by_name_only(tmp_path, capsys):
    """Without --world every command means the panorama world (the embedded model's); an occlusion prompt
    without --world occlusion is one line saying how to ask for it."""
    assert main(["world", "heldout"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 16 and all("script" in line and "prompt" not in line for line in lines)
    assert main(["world", "render", "--heldout", "0", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "script.jsonl").is_file()  # only a panorama world has a script
    capsys.readouterr()
    argv = [
        "world",
        "render",
        "--prompt",
        "striped cool room",
        "--seed",
        "1",
        "--seconds",
        "2",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "add --world occlusion" in err and "\n" not in err and not (tmp_path / "o").exists()
    assert main(["world", "dataset", "--count", "2", "--seconds", "2", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert "panorama clips" in capsys.readouterr().out
