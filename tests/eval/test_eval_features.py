"""Feature extractors: tiny random weights saved in the Hugging Face and the original layouts load to the
same model (identical features), the pixel proxy is labelled, and bad weight paths are one-line errors."""

import numpy as np
import pytest
import torch

from contextforcing.errors import UserError
from contextforcing.eval.features import load_extractor, pixel_extractor
from contextforcing.eval.generic import vbench_consistency

transformers = pytest.importorskip("transformers")

# ViT convention: 64-dim heads. Tiny but structurally complete: 2 blocks, real patch sizes.
DIM, LAYERS, MLP = 64, 2, 128


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)  # non-square on purpose


def _qkv(sd, prefix, names=("q_proj", "k_proj", "v_proj")):
    w = torch.cat([sd[f"{prefix}.{n}.weight"] for n in names])
    b = torch.cat([sd[f"{prefix}.{n}.bias"] for n in names])
    return w, b


def _copy(sd, out, pairs, src, dst):
    for a, b in pairs:
        for p in ("weight", "bias"):
            out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]


def dino_original_layout(model):
    """What facebookresearch/dino's ViT state dict looks like for this model (written independently here)."""
    sd = model.state_dict()
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in range(LAYERS):
        out[f"blocks.{i}.attn.qkv.weight"], out[f"blocks.{i}.attn.qkv.bias"] = _qkv(sd, f"layers.{i}.attention")
        _copy(
            sd,
            out,
            [
                ("attention.o_proj", "attn.proj"),
                ("layernorm_before", "norm1"),
                ("layernorm_after", "norm2"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ],
            f"layers.{i}",
            f"blocks.{i}",
        )
    return out


def dinov2_original_layout(model):
    sd = model.state_dict()
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "mask_token": sd["embeddings.mask_token"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in range(LAYERS):
        src = f"encoder.layer.{i}"
        out[f"blocks.{i}.attn.qkv.weight"], out[f"blocks.{i}.attn.qkv.bias"] = _qkv(sd, f"{src}.attention")
        _copy(
            sd,
            out,
            [
                ("attention.o_proj", "attn.proj"),
                ("norm1", "norm1"),
                ("norm2", "norm2"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ],
            src,
            f"blocks.{i}",
        )
        out[f"blocks.{i}.ls1.gamma"] = sd[f"{src}.layer_scale1.lambda1"]
        out[f"blocks.{i}.ls2.gamma"] = sd[f"{src}.layer_scale2.lambda1"]
    return out


def clip_original_layout(model):
    """OpenAI CLIP's visual.* keys (the text tower is irrelevant to image features and left out)."""
    sd = {k: v for k, v in model.state_dict().items()}
    v = "vision_model"
    out = {
        "visual.class_embedding": sd[f"{v}.embeddings.class_embedding"],
        "visual.conv1.weight": sd[f"{v}.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": sd[f"{v}.embeddings.position_embedding.weight"],
        "visual.proj": sd["visual_projection.weight"].t().contiguous(),
    }
    _copy(sd, out, [("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")], v, "visual")
    for i in range(LAYERS):
        src, dst = f"{v}.encoder.layers.{i}", f"visual.transformer.resblocks.{i}"
        out[f"{dst}.attn.in_proj_weight"], out[f"{dst}.attn.in_proj_bias"] = _qkv(sd, f"{src}.self_attn")
        _copy(
            sd,
            out,
            [
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ],
            src,
            dst,
        )
    return out


def _randomise(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # layer scales and norms away from their init, so a mix-up shows
            p.add_(torch.randn_like(p) * 0.05)
    return model


def make_dino(tmp_path):
    cfg = transformers.ViTConfig(
        hidden_size=DIM,
        num_hidden_layers=LAYERS,
        num_attention_heads=DIM // 64,
        intermediate_size=MLP,
        patch_size=16,
        image_size=32,
        layer_norm_eps=1e-6,
    )
    model = _randomise(transformers.ViTModel(cfg, add_pooling_layer=False))
    model.save_pretrained(tmp_path / "dino-hf")
    torch.save(dino_original_layout(model), tmp_path / "dino_vit_tiny.pth")
    return tmp_path / "dino-hf", tmp_path / "dino_vit_tiny.pth"


def make_dinov2(tmp_path):
    cfg = transformers.Dinov2Config(
        hidden_size=DIM,
        num_hidden_layers=LAYERS,
        num_attention_heads=DIM // 64,
        mlp_ratio=MLP // DIM,
        patch_size=14,
        image_size=28,
        layer_norm_eps=1e-6,
    )
    model = _randomise(transformers.Dinov2Model(cfg))
    model.save_pretrained(tmp_path / "dinov2-hf")
    torch.save(dinov2_original_layout(model), tmp_path / "dinov2_tiny.pth")
    return tmp_path / "dinov2-hf", tmp_path / "dinov2_tiny.pth"


def make_clip(tmp_path):
    vision = dict(
        hidden_size=DIM,
        num_hidden_layers=LAYERS,
        num_attention_heads=DIM // 64,
        intermediate_size=MLP,
        patch_size=16,
        image_size=32,
    )
    text = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=16,
    )
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    model = _randomise(transformers.CLIPModel(cfg))  # the released HF checkpoint is a full CLIPModel
    model.save_pretrained(tmp_path / "clip-hf")
    torch.save(clip_original_layout(model), tmp_path / "ViT-tiny.pt")
    return tmp_path / "clip-hf", tmp_path / "ViT-tiny.pt"


@pytest.mark.parametrize(
    "name, make, dim", [("dino", make_dino, DIM), ("dinov2", make_dinov2, DIM), ("clip", make_clip, 24)]
)
def test_both_layouts_give_identical_features(tmp_path, frames, name, make, dim):
    hf_dir, original = make(tmp_path)
    hf, orig = load_extractor(name, hf_dir), load_extractor(name, original)
    a, b = hf(frames), orig(frames)
    assert a.shape == (3, dim) and not hf.proxy
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a[0], a[1], atol=1e-3), "different frames, different features"
    # a static video is perfectly consistent under any extractor
    assert vbench_consistency(hf(np.repeat(frames[:1], 4, axis=0))).score == pytest.approx(1.0, abs=1e-6)


def test_pixel_proxy():
    ex = pixel_extractor()
    assert ex.proxy and "proxy" in ex.description
    black = np.zeros((2, 64, 64, 3), np.uint8)
    f = ex(black)
    np.testing.assert_allclose(f, -np.ones((2, 768)) / np.sqrt(768), atol=1e-6)  # a usable vector, not zeros
    white = np.full((1, 64, 64, 3), 255, np.uint8)
    assert float(ex(white)[0] @ f[0]) == pytest.approx(-1.0)


def test_weight_errors(tmp_path):
    with pytest.raises(UserError, match="needs a local weights path"):
        load_extractor("dino", None)
    with pytest.raises(UserError, match="does not exist"):
        load_extractor("clip", tmp_path / "missing.pt")
    with pytest.raises(UserError, match="no config.json"):
        load_extractor("dinov2", tmp_path)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="not an original-layout DINO"):
        load_extractor("dino", tmp_path / "wrong.pth")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights"):
        load_extractor("clip", tmp_path / "junk.pt")
    dinov2_dir, _ = make_dinov2(tmp_path)
    with pytest.raises(UserError, match="dino weights"):
        load_extractor("dino", dinov2_dir)  # a DINOv2 checkpoint is not a DINO one: refuse, do not re-init
    with pytest.raises(UserError, match="unknown feature extractor"):
        load_extractor("resnet")
