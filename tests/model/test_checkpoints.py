"""Checkpoint loading in every layout the field uses, LoRA merging, `convert`, and one-line errors.

Every file is written by the test itself in the exact layout of the originals: Wan2.1's safetensors
(single and sharded), `.pth`, ComfyUI-style prefixes, diffusers' `save_pretrained` directories, and
Self-Forcing-style training dicts (`generator` / `generator_ema`, `model.` prefix).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from contextforcing.cli import convert_weights as checkpoints_cli
from contextforcing.config import ModelConfig, get_preset
from contextforcing.errors import UserError
from contextforcing.model.architecture import infer_model_config
from contextforcing.model.checkpoints import (
    check_complete,
    checkpoint_config,
    detect_format,
    load_into,
    load_model,
    load_state_dict,
    save_safetensors,
)
from contextforcing.model.convert import diffusers_config, original_to_diffusers
from contextforcing.model.lora_adapters import merge_lora, read_lora
from contextforcing.model.wan import build_model

diffusers = pytest.importorskip("diffusers")

LORA_RANK, LORA_ALPHA = 4, 8.0
LORA_TARGETS = ("self_attn.q", "self_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def _random_state(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    # Default init leaves norms at 1 and biases at 0; random values make every tensor distinguishable.
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in build_model(cfg).state_dict().items()}


@pytest.fixture
def state(tiny_model_cfg) -> dict[str, torch.Tensor]:
    return _random_state(tiny_model_cfg, seed=1)


def _assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def _inputs(cfg: ModelConfig, frames: int = 2):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, cfg.in_dim, frames, 4, 6, generator=gen)
    t = torch.tensor([600.0])
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)
    return x, t, text


def _forward(cfg: ModelConfig, state: dict) -> torch.Tensor:
    model = load_into(build_model(cfg), state)
    with torch.no_grad():
        return model(*_inputs(cfg))


# -- writers for each layout --------------------------------------------------------------------------------
def _write_single(state, tmp_path, cfg):
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    return tmp_path


def _write_sharded(state, tmp_path, cfg):
    keys = sorted(state)
    shards = {
        "diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2],
        "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2],
    }
    weight_map = {}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(tmp_path / name))
        weight_map.update({k: name for k in names})
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def _write_pth(state, tmp_path, cfg):
    torch.save(state, tmp_path / "wan.pth")
    return tmp_path / "wan.pth"


def _write_prefixed(state, tmp_path, cfg):
    path = tmp_path / "comfy.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in state.items()}, str(path))
    return path


def _diffusers_model(cfg, state):
    model = diffusers.WanTransformer3DModel(**diffusers_config(cfg))
    model.load_state_dict(original_to_diffusers(state), strict=True)
    return model


def _write_diffusers_dir(state, tmp_path, cfg):
    _diffusers_model(cfg, state).save_pretrained(tmp_path / "transformer")
    return tmp_path  # a pipeline root: the loader finds transformer/


def _write_diffusers_sharded(state, tmp_path, cfg):
    _diffusers_model(cfg, state).save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    return tmp_path


def _write_training(state, tmp_path, cfg):
    path = tmp_path / "model.pt"
    raw = {"model." + k: v + 1 for k, v in state.items()}  # a different "raw" generator
    torch.save({"generator": raw, "generator_ema": {"model." + k: v for k, v in state.items()}, "critic": {}}, path)
    return path


LAYOUTS = {
    "single": (_write_single, "original"),
    "sharded": (_write_sharded, "original"),
    "pth": (_write_pth, "original"),
    "prefixed": (_write_prefixed, "original"),
    "diffusers_dir": (_write_diffusers_dir, "diffusers"),
    "diffusers_sharded": (_write_diffusers_sharded, "diffusers"),
    "training": (_write_training, "training"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_loads_to_identical_tensors(layout, state, tiny_model_cfg, tmp_path):
    write, fmt = LAYOUTS[layout]
    path = write(state, tmp_path, tiny_model_cfg)
    assert detect_format(path) == fmt
    _assert_same(load_state_dict(path), state)
    _assert_same(load_state_dict(path, fmt=fmt), state)


def test_ema_is_default_and_no_ema_picks_the_raw_generator(state, tiny_model_cfg, tmp_path):
    path = _write_training(state, tmp_path, tiny_model_cfg)
    _assert_same(load_state_dict(path), state)
    _assert_same(load_state_dict(path, use_ema=False), {k: v + 1 for k, v in state.items()})


def test_training_dict_without_ema_uses_generator_and_ema_only_refuses_no_ema(state, tmp_path):
    torch.save({"generator": {"model." + k: v for k, v in state.items()}}, tmp_path / "ode.pt")
    _assert_same(load_state_dict(tmp_path / "ode.pt"), state)
    torch.save({"generator_ema": dict(state)}, tmp_path / "ema.pt")
    with pytest.raises(UserError, match="only EMA"):
        load_state_dict(tmp_path / "ema.pt", use_ema=False)


def test_format_override_is_checked(state, tiny_model_cfg, tmp_path):
    path = _write_training(state, tmp_path, tiny_model_cfg)
    with pytest.raises(UserError, match="training checkpoint"):
        load_state_dict(path, fmt="original")
    with pytest.raises(UserError, match="unknown checkpoint format"):
        load_state_dict(path, fmt="ckpt")


def test_loaded_model_config_comes_from_config_json_or_shapes(state, tiny_model_cfg, tmp_path):
    path = _write_diffusers_dir(state, tmp_path, tiny_model_cfg)
    cfg = checkpoint_config(path, base=tiny_model_cfg)
    assert cfg == tiny_model_cfg
    assert infer_model_config(state, num_heads=2, base=tiny_model_cfg) == tiny_model_cfg
    with pytest.raises(UserError, match="head count"):
        infer_model_config(state)  # dim 48: no preset, not a multiple of Wan's 128-wide heads
    model = load_model(path, cfg)
    _assert_same(model.state_dict(), state)


def test_real_sizes_infer_heads_from_presets():
    wan_14b = {  # shapes only, on the meta device: what a 14B checkpoint's header says
        "patch_embedding.weight": torch.empty(5120, 16, 1, 2, 2, device="meta"),
        "text_embedding.0.weight": torch.empty(5120, 4096, device="meta"),
        "time_embedding.0.weight": torch.empty(5120, 256, device="meta"),
        "head.head.weight": torch.empty(64, 5120, device="meta"),
        "blocks.0.ffn.0.weight": torch.empty(13824, 5120, device="meta"),
        "blocks.39.ffn.0.weight": torch.empty(13824, 5120, device="meta"),
    }
    cfg = infer_model_config(wan_14b)
    assert (cfg.dim, cfg.num_heads, cfg.num_layers, cfg.ffn_dim, cfg.out_dim) == (5120, 40, 40, 13824, 16)


# -- LoRA -----------------------------------------------------------------------------------------------------
def _lora_factors(cfg: ModelConfig, seed: int = 5) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path (original names) -> (A [r, in], B [out, r]) for a few Linear layers of every block."""
    gen = torch.Generator().manual_seed(seed)
    model = build_model(cfg)
    factors = {}
    for i in range(cfg.num_layers):
        for target in LORA_TARGETS:
            weight = model.get_submodule(f"blocks.{i}.{target}").weight
            a = torch.randn(LORA_RANK, weight.shape[1], generator=gen) * 0.1
            b = torch.randn(weight.shape[0], LORA_RANK, generator=gen) * 0.1
            factors[f"blocks.{i}.{target}"] = (a, b)
    return factors


