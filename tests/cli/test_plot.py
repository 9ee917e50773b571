"""`contextforcing plot VIDEO.json`: the memory over time from a saved sidecar, as one PNG written atomically;
what it draws is the trace's frames, tier by tier, and its promotions; surprisal is "not applicable" for a
memory that takes no surprisal decisions; bad input is one line (exit 2) and writes nothing."""

import numpy as np
import pytest
from PIL import Image

import contextforcing as cf
from contextforcing.cli import main
from contextforcing.cli.plot import memory_points
from contextforcing.io.sidecar import read_sidecar

PROMPT = "warm room, hold, lights on, black ball"
PAN = "warm room, pan left, lights on, black ball"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pipe = cf.Pipeline.from_pretrained(device="cpu")
    folder = tmp_path_factory.mktemp("plot")
    paths = {}
    for name, memory in (("slow_fast", {"tau": 0.999}), ("rolling", "rolling")):
        video = pipe(PROMPT, seconds=9, seed=2, memory=memory, switches={3.0: PAN})
        paths[name] = pipe.save(video, folder / f"{name}.mp4").with_suffix(".json")
    return paths


def test_the_points_are_the_traces_frames_and_promotions(saved):
    video = read_sidecar(saved["slow_fast"])
    points = memory_points(video)
    promotions = sum(len(c.update.promoted) for c in video.chunks)
    assert promotions > 0 and len(points.promoted) == promotions
    for tier in ("sink", "slow", "fast"):
        assert len(points.tiers[tier]) == sum(len(c.plan.tier(tier)) for c in video.chunks)
    chunk = video.chunks[5]
    x = chunk.plan.start / 4  # 4 latent frames per second
    assert sorted(y for px, y in points.tiers["slow"] if px == x) == sorted(f / 4 for f in chunk.plan.tier("slow"))


def test_plot_writes_a_png_beside_the_sidecar(saved, capsys):
    for name, path in saved.items():
        assert main(["plot", str(path)]) == 0
        png = path.with_suffix(".png")
        image = np.asarray(Image.open(png).convert("RGB"))
        assert image.shape[0] > 500 and image.shape[1] > 800 and image.std() > 10  # drawn, not blank
        assert f"wrote {png}" in capsys.readouterr().out
    assert not list(path.parent.glob(".*part*")), "no temporary file left"


def test_the_mp4_names_its_sidecar_and_out_chooses_the_file(saved, tmp_path):
    out = tmp_path / "memory.png"
    assert main(["plot", str(saved["rolling"].with_suffix(".mp4")), "--out", str(out)]) == 0
    assert Image.open(out).format == "PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.json"], "sidecar {tmp}/missing.json does not exist"),
        (["bad.json"], "not a JSON sidecar"),
        (["v.json", "--out", "v.jpg"], "must end in .png"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "v.json").write_text("{}")
    argv = [str(tmp_path / a) if a.endswith((".json", ".jpg")) else a for a in argv]
    assert main(["plot", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(tmp=tmp_path) in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.jpg"))
