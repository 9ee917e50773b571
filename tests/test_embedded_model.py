"""The shipped default model (contextforcing/assets/world_student.*): it loads, generates 10 s of the
synthetic world on CPU through the default pipeline, and its frames pass a fidelity threshold on the world
metrics -- which a missing, truncated or randomly initialised weight file does not."""

import json

import numpy as np
import pytest
import torch

from contextforcing.cli import main
from contextforcing.data.world.track import WorldSpec, simulate
from contextforcing.eval.evaluate import load_frames
from contextforcing.eval.world_metrics import world_metrics
from contextforcing.generation import GenerationRequest, run_generation
from contextforcing.loading import EMBEDDED_CONFIG, EMBEDDED_WEIGHTS, load_embedded
from contextforcing.pipeline import Pipeline

PROMPT, SEED, SECONDS = "plain warm room, blackout occlusions, circle sprite", 3, 10.0
# Palette fidelity: the fraction of pixels within RGB distance 40 of a colour of the prompt's palette (the
# ground truth scores 0.993 through mp4); shape validity: detected objects that match a world shape. On this
# world the shipped student measured palette 0.985 and shape validity 0.95; a random-init model of the same
# shape through the same codec measured palette 0.178 and detects no objects.
MIN_PALETTE, MIN_SHAPES = 0.80, 0.70


def _generate(pipeline, out) -> np.ndarray:
    req = GenerationRequest(prompt=PROMPT, seconds=SECONDS, out=str(out), preset=pipeline.preset_name, seed=SEED,
                            device="cpu")
    run_generation(req, pipeline, progress=False)
    return load_frames(str(out))[0]


def test_shipped_files_exist_and_fit_the_budget():
    assert EMBEDDED_WEIGHTS.is_file() and EMBEDDED_CONFIG.is_file(), "run `make toy-model` to build the model"
    assert EMBEDDED_WEIGHTS.stat().st_size <= 20_000_000
    config = json.loads(EMBEDDED_CONFIG.read_text())
    assert config["preset"] == "world" and config["memory"]["policy"] == "slow_fast"


def test_embedded_model_generates_the_world_with_fidelity(tmp_path):
    torch.manual_seed(0)
    pipeline = Pipeline.from_pretrained(device="cpu")
    assert pipeline.weights.startswith("embedded:") and pipeline.preset_name == "world"
    frames = _generate(pipeline, tmp_path / "v.mp4")
    track = simulate(WorldSpec(PROMPT, SEED, SECONDS))
    assert frames.shape == (track.n_frames, 64, 64, 3)
    fidelity = world_metrics(frames, track)["fidelity"]
    assert fidelity["palette"] >= MIN_PALETTE, fidelity["palette"]
    assert fidelity["shape_validity"] is not None and fidelity["shape_validity"] >= MIN_SHAPES, fidelity


def test_random_weights_fail_the_same_threshold(tmp_path):
    """The threshold discriminates: a model of the same shape with random weights does not pass it."""
    pipeline = Pipeline.from_pretrained(device="cpu")
    random = Pipeline.random("world", seed=0, device="cpu")
    random.codec, random.preset_name = pipeline.codec, "world"
    frames = _generate(random, tmp_path / "r.mp4")
    fidelity = world_metrics(frames, simulate(WorldSpec(PROMPT, SEED, SECONDS)))["fidelity"]
    assert fidelity["palette"] < MIN_PALETTE


def test_generate_without_model_flags_uses_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "d.mp4"
    code = main(["generate", "--prompt", PROMPT, "--seconds", "1", "--seed", "0", "--device", "cpu",
                 "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["weights"].startswith("embedded:") and sidecar["preset"] == "world"
    shipped = json.loads(EMBEDDED_CONFIG.read_text())["memory"]["options"]
    assert {k: sidecar["config"]["memory"][k] for k in shipped} == shipped


def test_a_corrupt_weight_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "world_student.safetensors"
    bad.write_bytes(EMBEDDED_WEIGHTS.read_bytes()[:1000])
    (tmp_path / "world_student.json").write_text(EMBEDDED_CONFIG.read_text())
    from contextforcing.errors import UserError

    with pytest.raises(UserError):
        load_embedded(device="cpu", path=bad)