def _peft_keys(factors, prefix="base_model.model.", adapter="") -> dict[str, torch.Tensor]:
    suffix = f".{adapter}" if adapter else ""
    out = {}
    for module, (a, b) in factors.items():
        out[f"{prefix}{module}.lora_A{suffix}.weight"] = a
        out[f"{prefix}{module}.lora_B{suffix}.weight"] = b
    return out


def test_merged_linear_equals_base_plus_adapter():
    linear = torch.nn.Linear(12, 10)
    a, b = torch.randn(LORA_RANK, 12), torch.randn(10, LORA_RANK)
    state = {"blocks.0.ffn.0.weight": linear.weight.detach(), "blocks.0.ffn.0.bias": linear.bias.detach()}
    adapter = {"base_model.model.blocks.0.ffn.0.lora_A.weight": a, "base_model.model.blocks.0.ffn.0.lora_B.weight": b}
    merged = merge_lora(state, adapter, alpha=LORA_ALPHA)
    x = torch.randn(5, 12)
    expected = linear(x) + (LORA_ALPHA / LORA_RANK) * (x @ a.T @ b.T)
    got = torch.nn.functional.linear(x, merged["blocks.0.ffn.0.weight"], merged["blocks.0.ffn.0.bias"])
    assert (got - expected).abs().max().item() <= 1e-5
    assert torch.equal(state["blocks.0.ffn.0.weight"], linear.weight)  # input not modified


