"""`generate` / `bench` from real-layout weights: a tiny Wan2.1 directory (UMT5 + tokenizer, VAE, DiT) built
here in the original file layouts, a tiny custom preset file, prompt scripts and init images/videos."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contextforcing.cli import main
from contextforcing.config import ModelConfig, VideoConfig
from contextforcing.errors import UserError
from contextforcing.io.video import VideoWriter, read_video
from contextforcing.sampling.switches import place_prompts, read_prompt_script, script_prompts

ROOT = Path(__file__).resolve().parents[1]
# The tiny UMT5/VAE recipes live in tests/codecs/conftest.py; that folder cannot be a package (it would
# shadow the stdlib `codecs`), so load it by path rather than copy it.
_spec = importlib.util.spec_from_file_location("codecs_conftest", ROOT / "codecs" / "conftest.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

# Widths must agree with the tiny UMT5 (d_model 16) and VAE (16 latent channels, strides 4 and 8).
TINY_MODEL = dict(
    dim=32, ffn_dim=64, num_layers=2, num_heads=4, text_dim=tiny.TINY_UMT5["d_model"], text_len=16, freq_dim=32
)
TINY_VIDEO = dict(latent_height=4, latent_width=4)  # 32 x 32 pixels


def _tokenizer():
    from transformers import T5Tokenizer

    chars = sorted(set("".join(tiny.WORDS)))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -2.0) for w in tiny.WORDS]
    vocab += [("▁", -3.0)] + [(c, -5.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _dit_state(seed: int) -> dict:
    from contextforcing.model.wan import build_model

    return build_model(ModelConfig(**TINY_MODEL), seed=seed).state_dict()


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A tiny Wan2.1 directory in the original layout, a separate DiT checkpoint and a preset file."""
    from transformers import UMT5Config, UMT5EncoderModel

    from contextforcing.codecs.loading import WAN_T5_CHECKPOINT, WAN_T5_TOKENIZER, WAN_VAE_CHECKPOINT
    from contextforcing.codecs.umt5 import transformers_to_wan_t5
    from contextforcing.codecs.wan_vae import vae_to_original
    from contextforcing.model.checkpoints import save_safetensors

    root = tmp_path_factory.mktemp("wan")
    wan_dir = root / "Wan2.1-T2V-tiny"
    wan_dir.mkdir()
    tokenizer = _tokenizer()
    umt5 = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **tiny.TINY_UMT5)).eval()
    tiny.randomize(umt5, seed=1)
    torch.save(transformers_to_wan_t5(umt5.state_dict()), wan_dir / WAN_T5_CHECKPOINT)
    tokenizer.save_pretrained(wan_dir / WAN_T5_TOKENIZER)
    torch.save(vae_to_original(tiny.build_tiny_vae()), wan_dir / WAN_VAE_CHECKPOINT)
    save_safetensors(_dit_state(3), wan_dir / "diffusion_pytorch_model.safetensors")
    checkpoint = save_safetensors(_dit_state(4), root / "distilled.safetensors")
    preset = root / "tiny-wan.json"
    preset.write_text(json.dumps({"model": TINY_MODEL, "video": TINY_VIDEO}))
    image = root / "start.png"
    import imageio.v3 as iio

    iio.imwrite(image, np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    return {"dir": wan_dir, "checkpoint": checkpoint, "preset": preset, "image": image}


def _script(path: Path, *lines) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_generate_from_wan_dir_with_prompt_script_and_init_image(wan, tmp_path):
    script = _script(
        tmp_path / "script.jsonl",
        {"at": 0, "prompt": "a red ball"},
        "",
        {"at": 1.4, "prompt": "the cat sits on mat"},
        {"at": 2.2, "prompt": "a red ball"},
    )
    out = tmp_path / "v.mp4"
    code = main(
        [
            "generate",
            "--wan-dir",
            str(wan["dir"]),
            "--checkpoint",
            str(wan["checkpoint"]),
            "--preset",
            str(wan["preset"]),
            "--prompts",
            str(script),
            "--init-image",
            str(wan["image"]),
            "--seconds",
            "3",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    frames, fps = read_video(out)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    # 3 s = 12 latent frames in 4 chunks of 0.75 s. The prefilled image is not re-emitted, but it primes the
    # VAE decoder, so every generated latent frame (the first included) decodes to 4 pixel frames.
    assert sidecar["latent_frames"] == 12 and sidecar["pixel_frames"] == len(frames) == 48
    assert frames.shape[1:] == (32, 32, 3) and fps == 16
    assert sidecar["init"]["kind"] == "image" and sidecar["init"]["latent_frames"] == 1
    assert sidecar["init"]["emitted"] is False and sidecar["events"][0] == {"event": "prefill", "frames": 1}
    placed = [(p["line"], p["at"], p["chunk"], p["frame"], p["seconds"], p["pixel_frame"]) for p in sidecar["prompts"]]
    assert placed == [(1, 0.0, 0, 0, 0.0, 0), (3, 1.4, 2, 6, 1.5, 24), (4, 2.2, 3, 9, 2.25, 36)]
    assert [s["chunk"] for s in sidecar["switches"]] == [2, 3]
    assert [e["frame"] for e in sidecar["events"] if e["event"] == "switch"] == [1 + 6, 1 + 9]  # after the prefill
    assert sidecar["weights"] == str(wan["checkpoint"]) and not sidecar["interrupted"]


def test_base_dit_from_wan_dir_and_bench_decode_with_the_wan_vae(wan, tmp_path, capsys):
    out = tmp_path / "base.mp4"
    code = main(
        [
            "generate",
            "--wan-dir",
            str(wan["dir"]),
            "--preset",
            str(wan["preset"]),
            "--prompt",
            "a red ball",
            "--seconds",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    assert len(read_video(out)[0]) == 1 + (6 - 1) * 4  # no init: the first latent frame gives one pixel frame
    assert json.loads(out.with_suffix(".json").read_text())["weights"] == str(wan["dir"])
    capsys.readouterr()
    assert (
        main(["bench", "--wan-dir", str(wan["dir"]), "--preset", str(wan["preset"]), "--seconds", "1.5", "--decode"])
        == 0
    )
    table = capsys.readouterr().out
    assert "included: transformer denoising + commit passes + streaming Wan VAE decode" in table
    assert "of which decode" in table


@pytest.mark.parametrize("decode", [False, True])
def test_bench_decode_random_init_says_what_is_timed(capsys, decode):
    assert main(["bench", "--random-init", "--seconds", "1.5", "--json", *(["--decode"] if decode else [])]) == 0
    result = json.loads(capsys.readouterr().out)
    if decode:
        assert result["median_decode_s"] > 0 and "streaming preview decoder" in result["included"]
        assert "no text encoding" in result["included"] and "no file output" in result["included"]
    else:
        assert result["median_decode_s"] is None and "no decode" in result["included"]


def test_bench_without_model_flags_runs_the_embedded_model_as_generate_does(capsys):
    from contextforcing.parts import embedded_config

    assert main(["bench", "--seconds", "1.5", "--json", "--decode"]) == 0
    result = json.loads(capsys.readouterr().out)
    trained = embedded_config()["memory"]
    assert result["preset"] == "world" and result["weights"].startswith("embedded:")
    assert result["memory"] == {**result["memory"], **trained["options"], "policy": trained["policy"]}
    assert "world codec" in result["included"]


def test_random_init_continues_an_init_video(tmp_path):
    clip = tmp_path / "in.mp4"
    with VideoWriter(clip, fps=16) as writer:  # 10 frames: the last 9 = 1 + 2 * 4 are used (3 latent frames)
        writer.write(np.random.default_rng(1).integers(0, 255, (10, 48, 80, 3), dtype=np.uint8))
    out = tmp_path / "v.mp4"
    code = main(
        [
            "generate",
            "--random-init",
            "--prompt",
            "a red ball",
            "--init-video",
            str(clip),
            "--seconds",
            "1.5",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["init"]["pixel_frames"] == 9 and sidecar["init"]["latent_frames"] == 3
    assert sidecar["init"]["source_size"] == [48, 80]
    assert len(read_video(out)[0]) == 6 * 4 and sidecar["memory_trace"][0]["positions"]  # primed decoder


def test_placement_rounds_to_the_nearest_chunk_boundary():
    video = VideoConfig()  # 4 latent frames / s, chunks of 3: boundaries every 0.75 s
    entries = [(1, 0.0, "a"), (2, 0.375, "b"), (3, 1.2, "c"), (4, 59.0, "d")]  # half a chunk rounds up
    placed = place_prompts(script_prompts(None, entries, "s.jsonl"), video, 80, "s.jsonl")
    assert [(p.line, p.chunk, p.to_json(video)["frame"], p.to_json(video)["seconds"]) for p in placed] == [
        (1, 0, 0, 0.0),
        (2, 1, 3, 0.75),
        (3, 2, 6, 1.5),
        (4, 79, 237, 59.25),
    ]


def test_start_prompt_from_flag_when_the_script_starts_later():
    video = VideoConfig()
    placed = place_prompts(script_prompts("start", [(1, 1.5, "later")], "s.jsonl"), video, 8, "s.jsonl")
    assert [(p.text, p.line, p.chunk) for p in placed] == [("start", None, 0), ("later", 1, 2)]


@pytest.mark.parametrize(
    "lines, extra, message",
    [
        (
            [{"at": 0, "prompt": "a"}, {"at": 2, "prompt": "b"}, {"at": 1, "prompt": "c"}],
            [],
            "line 3: at 1 s is not after line 2",
        ),
        ([{"at": 0, "prompt": "a"}, {"at": 9, "prompt": "b"}], [], "line 2: at 9 s is past the end"),
        ([{"at": 0, "prompt": "a"}, {"at": 2.9, "prompt": "b"}], [], "line 2: at 2.9 s is past the end"),
        ([{"at": 0, "prompt": "a"}, {"at": 1, "prompt": "  "}], [], "line 2: empty prompt"),
        ([{"at": 0, "prompt": "a"}, '{"at": 1, "prompt": "b"'], [], "line 2: not valid JSON"),
        ([{"at": 0, "prompt": "a"}, {"prompt": "b"}], [], "line 2: missing key 'at'"),
        ([{"at": 0}], [], "line 1: missing key 'prompt'"),
        ([{"at": 0, "prompt": "a", "when": 3}], [], "line 1: unknown key 'when'"),
        ([{"at": "soon", "prompt": "a"}], [], "line 1: 'at' must be a number"),
        ([{"at": 1, "prompt": "a"}], [], "line 1: the first prompt must be at 0 s"),
        ([{"at": 0, "prompt": "a"}], ["--prompt", "p"], "line 1: sets the starting prompt at 0 s"),
        (
            [{"at": 0, "prompt": "a"}, {"at": 0.9, "prompt": "b"}, {"at": 1.0, "prompt": "c"}],
            [],
            "line 3: at 1 s lands on chunk 1",
        ),
        ([{"at": 0, "prompt": "a"}], ["--switch", "1:b"], "either --prompts or --switch"),
        (["", "  "], [], "has no prompts"),
    ],
)
def test_bad_prompt_scripts_one_line_exit_2_no_output(tmp_path, capsys, lines, extra, message):
    script = _script(tmp_path / "script.jsonl", *lines)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(
        [
            "generate",
            "--random-init",
            "--prompts",
            str(script),
            "--seconds",
            "3",
            "--out",
            str(out_dir / "v.mp4"),
            "--quiet",
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert message in err and ("line" not in message or f"{script} line" in err)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--random-init", "--wan-dir", "x"], "--random-init cannot be combined"),
        (["--checkpoint", "x.safetensors"], "--checkpoint needs --wan-dir"),
        (["--preset", "tiny"], "the embedded model is the 'world' preset"),
        (["--random-init", "--init-image", "missing.png"], "cannot read image missing.png"),
        (["--random-init", "--init-image", "a.png", "--init-video", "b.mp4"], "either --init-video or --init-image"),
        (["--random-init", "--preset", "nope.json"], "preset file nope.json does not exist"),
    ],
)
def test_bad_weight_and_init_flags(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code = main(["generate", "--prompt", "p", "--seconds", "1", "--out", "v.mp4", "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_wan_dir_that_does_not_fit_the_preset(wan, tmp_path, capsys):
    code = main(
        [
            "generate",
            "--wan-dir",
            str(wan["dir"]),
            "--prompt",
            "p",
            "--seconds",
            "1",
            "--out",
            str(tmp_path / "v.mp4"),
            "--quiet",
        ]
    )  # default preset: the real 1.3B
    err = capsys.readouterr().err.strip()
    assert code == 2 and "text encoder gives 16-wide embeddings, the preset's model takes 4096" in err


def test_read_prompt_script_skips_blank_lines_and_strips(tmp_path):
    script = _script(tmp_path / "s.jsonl", {"at": 0, "prompt": " a "}, "", {"at": 1, "prompt": "b"})
    assert read_prompt_script(str(script)) == [(1, 0.0, "a"), (3, 1.0, "b")]
    with pytest.raises(UserError, match="does not exist"):
        read_prompt_script(str(tmp_path / "none.jsonl"))


def test_longlive_base_and_lora_directory_with_alpha_and_heads(wan, tmp_path, capsys):
    """LongLive's files as it saves them: the base a training dict, the LoRA a checkpoint_model_* directory of
    `generator_lora` (peft names, no alpha). The LoRA lands on `generator`, the scale is alpha / rank, and the
    console and sidecar say so; an explicit --ema wins."""
    base = tmp_path / "longlive_base.pt"
    torch.save(
        {
            "generator": {"model." + k: v for k, v in _dit_state(5).items()},
            "generator_ema": {"model." + k: v for k, v in _dit_state(6).items()},
        },
        base,
    )
    rank, gen = 4, torch.Generator().manual_seed(0)
    lora = {}
    for module in ("blocks.0.self_attn.q", "blocks.1.cross_attn.o"):
        lora[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, TINY_MODEL["dim"], generator=gen)
        lora[f"base_model.model.{module}.lora_B.weight"] = torch.randn(TINY_MODEL["dim"], rank, generator=gen)
    run = tmp_path / "checkpoint_model_000100"
    run.mkdir()
    torch.save({"generator_lora": lora, "critic_lora": lora, "step": 100}, run / "model.pt")
    common = [
        "--wan-dir",
        str(wan["dir"]),
        "--checkpoint",
        str(base),
        "--preset",
        str(wan["preset"]),
        "--lora",
        str(run),
        "--prompt",
        "a red ball",
        "--seconds",
        "0.75",
        "--quiet",
    ]
    out = tmp_path / "v.mp4"
    assert main(["generate", *common, "--lora-alpha", "2", "--num-heads", "2", "--out", str(out)]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("weights:")]
    assert len(said) == 1 and "['generator': the LoRA was trained on it" in said[0] and "scale 0.5" in said[0]
    sidecar = json.loads(out.with_suffix(".json").read_text())
    choice = sidecar["weights_choice"]
    assert (choice["entry"], choice["lora_trained_on"], choice["lora_ranks"]) == ("generator", "generator", [rank])
    assert choice["lora_scales"] == [2 / rank] and choice["lora"] == str(run)
    assert sidecar["config"]["model"]["num_heads"] == 2
    assert main(["generate", *common, "--ema", "--out", str(tmp_path / "ema.mp4")]) == 0
    choice = json.loads((tmp_path / "ema.json").read_text())["weights_choice"]
    assert (choice["entry"], choice["entry_reason"], choice["lora_scales"]) == (
        "generator_ema",
        "explicit --ema",
        [1.0],
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--random-init", "--lora", "x.pt"], "--lora: only for --wan-dir/--checkpoint weights"),
        (["--random-init", "--num-heads", "2"], "--num-heads: only for --wan-dir/--checkpoint weights"),
        (["--random-init", "--lora-alpha", "8"], "--lora-alpha needs --lora"),
        (["--random-init", "--ema", "--no-ema"], "not allowed with argument"),
    ],
)
@pytest.mark.parametrize("command", ["generate", "bench"])
def test_weight_flags_without_weights_are_refused(tmp_path, capsys, monkeypatch, command, args, message):
    monkeypatch.chdir(tmp_path)
    extra = ["--prompt", "p", "--out", "v.mp4", "--quiet"] if command == "generate" else []
    try:
        code = main([command, "--seconds", "1", *extra, *args])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_python_front_door_loads_a_wan_directory_and_checkpoint(wan):
    import contextforcing as cf
    from contextforcing.io.weights import read_safetensors

    pipe = cf.Pipeline.from_pretrained(
        wan["dir"], checkpoint=str(wan["checkpoint"]), preset=str(wan["preset"]), dtype="fp32"
    )
    stored = read_safetensors(wan["checkpoint"])
    assert all(torch.equal(p, stored[name]) for name, p in pipe.model.state_dict().items())
    assert pipe.memory == cf.Memory.slow_fast() and pipe.weights == str(wan["checkpoint"])
    video = pipe("a red ball", seconds=1.5, seed=0, switches={0.75: "the cat sits on mat"})
    assert video.frames.shape == (1 + 5 * 4, 32, 32, 3) and [c.prompt for c in video.chunks] == [
        "a red ball",
        "the cat sits on mat",
    ]
    with pytest.raises(cf.UserError, match="checkpoint needs source, the Wan2.1 directory"):
        cf.Pipeline.from_pretrained(checkpoint=str(wan["checkpoint"]))
