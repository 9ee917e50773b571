"""Tiny random UMT5 encoders and Wan VAEs saved in the exact file layouts of the Wan2.1 originals."""

from __future__ import annotations

import pytest
import torch

# z_dim 16 so the original layout (which stores no latent statistics) gets Wan2.1's real mean/std, as the
# diffusers config does by default; num_res_blocks 1 differs from the real 2, to exercise the key mapping.
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_UMT5 = dict(
    d_model=16,
    d_kv=4,
    d_ff=24,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
)
WORDS = "a red ball bouncing in blue room the cat sits on mat green dog runs through park".split()


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values everywhere, norm gains included, so a swapped or misnamed weight changes the output.

    Weights are scaled by 1/sqrt(fan_in) and gains kept near 1 so activations stay O(1) and the decoded
    video is not simply saturated at the [-1, 1] clamp.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("gamma", "layer_norm.weight")):
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim > 1 and "embed" not in name and "shared" not in name and "relative" not in name:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.3 * noise)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from transformers import T5Tokenizer

    chars = sorted(set("".join(WORDS)))
    # A sentencepiece-style unigram vocabulary, ids laid out as in T5: <pad>=0, </s>=1, <unk>=2.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -2.0) for w in WORDS]
    vocab += [("▁", -3.0)] + [(c, -5.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


@pytest.fixture(scope="session")
def tiny_umt5(tiny_tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    model = UMT5EncoderModel(UMT5Config(vocab_size=len(tiny_tokenizer), **TINY_UMT5)).eval()
    randomize(model, seed=1)
    return model


def build_tiny_vae(seed: int = 2, **overrides):
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(**{**TINY_VAE, **overrides}).eval()
    randomize(vae, seed)
    return vae


@pytest.fixture(scope="session")
def make_tiny_vae():
    """A factory (tests import no helpers: `tests/codecs` cannot be a package, it would shadow stdlib `codecs`)."""
    return build_tiny_vae


@pytest.fixture(scope="session")
def tiny_vae():
    return build_tiny_vae()
