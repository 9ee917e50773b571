"""The shipped default model (contextforcing/assets/world_student.*): it loads with the panorama codec and prompt
grammar, streams a short script of the panorama world on CPU through the default pipeline, and its video follows
the script -- the lights and the wall -- which a randomly initialised model of the same shape does not."""

import json

import pytest
import torch

from contextforcing.cli import main
from contextforcing.codecs.world import PANORAMA_PATH
from contextforcing.data.world.panorama import PanoramaSpec, ScriptBuilder, parse_panorama_prompt, simulate
from contextforcing.eval.panorama_metrics import panorama_scores
from contextforcing.eval.panorama_runs import generate
from contextforcing.parts import EMBEDDED_CONFIG, EMBEDDED_WEIGHTS, load_embedded
from contextforcing.pipeline import Pipeline

SEED, SECONDS = 3, 12.0
# Lighting obeyed: the mean of the share of lights-off latent frames shown dark and of lights-on ones shown lit
# (a still picture scores 0.50); camera pans obeyed: the share of the script's pan latent frames in which the
# picture moves the scripted way (a still picture scores 0). On this script the shipped student measured lighting
# 1.00 and pans 1.00; random-init models of the same shape through the same codec (seeds 0, 1, 2) measured
# lighting 0.50 and pans 0.06, 0.22, 0.17. (The palette share does not separate them on this script: shipped 0.65,
# random 0.71-0.78, so it is not a threshold here.)
MIN_LIGHTING, MIN_PANS = 0.8, 0.6


def script() -> PanoramaSpec:
    b = ScriptBuilder("forest", None, black=True, source="embedded-model test")
    b.hold(3).pan("right", 4).hold(2).lights_off(3).hold(2).pan("left", 2)
    n = PanoramaSpec(b.build(len(b)), SEED, SECONDS).n_chunks
    return PanoramaSpec(b.build(n), SEED, SECONDS)


def _scores(pipeline):
    spec = script()
    return panorama_scores(generate(pipeline, spec).frames, simulate(spec))


def test_shipped_files_exist_and_fit_the_budget():
    assert EMBEDDED_WEIGHTS.is_file() and EMBEDDED_CONFIG.is_file(), "run `make toy-model` to build the model"
    assert EMBEDDED_WEIGHTS.stat().st_size <= 20_000_000
    config = json.loads(EMBEDDED_CONFIG.read_text())
    assert config["preset"] == "world" and config["memory"]["policy"] == "slow_fast"
    assert config["codec"] == PANORAMA_PATH.name and config["prompt_grammar"] == "panorama"
    parse_panorama_prompt(config["example_prompt"])  # raises if the model could not read its own example


def test_embedded_model_follows_the_lights_and_the_camera():
    torch.manual_seed(0)
    pipeline = Pipeline.from_pretrained(device="cpu")
    assert pipeline.weights.startswith("embedded:") and pipeline.preset_name == "world"
    scores = _scores(pipeline)
    assert scores.lighting.lighting >= MIN_LIGHTING, scores.lighting
    assert scores.camera.pans >= MIN_PANS, scores.camera


def test_random_weights_fail_the_same_thresholds():
    """The thresholds discriminate: a model of the same shape with random weights passes neither."""
    pipeline = Pipeline.from_pretrained(device="cpu")
    random = Pipeline.random("world", seed=0, device="cpu")
    random.codec, random.preset_name, random.memory = pipeline.codec, "world", pipeline.memory
    scores = _scores(random)
    assert scores.lighting.lighting < MIN_LIGHTING and scores.camera.pans < MIN_PANS


def test_generate_without_model_flags_uses_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "d.mp4"
    prompt = json.loads(EMBEDDED_CONFIG.read_text())["example_prompt"]
    code = main(
        [
            "generate",
            "--prompt",
            prompt,
            "--seconds",
            "1",
            "--seed",
            "0",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["weights"].startswith("embedded:") and sidecar["preset"] == "world"
    shipped = json.loads(EMBEDDED_CONFIG.read_text())["memory"]["options"]
    assert {k: sidecar["config"]["memory"][k] for k in shipped} == shipped


def test_the_embedded_model_refuses_prompts_of_another_world(capsys):
    code = main(
        [
            "generate",
            "--prompt",
            "striped cool room, curtain occlusions",
            "--seconds",
            "1",
            "--device",
            "cpu",
            "--out",
            "never.mp4",
            "--quiet",
        ]
    )
    assert code == 2 and "bad panorama prompt" in capsys.readouterr().err


def test_a_corrupt_weight_file_is_one_line_error(tmp_path):
    bad = tmp_path / "world_student.safetensors"
    bad.write_bytes(EMBEDDED_WEIGHTS.read_bytes()[:1000])
    (tmp_path / "world_student.json").write_text(EMBEDDED_CONFIG.read_text())
    from contextforcing.errors import UserError

    with pytest.raises(UserError):
        load_embedded(device="cpu", path=bad)
