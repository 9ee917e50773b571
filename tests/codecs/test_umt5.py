"""UMT5 text encoder: Wan's original `.pth` and the diffusers folders load the same encoder; Wan's padding."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from contextforcing.codecs.loading import (
    DIFFUSERS,
    ORIGINAL,
    WAN_T5_CHECKPOINT,
    WAN_T5_TOKENIZER,
    load_text_encoder,
    text_encoder_layout,
)
from contextforcing.codecs.umt5 import UMT5TextEncoder, clean_prompt, transformers_to_wan_t5
from contextforcing.errors import UserError

PROMPTS = ["a red ball bouncing in a blue room", "the cat sits on the mat", "a green dog"]
TEXT_LEN = 512  # Wan's padded length


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory, tiny_umt5, tiny_tokenizer):
    original = tmp_path_factory.mktemp("wan_original")
    torch.save(transformers_to_wan_t5(tiny_umt5.state_dict()), original / WAN_T5_CHECKPOINT)
    tiny_tokenizer.save_pretrained(original / WAN_T5_TOKENIZER)
    diffusers = tmp_path_factory.mktemp("wan_diffusers")
    # Sharded, as the real 5-shard text_encoder/ is.
    tiny_umt5.save_pretrained(diffusers / "text_encoder", max_shard_size="8KB")
    tiny_tokenizer.save_pretrained(diffusers / "tokenizer")
    assert (diffusers / "text_encoder" / "model.safetensors.index.json").is_file()
    return {ORIGINAL: original, DIFFUSERS: diffusers}


def _token_counts(tokenizer, prompts):
    return [len(tokenizer(clean_prompt(p), add_special_tokens=True).input_ids) for p in prompts]


@pytest.mark.parametrize("layout", [ORIGINAL, DIFFUSERS])
def test_both_layouts_load_the_same_encoder(t5_dirs, tiny_umt5, tiny_tokenizer, layout):
    assert text_encoder_layout(t5_dirs[layout]) == layout
    encoder = load_text_encoder(t5_dirs[layout])
    loaded, source = encoder.model.state_dict(), tiny_umt5.state_dict()
    assert all(torch.equal(loaded[k], source[k]) for k in source) and loaded.keys() == source.keys()
    assert encoder.model.encoder.embed_tokens.weight is encoder.model.shared.weight  # one table, not two

    out = encoder.encode(PROMPTS)
    assert out.shape == (3, TEXT_LEN, tiny_umt5.config.d_model) and encoder.text_len == TEXT_LEN
    # Reference: the source model run directly on Wan-style tokens, zeroed past each prompt.
    tokens = tiny_tokenizer(PROMPTS, padding="max_length", max_length=TEXT_LEN, return_tensors="pt")
    with torch.no_grad():
        hidden = tiny_umt5(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    expected = hidden * tokens.attention_mask[..., None]
    diff = (out - expected).abs().max().item()
    print(f"{layout}: max |ours - transformers| = {diff:.2e}")
    assert diff == 0.0


def test_layouts_agree_and_pad_with_zeros(t5_dirs, tiny_tokenizer):
    original = load_text_encoder(t5_dirs[ORIGINAL]).encode(PROMPTS)
    diffusers = load_text_encoder(t5_dirs[DIFFUSERS]).encode(PROMPTS)
    assert torch.equal(original, diffusers)
    for row, count in zip(original, _token_counts(tiny_tokenizer, PROMPTS)):
        assert count > 3
        assert row[:count].abs().amin(dim=-1).gt(0).all()  # every prompt token (and </s>) is encoded
        assert not row[count:].any()  # exactly zero past the prompt, as Wan pads


def _wan_t5_reference(state, ids, mask, num_heads, max_distance=128, eps=1e-6):
    """An independent forward of Wan's T5 encoder on its own weight names (pre-norm blocks, per-layer
    bidirectional relative position buckets, no attention scaling, gated tanh-GELU feed-forward)."""

    def rms(x, weight):
        return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def buckets(length, num_buckets):
        rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
        half = num_buckets // 2  # one half for keys after the query, one for keys before
        out = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        large = (
            exact
            + (torch.log(rel.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)).long()
        )
        return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))

    x = state["token_embedding.weight"][ids]
    b, length, dim = x.shape
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    masked = torch.zeros(b, 1, 1, length).masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
    for i in range(layers):
        p = f"blocks.{i}."
        h = rms(x, state[p + "norm1.weight"])
        q, k, v = ((h @ state[p + f"attn.{n}.weight"].T).view(b, length, num_heads, -1).transpose(1, 2) for n in "qkv")
        table = state[p + "pos_embedding.embedding.weight"]
        bias = table[buckets(length, table.shape[0])].permute(2, 0, 1)[None]
        attn = torch.softmax(q @ k.transpose(-1, -2) + bias + masked, dim=-1)
        x = x + (attn @ v).transpose(1, 2).reshape(b, length, -1) @ state[p + "attn.o.weight"].T
        h = rms(x, state[p + "norm2.weight"])
        gated = (h @ state[p + "ffn.fc1.weight"].T) * F.gelu(h @ state[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + gated @ state[p + "ffn.fc2.weight"].T
    return rms(x, state["norm.weight"])


def test_original_weights_compute_what_wans_t5_computes(t5_dirs, tiny_tokenizer, tiny_umt5):
    """Guards the name mapping itself (e.g. gate vs fc1) against an independent Wan-T5 forward."""
    state = torch.load(t5_dirs[ORIGINAL] / WAN_T5_CHECKPOINT, weights_only=True)
    tokens = tiny_tokenizer(PROMPTS, padding="max_length", max_length=64, return_tensors="pt")
    reference = _wan_t5_reference(state, tokens.input_ids, tokens.attention_mask, tiny_umt5.config.num_heads)
    ours = load_text_encoder(t5_dirs[ORIGINAL], text_len=64).encode(PROMPTS)
    mask = tokens.attention_mask[..., None].bool()
    diff = (ours - reference * mask).abs().max().item()
    print(f"max |ours - Wan T5 reference| = {diff:.2e}")
    assert diff < 1e-5


def test_cache_and_batch_independence(t5_dirs):
    encoder = load_text_encoder(t5_dirs[ORIGINAL], cache_size=2)
    calls = []
    real = encoder.encode_uncached
    encoder.encode_uncached = lambda prompts: calls.append(list(prompts)) or real(prompts)

    batch = encoder.encode([PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    assert calls == [[PROMPTS[0], PROMPTS[1]]]  # a repeated prompt is encoded once
    assert torch.equal(batch[0], batch[2])
    again = encoder.encode([PROMPTS[1]])
    assert calls == [[PROMPTS[0], PROMPTS[1]]] and torch.equal(again[0], batch[1])  # cache hit: no model call
    encoder.encode([PROMPTS[2]])  # evicts the least recently used (PROMPTS[0])
    encoder.encode([PROMPTS[0]])
    assert calls[-1] == [PROMPTS[0]]
    fresh = load_text_encoder(t5_dirs[ORIGINAL]).encode([PROMPTS[0]])
    torch.testing.assert_close(fresh[0], batch[0], atol=1e-6, rtol=0)  # batching does not change an embedding


def test_dtype_and_prompt_cleaning(t5_dirs):
    encoder = load_text_encoder(t5_dirs[DIFFUSERS], dtype=torch.bfloat16)
    assert encoder.encode(["a red ball"]).dtype == torch.bfloat16
    assert clean_prompt("  a &amp;amp; red\n\tball ") == "a & red ball"
    assert torch.equal(encoder.encode(["a  red\nball "]), encoder.encode(["a red ball"]))


def _one_line(err) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_files(t5_dirs, tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_text_encoder(tmp_path / "nope")
    with pytest.raises(UserError, match="no UMT5 text encoder found") as err:
        load_text_encoder(tmp_path)
    assert WAN_T5_CHECKPOINT in _one_line(err)
    shutil.copy(t5_dirs[ORIGINAL] / WAN_T5_CHECKPOINT, tmp_path / WAN_T5_CHECKPOINT)
    with pytest.raises(UserError, match="no tokenizer folder"):
        load_text_encoder(tmp_path)
    with pytest.raises(UserError, match="no diffusers-layout"):
        load_text_encoder(tmp_path, layout=DIFFUSERS)


def test_corrupted_files(t5_dirs, tmp_path):
    bad = tmp_path / "diffusers"
    shutil.copytree(t5_dirs[DIFFUSERS], bad)
    shard = sorted((bad / "text_encoder").glob("model-*.safetensors"))[1]
    shard.write_bytes(b"\x00not a safetensors file")
    with pytest.raises(UserError, match="corrupted or unreadable safetensors") as err:
        load_text_encoder(bad)
    assert shard.name in _one_line(err)

    bad = tmp_path / "original"
    shutil.copytree(t5_dirs[ORIGINAL], bad)
    state = torch.load(bad / WAN_T5_CHECKPOINT, weights_only=True)
    state["blocks.1.ffn.fc1.weight"] = state["blocks.1.ffn.fc1.weight"][:, :5]
    torch.save(state, bad / WAN_T5_CHECKPOINT)
    with pytest.raises(UserError, match="shape mismatch") as err:
        load_text_encoder(bad)
    assert "encoder.block.1.layer.1.DenseReluDense.wi_1.weight" in _one_line(err)
    (bad / WAN_T5_CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="corrupted or unreadable checkpoint"):
        load_text_encoder(bad)


def test_encoder_from_objects(tiny_umt5, tiny_tokenizer):
    """The wrapper itself, for callers that build the model and tokenizer themselves."""
    encoder = UMT5TextEncoder(tiny_umt5, tiny_tokenizer, text_len=16)
    assert encoder.encode(["a red ball"]).shape == (1, 16, tiny_umt5.config.d_model)
    assert encoder.text_dim == tiny_umt5.config.d_model