def test_merged_model_equals_base_model_running_the_adapter(state, tiny_model_cfg, tmp_path):
    factors = _lora_factors(tiny_model_cfg)
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    save_file(_peft_keys(factors), str(adapter_dir / "adapter_model.safetensors"))
    (adapter_dir / "adapter_config.json").write_text(json.dumps({"r": LORA_RANK, "lora_alpha": LORA_ALPHA}))
    base_path = _write_single(state, tmp_path, tiny_model_cfg)
    merged = _forward(tiny_model_cfg, load_state_dict(base_path, lora=adapter_dir))

    # Reference: the unmerged base model with each adapted Linear running its LoRA branch on the side.
    model = load_into(build_model(tiny_model_cfg), state)
    scale = LORA_ALPHA / LORA_RANK
    for module, (a, b) in factors.items():
        model.get_submodule(module).register_forward_hook(
            lambda mod, inp, out, a=a, b=b: out + scale * (inp[0] @ a.T @ b.T)
        )
    with torch.no_grad():
        expected = model(*_inputs(tiny_model_cfg))
    assert (merged - expected).abs().max().item() <= 1e-5
    assert (merged - _forward(tiny_model_cfg, state)).abs().max().item() > 1e-3  # the adapter does something


def test_lora_key_styles_merge_alike(state, tiny_model_cfg, tmp_path):
    factors = _lora_factors(tiny_model_cfg)
    peft = merge_lora(state, _peft_keys(factors), alpha=LORA_ALPHA)
    # LongLive: a .pt dict with `generator_lora`, live peft names (`.default.` adapter segment), alpha given.
    torch.save({"generator_lora": _peft_keys(factors, "model.base_model.model.", "default")}, tmp_path / "lora.pt")
    _assert_same(merge_lora(state, tmp_path / "lora.pt", alpha=LORA_ALPHA), peft)
    # diffusers names (`transformer.blocks.0.attn1.to_q`); alpha from adapter_config.json.
    diffusers_names = {
        original_to_diffusers({m + ".weight": None}).popitem()[0][: -len(".weight")]: f for m, f in factors.items()
    }
    save_file(_peft_keys(diffusers_names, "transformer."), str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": LORA_RANK, "lora_alpha": LORA_ALPHA}))
    _assert_allclose(merge_lora(state, tmp_path / "adapter_model.safetensors"), peft)
    # kohya / ComfyUI: lora_down / lora_up with a per-module alpha tensor.
    kohya = {}
    for module, (a, b) in factors.items():
        kohya |= {
            f"diffusion_model.{module}.lora_down.weight": a,
            f"diffusion_model.{module}.lora_up.weight": b,
            f"diffusion_model.{module}.alpha": torch.tensor(LORA_ALPHA),
        }
    _assert_allclose(merge_lora(state, kohya), peft)


def _assert_allclose(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)


def test_lora_errors_are_one_line(state, tmp_path):
    with pytest.raises(UserError, match="does not have") as err:
        merge_lora(
            state,
            {
                "blocks.9.self_attn.q.lora_A.weight": torch.zeros(2, 48),
                "blocks.9.self_attn.q.lora_B.weight": torch.zeros(48, 2),
            },
        )
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not LoRA weights"):
        merge_lora(state, {"blocks.0.self_attn.q.weight": torch.zeros(48, 48)})
    with pytest.raises(UserError, match="no such LoRA"):
        read_lora(tmp_path / "missing.safetensors")


# -- convert ----------------------------------------------------------------------------------------------------
def _convert(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="contextforcing")
    checkpoints_cli.register(parser.add_subparsers())
    args = parser.parse_args(["convert", *map(str, argv)])
    return args.func(args)


def test_convert_to_diffusers_loads_in_diffusers_with_the_same_forward(state, tiny_model_cfg, tmp_path):
    src = _write_training(state, tmp_path, tiny_model_cfg)
    assert _convert(src, tmp_path / "out", "--to", "diffusers", "--num-heads", 2) == 0
    reference = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "out").eval()
    x, t, text = _inputs(tiny_model_cfg)
    with torch.no_grad():
        expected = reference(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    got = _forward(tiny_model_cfg, state)
    assert (got - expected).abs().max().item() <= 1e-5
    # The same file also loads back through our loader, and a bare .safetensors output has no config.
    _assert_same(load_state_dict(tmp_path / "out"), state)
    assert _convert(src, tmp_path / "single.safetensors", "--to", "diffusers") == 0
    single = load_file(str(tmp_path / "single.safetensors"))
    assert set(single) == set(reference.state_dict())
    _assert_same(load_state_dict(tmp_path / "single.safetensors"), state)


def test_convert_to_original_with_no_ema_and_lora(state, tiny_model_cfg, tmp_path):
    src = _write_training(state, tmp_path, tiny_model_cfg)
    factors = _lora_factors(tiny_model_cfg)
    save_file(_peft_keys(factors), str(tmp_path / "lora.safetensors"))
    out = tmp_path / "out.safetensors"
    assert _convert(src, out, "--no-ema", "--lora", tmp_path / "lora.safetensors", "--lora-alpha", LORA_ALPHA) == 0
    raw = {k: v + 1 for k, v in state.items()}
    _assert_same(load_file(str(out)), merge_lora(raw, _peft_keys(factors), alpha=LORA_ALPHA))
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left nothing behind


def test_convert_refuses_partial_weights(state, tmp_path):
    partial = {k: v for k, v in state.items() if k != "blocks.1.self_attn.q.weight"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(UserError, match="missing"):
        _convert(tmp_path / "partial.safetensors", tmp_path / "out.safetensors")
    save_file(state, str(tmp_path / "full.safetensors"))
    with pytest.raises(UserError, match="does not fit.*preset tiny"):  # tiny is dim 64, these weights dim 48
        _convert(tmp_path / "full.safetensors", tmp_path / "out.safetensors", "--preset", "tiny")
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_checks_out_before_reading_anything(state, tmp_path):
    save_file(state, str(tmp_path / "in.safetensors"))
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "file").write_text("")
    for out, message in (
        (tmp_path / "dir.safetensors", "exists and is not a file"),
        (tmp_path / "file" / "out.safetensors", "is not a writable directory"),
        (tmp_path / "file", "exists and is not a directory"),
    ):
        _one_line_error(_convert, tmp_path / "in.safetensors", out, match=message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.safetensors", "file", "in.safetensors"]


def _half_then_full_disk(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"\0" * 100)
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_convert_on_a_full_disk_keeps_the_previous_file(state, tmp_path, monkeypatch):
    import safetensors.torch

    save_file(state, str(tmp_path / "in.safetensors"))
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"a good earlier file")
    monkeypatch.setattr(safetensors.torch, "save_file", _half_then_full_disk)
    message = _one_line_error(_convert, tmp_path / "in.safetensors", out, match="No space left on device")
    assert message.startswith(f"cannot write {out}: ") and message.endswith("the previous out.safetensors is untouched")
    assert out.read_bytes() == b"a good earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "out.safetensors"]


def test_convert_on_a_real_full_disk_keeps_the_previous_file(state, small_disk):
    save_file(state, str(small_disk.path / "in.safetensors"))
    out = small_disk.path / "out.safetensors"
    out.write_bytes(b"a good earlier file")
    small_disk.fill(leave=8192)
    _one_line_error(_convert, small_disk.path / "in.safetensors", out, match="No space left on device")
    assert out.read_bytes() == b"a good earlier file"
    assert sorted(p.name for p in small_disk.path.iterdir()) == ["filler", "in.safetensors", "out.safetensors"]


# -- errors: one line each ----------------------------------------------------------------------------------------
def _one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_corrupted_safetensors(state, tmp_path):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(state, str(path))
    path.write_bytes(path.read_bytes()[:-100])  # truncated download
    _one_line_error(load_state_dict, path, match="corrupted")
    _one_line_error(detect_format, tmp_path, match="corrupted")
    path.write_bytes(b"\x00garbage" * 10)
    _one_line_error(load_state_dict, tmp_path, match="corrupted")


def test_corrupted_torch_file_and_missing_paths(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a zip or pickle")
    _one_line_error(load_state_dict, tmp_path / "bad.pt", match="corrupted")
    _one_line_error(load_state_dict, tmp_path / "nope.safetensors", match="no such file")
    (tmp_path / "empty").mkdir()
    _one_line_error(load_state_dict, tmp_path / "empty", match="no Wan2.1 DiT weights found")


def test_bigger_model_into_smaller_preset_is_one_line_and_leaves_model_untouched(tiny_model_cfg, tmp_path):
    # Stand-ins for 14B -> 1.3B: wider, deeper weights into the tiny config.
    big_cfg = ModelConfig(dim=64, ffn_dim=128, num_layers=3, num_heads=2, text_dim=20, text_len=7, freq_dim=32)
    save_file(_random_state(big_cfg, seed=2), str(tmp_path / "big.safetensors"))
    model = build_model(tiny_model_cfg, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = _one_line_error(load_into, model, load_state_dict(tmp_path / "big.safetensors"), match="does not fit")
    assert "checkpoint is dim 64, ffn 128, 3 layers" in message and "model is dim 48" in message
    assert "patch_embedding.weight expected [48, 16, 1, 2, 2] found [64, 16, 1, 2, 2]" in message
    assert "unexpected" in message
    _assert_same(model.state_dict(), before)


def test_14b_checkpoint_into_the_1_3b_preset_names_both():
    # Real sizes on the meta device: shapes only, nothing allocated.
    with torch.device("meta"):
        wan_14b = build_model(get_preset("wan2.1-t2v-14b").model).state_dict()
        model = build_model(get_preset("wan2.1-t2v-1.3b").model)
    message = _one_line_error(load_into, model, wan_14b, match="does not fit")
    assert "checkpoint is dim 5120, ffn 13824, 40 layers (preset wan2.1-t2v-14b)" in message
    assert "model is dim 1536, ffn 8960, 30 layers (preset wan2.1-t2v-1.3b)" in message


def test_missing_and_unexpected_keys_name_the_offenders(state, tiny_model_cfg):
    model = build_model(tiny_model_cfg)
    broken = {k: v for k, v in state.items() if k != "head.head.bias"} | {"blocks.0.extra.weight": torch.zeros(1)}
    message = _one_line_error(load_into, model, broken, match="missing")
    assert "head.head.bias" in message and "blocks.0.extra.weight" in message
    check_complete(state, tiny_model_cfg)  # the intact state passes


def test_save_is_atomic_and_round_trips(state, tiny_model_cfg, tmp_path):
    out = save_safetensors(state, tmp_path / "orig", "original", config=tiny_model_cfg)
    assert out.name == "diffusion_pytorch_model.safetensors"
    assert json.loads((tmp_path / "orig" / "config.json").read_text())["_class_name"] == "WanModel"
    assert checkpoint_config(tmp_path / "orig") == tiny_model_cfg
    _assert_same(load_state_dict(tmp_path / "orig"), state)
    with pytest.raises(UserError, match="unknown output layout"):
        save_safetensors(state, tmp_path / "x.safetensors", "comfy")


# -- head counts: never guessed ------------------------------------------------------------------------------
# Widths of presets with another head count: a guess from the preset would load 2 heads as 4 and 4 as 6.
SHAPES = ("dim", "ffn_dim", "num_layers", "text_dim", "text_len", "in_dim", "out_dim", "patch_size", "freq_dim")


def _preset_shapes(name: str, heads: int) -> ModelConfig:
    """A model with the preset's tensor shapes and `heads` heads (other fields at their defaults)."""
    preset = get_preset(name).model
    return ModelConfig(**{f: getattr(preset, f) for f in SHAPES}, num_heads=heads)


HEAD_CASES = [("tiny", _preset_shapes("tiny", 2)), ("world", _preset_shapes("world", 4))]


def _head_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Random weights whose attention is far from uniform (unit q/k norms), so the head split matters."""
    state = _random_state(cfg, seed=4)
    return {k: torch.full_like(v, 2.0) if ".norm_q." in k or ".norm_k." in k else v for k, v in state.items()}


def _head_inputs(cfg: ModelConfig):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, cfg.in_dim, 2, 4, 4, generator=gen)
    return x, torch.tensor([700.0]), torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)


def _run(model, cfg: ModelConfig) -> torch.Tensor:
    with torch.no_grad():
        return model(*_head_inputs(cfg))


@pytest.mark.parametrize("preset, cfg", HEAD_CASES, ids=[c[0] for c in HEAD_CASES])
def test_a_checkpoint_of_a_preset_width_with_other_heads_is_never_loaded_with_the_presets(preset, cfg, tmp_path):
    model = load_into(build_model(cfg), _head_state(cfg))
    save_file(dict(model.state_dict()), str(tmp_path / "w.safetensors"))
    assert get_preset(preset).model.dim == cfg.dim and get_preset(preset).model.num_heads != cfg.num_heads
    reference = _run(model, cfg)
    guessed = _run(
        load_into(
            build_model(dataclasses.replace(cfg, num_heads=get_preset(preset).model.num_heads)), model.state_dict()
        ),
        cfg,
    )
    assert (guessed - reference).abs().max() > 1e-2  # what a guess would compute (atol 1e-6 below)
    message = _one_line_error(load_model, tmp_path / "w.safetensors", match="pass --num-heads")
    assert f"{cfg.dim}-wide" in message
    # Told the count: exactly the model that was saved.
    assert torch.allclose(
        _run(load_model(tmp_path / "w.safetensors", num_heads=cfg.num_heads), cfg), reference, atol=1e-6
    )


@pytest.mark.parametrize("preset, cfg", HEAD_CASES, ids=[c[0] for c in HEAD_CASES])
def test_convert_writes_a_head_count_only_when_told(preset, cfg, tmp_path, capsys):
    model = load_into(build_model(cfg), _head_state(cfg))
    save_file(dict(model.state_dict()), str(tmp_path / "w.safetensors"))
    run = checkpoints_cli.run_convert
    args = _convert_args(tmp_path / "w.safetensors", tmp_path / "out")
    _one_line_error(run, args, match="pass --num-heads")
    assert not (tmp_path / "out").exists()  # nothing written, no guessed config.json
    assert run(_convert_args(tmp_path / "w.safetensors", tmp_path / "out", num_heads=cfg.num_heads)) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_heads"] == cfg.num_heads
    # The written config.json is then the evidence: loads with the saved heads, computes the saved model.
    assert torch.allclose(_run(load_model(tmp_path / "out"), cfg), _run(model, cfg), atol=1e-6)
    # A preset the user names is a statement: its heads are written (the user's choice, not a guess) ...
    assert run(_convert_args(tmp_path / "w.safetensors", tmp_path / "named", preset=preset)) == 0
    assert (
        json.loads((tmp_path / "named" / "config.json").read_text())["num_heads"] == get_preset(preset).model.num_heads
    )
    # ... but not over a config.json that says otherwise, and loading with that preset refuses too.
    _one_line_error(run, _convert_args(tmp_path / "out", tmp_path / "again", preset=preset), match="config.json gives")
    _one_line_error(load_model, tmp_path / "out", get_preset(preset).model, match="config.json gives")
    capsys.readouterr()


def _convert_args(src, out, preset=None, num_heads=None) -> argparse.Namespace:
    return argparse.Namespace(
        input=src,
        output=out,
        to="original",
        checkpoint_format=None,
        use_ema=None,
        lora=None,
        lora_alpha=None,
        preset=preset,
        num_heads=num_heads,
        dtype="keep",
        allow_pickle=False,
    )
