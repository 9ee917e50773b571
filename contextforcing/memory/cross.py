"""Cross-attention cache: the text's keys/values per layer, computed once per prompt."""

from __future__ import annotations

import torch


class CrossAttentionCache:
    """Holds one prompt's text embeddings and each layer's cross-attention keys/values once computed.

    The model fills it during its first forward with this prompt (each block projects its own text
    keys/values inside its forward, so sharded blocks gather their weights once) and reuses it after.
    A prompt switch makes a new cache (the old one is simply dropped), so nothing stale survives.
    Inference only: a training rollout hands the model the text tensor itself (`VideoStream(trainable=True)`),
    because a cached projection would carry a stale graph or cut the text weights out of the gradient.
    """

    def __init__(self, text: torch.Tensor):
        self.text = text  # [B, text_len, text_dim]
        self.embedded: torch.Tensor | None = None  # text after the model's text_embedding
        self.key_values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
