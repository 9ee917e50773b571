"""Teacher LoRA: only adapters train, the merged export equals the adapted model, and runs end to end."""

from pathlib import Path

import torch

from contextforcing.config import ModelConfig
from contextforcing.model.checkpoints import load_model
from contextforcing.model.wan import build_model
from contextforcing.training.export import export, generator_state
from contextforcing.training.lora import apply_lora, merge_lora_state
from contextforcing.training.run_config import load_train_config
from contextforcing.training.trainer import run_training

CFG = ModelConfig(dim=32, ffn_dim=64, num_layers=2, num_heads=2, text_dim=8, text_len=4, freq_dim=16)
TOY_TEACHER = Path(__file__).parents[2] / "configs" / "toy" / "teacher.yaml"


def _inputs():
    return torch.randn(1, 16, 3, 4, 4), torch.tensor([500.0]), torch.randn(1, 4, 8)


def test_only_adapters_train_and_training_starts_at_the_base_model():
    model = build_model(CFG, seed=0)
    x, t, text = _inputs()
    with torch.no_grad():
        before = model(x, t, text)
    count = apply_lora(model, rank=2, alpha=4.0)
    assert count == CFG.num_layers * 10  # q, k, v, o of both attentions + ffn.0, ffn.2 per block
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    with torch.no_grad():
        assert torch.equal(model(x, t, text), before)  # B starts at zero


def test_merged_state_loads_as_a_plain_model_with_the_same_output():
    model = build_model(CFG, seed=0)
    apply_lora(model, rank=2, alpha=4.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_()
    plain = build_model(CFG, seed=1)
    plain.load_state_dict(merge_lora_state(model.state_dict()), strict=True)
    x, t, text = _inputs()
    with torch.no_grad():
        assert torch.allclose(plain(x, t, text), model(x, t, text), atol=1e-5)


def test_teacher_with_lora_trains_and_exports_merged_weights(tmp_path):
    from contextforcing.config import get_preset
    from contextforcing.model.checkpoints import save_safetensors

    base = tmp_path / "base.safetensors"
    overrides = [
        f"trainer.run_dir={tmp_path / 'run'}",
        "trainer.max_steps=3",
        "trainer.checkpoint_every=3",
        "trainer.ema_start=0",
        "stage.history_max=6",
        "stage.data.micro_batch=1",
        "stage.lora_rank=2",
        "stage.lora_alpha=2.0",
    ]
    preset = get_preset(load_train_config("teacher", TOY_TEACHER, overrides).stage.model).model
    save_safetensors(build_model(preset, seed=3).state_dict(), base)
    run_training(load_train_config("teacher", TOY_TEACHER, [*overrides, f"stage.init={base}"]))
    raw, _ = generator_state(tmp_path / "run", use_ema=False)
    assert any(k.endswith("lora_A") for k in raw)  # the run trained adapters, not the base
    out, which = export(tmp_path / "run", tmp_path / "teacher.safetensors")
    assert which.startswith("ema")
    merged = load_model(out, preset).state_dict()
    base_state = load_model(base, preset).state_dict()
    changed = [k for k in merged if not torch.equal(merged[k], base_state[k])]
    assert changed and all(".self_attn." in k or ".cross_attn." in k or ".ffn." in k for k in changed)
