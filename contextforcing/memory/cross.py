"""Cross-attention cache: the text's keys/values per layer, computed once per prompt."""

from __future__ import annotations

import torch


class CrossAttentionCache:
    """Holds one prompt's text embeddings and, lazily, each layer's cross-attention keys/values.

    A prompt switch makes a new cache (the old one is simply dropped), so nothing stale survives.
    """

    def __init__(self, text: torch.Tensor):
        self.text = text  # [B, text_len, text_dim]
        self._embedded: torch.Tensor | None = None
        self._kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, model, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self._kv:
            if self._embedded is None:
                self._embedded = model.embed_text(self.text)
            self._kv[layer] = model.text_key_values(layer, self._embedded)
        return self._kv[layer]
