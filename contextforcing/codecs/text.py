"""A tiny built-in text encoder: deterministic hashed word embeddings, no weights to download."""

from __future__ import annotations

import re
import zlib

import torch


class HashTextEncoder:
    """Maps each word to a fixed random vector chosen by a stable hash of the word.

    Same prompt, same embedding, on every machine. Positions past the prompt are zero, as Wan pads.
    Used by random-init presets and the synthetic world; UMT5 serves real Wan models.
    """

    def __init__(self, text_dim: int, text_len: int, vocab_size: int = 4096, seed: int = 0):
        self.text_dim, self.text_len, self.vocab_size = text_dim, text_len, vocab_size
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab_size, text_dim, generator=gen)

    def token_ids(self, prompt: str) -> list[int]:
        words = re.findall(r"[\w']+", prompt.lower())[: self.text_len]
        return [zlib.crc32(w.encode()) % self.vocab_size for w in words]

    def encode_one(self, prompt: str) -> torch.Tensor:
        """A table lookup, cheap enough not to cache (callers that reuse prompts cache, e.g. `Pipeline.encode`)."""
        out = torch.zeros(self.text_len, self.text_dim)
        ids = self.token_ids(prompt)
        if ids:
            out[: len(ids)] = self.table[ids]
        return out

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([self.encode_one(p) for p in prompts])
