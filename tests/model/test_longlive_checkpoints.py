"""LongLive checkpoints as LongLive runs them: which generator weights a LoRA lands on, the LoRA scale, a
training checkpoint directory as `--lora`, and the head count of widths no config names.

The files are written here in LongLive's save format: the base is a training dict (`generator`,
`generator_ema`, `critic`; `model.`-prefixed names), the LoRA a `torch.save`d dict `{"generator_lora",
"critic_lora", "step"}` whose tensors are peft's `get_peft_model_state_dict` names
(`base_model.model.<module>.lora_A.weight`), saved as `checkpoint_model_{step:06d}/model.pt` during training.
LongLive puts LoRA on every Linear of the attention blocks and keeps alpha in its yaml, not in the file.
The expected weights are computed from plain statements of the rules below, not through the loader.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import save_file

from contextforcing.cli import main
from contextforcing.config import PRESETS, ModelConfig
from contextforcing.errors import UserError
from contextforcing.model.architecture import infer_model_config
from contextforcing.model.checkpoints import load_model, load_state_dict, read_checkpoint
from contextforcing.model.wan import build_model

EMA, RAW = "generator_ema", "generator"


# -- the rules, stated independently -----------------------------------------------------------------------
def expected_entry(stored: set[str], lora: str | None, use_ema: bool | None) -> str | None:
    """LongLive infers with `generator` (use_ema: false) and trains its LoRA on it; any other load prefers
    EMA when stored. An explicit flag always wins; None: refused, the asked-for weights are not stored."""
    if use_ema is not None:
        wanted = EMA if use_ema else RAW
        return wanted if wanted in stored else None
    if lora == "longlive" and RAW in stored:
        return RAW
    return EMA if EMA in stored else RAW


def expected_scale(rank: int, stored_alpha: float | None, given_alpha: float | None) -> float:
    """alpha / rank; alpha: the one given > the one the adapter stores > rank (LongLive stores none)."""
    if given_alpha is not None:
        return given_alpha / rank
    return (stored_alpha if stored_alpha is not None else rank) / rank


# -- LongLive-format files ------------------------------------------------------------------------------------
def _random_state(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in build_model(cfg).state_dict().items()}


def _block_linears(cfg: ModelConfig) -> list[str]:
    """Every Linear inside the attention blocks (LongLive's LoRA targets)."""
    return [
        name
        for name, m in build_model(cfg).named_modules()
        if name.startswith("blocks.") and isinstance(m, torch.nn.Linear)
    ]


def _factors(cfg: ModelConfig, rank: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    state = build_model(cfg).state_dict()
    out = {}
    for module in _block_linears(cfg):
        out_dim, in_dim = state[module + ".weight"].shape
        out[module] = (torch.randn(rank, in_dim, generator=gen) * 0.1, torch.randn(out_dim, rank, generator=gen) * 0.1)
    return out


def _peft_names(factors) -> dict[str, torch.Tensor]:
    out = {}
    for module, (a, b) in factors.items():
        out[f"base_model.model.{module}.lora_A.weight"] = a
        out[f"base_model.model.{module}.lora_B.weight"] = b
    return out


def _save_base(path, entries: dict[str, dict]) -> None:
    torch.save(
        {name: {"model." + k: v for k, v in state.items()} for name, state in entries.items()}
        | {"critic": {"model.head.head.bias": torch.zeros(1)}},
        path,
    )


def _save_longlive_lora(path, factors, critic_factors) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"generator_lora": _peft_names(factors), "critic_lora": _peft_names(critic_factors), "step": 3000}, path)


def _save_peft_lora(folder, factors, alpha: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_peft_names(factors), str(folder / "adapter_model.safetensors"))
    rank = next(iter(factors.values()))[0].shape[0]
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": alpha}))


def _merged(base: dict, factors, scale: float) -> dict[str, torch.Tensor]:
    out = dict(base)
    for module, (a, b) in factors.items():
        out[module + ".weight"] = base[module + ".weight"] + scale * (b @ a)
    return out


