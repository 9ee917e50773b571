"""Codecs: text encoders (prompt -> embeddings) and video codecs (pixels <-> latents).

Interfaces (duck-typed):
- text encoder: `text_dim`, `text_len`, `encode(prompts: list[str]) -> Tensor[B, text_len, text_dim]`
  (zero past each prompt's tokens, as Wan pads UMT5 output).
- video codec: `latent_channels`, `stride_t`, `stride_hw`, `encode(video[B,3,T,H,W] in [-1,1]) -> latents`,
  `stream_decoder() -> object with decode(latents[B,C,F,h,w]) -> video[B,3,T',H,W] in [-1,1]` that carries
  its temporal state between calls, so chunk-wise decoding equals one-shot decoding.

Implementations:
- `text.HashTextEncoder`, `preview.PreviewCodec`: tiny, weight-free, for tests and random-init presets.
- `umt5.UMT5TextEncoder`, `wan_vae.WanVideoCodec` (+ `WanStreamDecoder`): Wan2.1's UMT5-XXL and VAE,
  loaded from a local Wan2.1 directory in the original or diffusers layout by
  `loading.load_text_encoder(wan_dir, device, dtype)` and `loading.load_vae(wan_dir, device, dtype)`.
  Those modules import transformers/diffusers; this package does not, so importing it stays cheap.
"""
