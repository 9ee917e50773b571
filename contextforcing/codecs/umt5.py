"""The UMT5-XXL text encoder of Wan2.1, run through transformers' `UMT5EncoderModel`.

Two on-disk layouts load into the same model:
- original Wan2.1: `models_t5_umt5-xxl-enc-bf16.pth` holds the state dict of Wan's own `T5Encoder`
  (names like `blocks.3.attn.q.weight`), with the tokenizer in `google/umt5-xxl/`;
- diffusers: `text_encoder/` (transformers config + safetensors, often sharded) and `tokenizer/`.

Output follows Wan: tokens padded/truncated to 512, the encoder run with the padding masked, and every
position past a prompt's own tokens set to zero.
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from contextforcing.errors import UserError
from contextforcing.io.weights import find_safetensors, load_strict, read_state_dict

WAN_TEXT_LEN = 512  # Wan pads/truncates every prompt to this many tokens
# Wan's T5 does not store these; they are fixed by its T5RelativeEmbedding and T5LayerNorm.
WAN_T5_MAX_DISTANCE = 128
WAN_T5_EPS = 1e-6
# Prompts whose embeddings are kept; at 512x4096 bf16 one is 4 MiB, so 64 cost 256 MiB.
DEFAULT_CACHE_SIZE = 64

# Wan `T5Encoder` name -> transformers `UMT5EncoderModel` name, per layer ({i}) and global.
_LAYER_MAP = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    # Wan computes fc1(x) * gelu(gate(x)); transformers computes gelu(wi_0(x)) * wi_1(x).
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_GLOBAL_MAP = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_TIED_EMBEDDING = "encoder.embed_tokens.weight"  # transformers ties it to `shared.weight`
_WAN_LAYER = re.compile(r"blocks\.(\d+)\.(.+)")
_HF_LAYER = re.compile(r"encoder\.block\.(\d+)\.(.+)")


def wan_t5_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a Wan `T5Encoder` state dict to `UMT5EncoderModel` names (tensors are shared, not copied)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in _GLOBAL_MAP:
            out[_GLOBAL_MAP[name]] = tensor
            continue
        match = _WAN_LAYER.fullmatch(name)
        if not match or match[2] not in _LAYER_MAP:
            raise UserError(f"unexpected weight {name!r} for Wan's UMT5 encoder (not a T5 encoder checkpoint?)")
        out[f"encoder.block.{match[1]}.{_LAYER_MAP[match[2]]}"] = tensor
    if "shared.weight" in out:
        out[_TIED_EMBEDDING] = out["shared.weight"]
    return out


def transformers_to_wan_t5(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `wan_t5_to_transformers`: writes the original Wan2.1 `.pth` key names."""
    global_inv = {v: k for k, v in _GLOBAL_MAP.items()}
    layer_inv = {v: k for k, v in _LAYER_MAP.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name == _TIED_EMBEDDING:
            continue
        if name in global_inv:
            out[global_inv[name]] = tensor
            continue
        match = _HF_LAYER.fullmatch(name)
        if not match or match[2] not in layer_inv:
            raise UserError(f"unexpected weight {name!r} for a UMT5 encoder")
        out[f"blocks.{match[1]}.{layer_inv[match[2]]}"] = tensor
    return out


def umt5_config_from_wan(state: Mapping[str, torch.Tensor], source: str = "UMT5 checkpoint") -> UMT5Config:
    """Reads the encoder's shape off a Wan T5 state dict, so any size (XXL or a tiny test one) loads."""
    try:
        vocab_size, d_model = state["token_embedding.weight"].shape
        num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        dim_attn = state["blocks.0.attn.q.weight"].shape[0]
        d_ff = state["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as exc:
        raise UserError(f"{source}: missing weight {exc.args[0]!r}; not a Wan UMT5 encoder checkpoint") from None
    num_layers = len({m[1] for name in state if (m := _WAN_LAYER.fullmatch(name))})
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=dim_attn // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=WAN_T5_MAX_DISTANCE,
        layer_norm_epsilon=WAN_T5_EPS,
        feed_forward_proj="gated-gelu",  # tanh-approximated GELU, as Wan's T5 GELU
        dropout_rate=0.0,
    )


def build_umt5(config: UMT5Config, state: Mapping[str, torch.Tensor], source: str, device, dtype) -> UMT5EncoderModel:
    """Builds on the meta device, then loads `state` (transformers names) strictly onto `device`."""
    state = dict(state)
    # transformers checkpoints may store only one of the two tied embedding names.
    if "shared.weight" not in state and _TIED_EMBEDDING in state:
        state["shared.weight"] = state[_TIED_EMBEDDING]
    if _TIED_EMBEDDING not in state and "shared.weight" in state:
        state[_TIED_EMBEDDING] = state["shared.weight"]
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    load_strict(model, state, source, device, dtype)
    model.set_input_embeddings(model.shared)  # one embedding table on the device, not two copies
    return model.eval().requires_grad_(False)


def load_tokenizer(folder: Path):
    folder = Path(folder)
    if not (folder / "tokenizer_config.json").is_file() and not (folder / "tokenizer.json").is_file():
        raise UserError(f"{folder}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{folder}: cannot load the tokenizer ({str(exc).strip().splitlines()[0]})") from None


def load_umt5_original(checkpoint: Path, tokenizer_dir: Path, device="cpu", dtype=torch.float32, **kwargs):
    """Wan2.1's `models_t5_umt5-xxl-enc-bf16.pth` + its `google/umt5-xxl` tokenizer folder."""
    state = read_state_dict(Path(checkpoint))
    config = umt5_config_from_wan(state, str(checkpoint))
    model = build_umt5(config, wan_t5_to_transformers(state), str(checkpoint), device, dtype)
    return UMT5TextEncoder(model, load_tokenizer(tokenizer_dir), **kwargs)


def load_umt5_diffusers(text_encoder_dir: Path, tokenizer_dir: Path, device="cpu", dtype=torch.float32, **kwargs):
    """A transformers `UMT5EncoderModel` folder (config.json + safetensors) + a tokenizer folder."""
    text_encoder_dir = Path(text_encoder_dir)
    config_path = text_encoder_dir / "config.json"
    if not config_path.is_file():
        raise UserError(f"{text_encoder_dir}: no config.json")
    try:
        config = UMT5Config.from_json_file(str(config_path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_path}: not a valid config ({str(exc).strip().splitlines()[0]})") from None
    config.dropout_rate = 0.0
    weights = find_safetensors(text_encoder_dir, "model.safetensors")
    model = build_umt5(config, read_state_dict(weights), str(weights), device, dtype)
    return UMT5TextEncoder(model, load_tokenizer(tokenizer_dir), **kwargs)


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning: fix mojibake (if ftfy is installed), unescape HTML twice, collapse spaces."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5TextEncoder:
    """The text-encoder interface (`text_dim`, `text_len`, `encode`) over a UMT5 encoder and tokenizer.

    `encode` returns `[B, text_len, text_dim]` on the model's device and dtype. Embeddings are cached per
    prompt (least recently used evicted past `cache_size`), so switching back to a prompt costs nothing.
    """

    def __init__(
        self, model: UMT5EncoderModel, tokenizer, text_len: int = WAN_TEXT_LEN, cache_size: int = DEFAULT_CACHE_SIZE
    ):
        self.model, self.tokenizer = model, tokenizer
        self.text_len, self.text_dim = text_len, model.config.d_model
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    def encode(self, prompts: list[str]) -> torch.Tensor:
        if not prompts:
            return torch.zeros(0, self.text_len, self.text_dim, device=self.device, dtype=self.dtype)
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            for prompt, embedding in zip(todo, self.encode_uncached(todo)):
                self._cache[prompt] = embedding
        out = []
        for prompt in prompts:
            self._cache.move_to_end(prompt)
            out.append(self._cache[prompt])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack(out)

    @torch.no_grad()
    def encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,  # the closing </s>, as Wan and diffusers tokenize
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden.masked_fill(~mask.bool()[..., None], 0.0)