def _assert_close(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)


@pytest.fixture
def bases(tiny_model_cfg):
    return {EMA: _random_state(tiny_model_cfg, 11), RAW: _random_state(tiny_model_cfg, 12)}


# -- 1: the base weights a LoRA lands on -----------------------------------------------------------------------
STORED = {"both": {EMA, RAW}, "raw only": {RAW}, "ema only": {EMA}}
RANK, PEFT_ALPHA = 4, 8.0


@pytest.mark.parametrize(
    "stored, lora, use_ema", list(itertools.product(sorted(STORED), [None, "longlive", "peft"], [None, True, False]))
)
def test_generator_entry_follows_the_rule(stored, lora, use_ema, bases, tiny_model_cfg, tmp_path):
    entries = {name: bases[name] for name in STORED[stored]}
    _save_base(tmp_path / "base.pt", entries)
    factors = _factors(tiny_model_cfg, RANK, seed=5)
    lora_path, scale = None, 0.0
    if lora == "longlive":
        lora_path, scale = tmp_path / "lora.pt", expected_scale(RANK, None, None)
        _save_longlive_lora(lora_path, factors, _factors(tiny_model_cfg, RANK, seed=6))
    elif lora == "peft":
        lora_path, scale = tmp_path / "adapter", expected_scale(RANK, PEFT_ALPHA, None)
        _save_peft_lora(lora_path, factors, PEFT_ALPHA)

    entry = expected_entry(STORED[stored], lora, use_ema)
    if entry is None:
        with pytest.raises(UserError, match="drop --(no-)?ema") as err:
            read_checkpoint(tmp_path / "base.pt", use_ema=use_ema, lora=lora_path)
        assert "\n" not in str(err.value)
        return
    loaded = read_checkpoint(tmp_path / "base.pt", use_ema=use_ema, lora=lora_path)
    assert loaded.choice.entry == entry
    _assert_close(loaded.state, _merged(bases[entry], factors, scale) if lora else bases[entry])
    line = loaded.choice.describe()
    assert "\n" not in line and f"[{entry!r}:" in line
    if lora == "longlive":
        assert loaded.choice.lora_trained_on == RAW and "trained on 'generator'" in line


def test_longlive_lora_file_is_not_a_checkpoint(tiny_model_cfg, tmp_path):
    factors = _factors(tiny_model_cfg, RANK, seed=5)
    _save_longlive_lora(tmp_path / "lora.pt", factors, factors)
    with pytest.raises(UserError, match="holds only LoRA weights; pass it with --lora"):
        load_state_dict(tmp_path / "lora.pt")


# -- 2: the LoRA scale -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank, given_alpha", [(8, None), (8, 16.0), (8, 4.0), (256 // 32, 8.0)])
def test_longlive_lora_scale_is_alpha_over_rank_with_alpha_rank_by_default(
    rank, given_alpha, bases, tiny_model_cfg, tmp_path
):
    _save_base(tmp_path / "base.pt", bases)
    factors = _factors(tiny_model_cfg, rank, seed=7)
    _save_longlive_lora(tmp_path / "lora.pt", factors, factors)
    scale = expected_scale(rank, None, given_alpha)
    loaded = read_checkpoint(tmp_path / "base.pt", lora=tmp_path / "lora.pt", lora_alpha=given_alpha)
    _assert_close(loaded.state, _merged(bases[RAW], factors, scale))
    assert loaded.choice.lora_scales == (scale,) and loaded.choice.lora_ranks == (rank,)
    assert ("assumed = rank" in loaded.choice.lora_alpha) == (given_alpha is None)
    # The Python API's load path takes the same alpha.
    model = load_model(tmp_path / "base.pt", tiny_model_cfg, lora=tmp_path / "lora.pt", lora_alpha=given_alpha)
    _assert_close(model.state_dict(), loaded.state)


# -- 6: a LongLive training checkpoint directory as the LoRA ------------------------------------------------------
def test_lora_accepts_a_longlive_checkpoint_directory(bases, tiny_model_cfg, tmp_path):
    _save_base(tmp_path / "base.pt", bases)
    factors = _factors(tiny_model_cfg, RANK, seed=8)
    run = tmp_path / "logs"
    _save_longlive_lora(run / "checkpoint_model_003000" / "model.pt", factors, _factors(tiny_model_cfg, RANK, seed=9))
    (run / "checkpoint_model_000700").mkdir()  # the base as its own training run left it
    _save_base(run / "checkpoint_model_000700" / "model.pt", bases)
    loaded = read_checkpoint(run / "checkpoint_model_000700", lora=run / "checkpoint_model_003000")
    assert loaded.choice.entry == RAW and loaded.choice.lora_trained_on == RAW
    _assert_close(loaded.state, _merged(bases[RAW], factors, expected_scale(RANK, None, None)))
    # A checkpoint directory holding base weights, not a LoRA, says so; an empty one names what it looked for.
    (tmp_path / "full").mkdir()
    _save_base(tmp_path / "full" / "model.pt", bases)
    with pytest.raises(UserError, match="not a LoRA; pass it with --checkpoint"):
        read_checkpoint(tmp_path / "base.pt", lora=tmp_path / "full")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="looked for adapter_model.safetensors, adapter_model.bin, model.pt"):
        read_checkpoint(tmp_path / "base.pt", lora=tmp_path / "empty")


# -- the head count of a checkpoint without a config --------------------------------------------------
def _shapes(dim: int, ffn: int = 64, layers: int = 2) -> dict[str, torch.Tensor]:
    """What a checkpoint's header says, on the meta device."""
    return {
        "patch_embedding.weight": torch.empty(dim, 16, 1, 2, 2, device="meta"),
        "text_embedding.0.weight": torch.empty(dim, 32, device="meta"),
        "time_embedding.0.weight": torch.empty(dim, 32, device="meta"),
        "head.head.weight": torch.empty(64, dim, device="meta"),
        "blocks.0.ffn.0.weight": torch.empty(ffn, dim, device="meta"),
        f"blocks.{layers - 1}.ffn.0.weight": torch.empty(ffn, dim, device="meta"),
    }


def known_heads(dim: int) -> int | None:
    """Wan2.1's released widths only; None: nothing says (a preset of the same width is no evidence of the
    checkpoint's heads), so the loader must ask."""
    return {1536: 12, 5120: 40}.get(dim)


@pytest.mark.parametrize("dim", sorted({128, 256, 384, 48, 1536, 5120, *(p.model.dim for p in PRESETS.values())}))
def test_heads_come_from_a_known_width_or_are_asked_for(dim):
    heads = known_heads(dim)
    if heads is None:
        with pytest.raises(UserError, match="pass --num-heads") as err:
            infer_model_config(_shapes(dim))
        assert "\n" not in str(err.value) and f"{dim}-wide" in str(err.value)
    else:
        assert infer_model_config(_shapes(dim)).num_heads == heads
    assert infer_model_config(_shapes(dim), num_heads=2).num_heads == 2  # explicit always works


def test_load_model_and_convert_ask_for_heads_of_an_unknown_width(tmp_path, capsys):
    cfg = ModelConfig(dim=128, ffn_dim=64, num_layers=1, num_heads=2, text_dim=8, text_len=4, freq_dim=16)
    save_file(build_model(cfg).state_dict(), str(tmp_path / "w128.safetensors"))
    with pytest.raises(UserError, match="pass --num-heads"):
        load_model(tmp_path / "w128.safetensors")
    assert load_model(tmp_path / "w128.safetensors", num_heads=2).config.num_heads == 2
    assert main(["convert", str(tmp_path / "w128.safetensors"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "128-wide" in err and "--num-heads" in err
    assert not (tmp_path / "out" / "config.json").exists()
    assert main(["convert", str(tmp_path / "w128.safetensors"), str(tmp_path / "out"), "--num-heads", "2"]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_heads"] == 2
