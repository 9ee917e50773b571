"""One attention entry point with interchangeable backends, and frame-level mask builders.

Masks are built at frame granularity ([F_q, F_k] booleans, True = may attend) and expanded to tokens by
the backend, so the same mask serves SDPA (dense bool mask; CPU and training) and flex_attention
(block-sparse; GPU). Cached streaming inference needs no mask: the memory hands over exactly the keys a chunk
attends (its store's attended prefix, or copies of it), and a chunk sees itself fully; read at fixed shapes (for
torch.compile and CUDA graphs), the memory adds a key mask over its slots beyond what the chunk attends.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "flex")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    tokens_per_frame: int = 1,
    backend: str = "sdpa",
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].

    `frame_mask` [F_q, F_k] (True = may attend) expanded to tokens, or `key_mask` [Lk] (True = every query may
    attend that key: a memory read at fixed shapes, whose unused slots are masked), or neither: every query
    attends every key (a memory read of exactly what the chunk attends)."""
    if backend == "flex" and frame_mask is not None:
        return _flex(q, k, v, frame_mask, tokens_per_frame)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if frame_mask is not None and key_mask is not None:
        raise ValueError("give a frame mask or a key mask, not both")
    mask = None if key_mask is None else key_mask.view(1, 1, 1, -1)  # [B, H, Lq, Lk] by broadcasting
    if frame_mask is not None:
        mask = frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def _flex(q, k, v, frame_mask, tokens_per_frame):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q_idx, kv_idx):
        return frame_mask[q_idx // tokens_per_frame, kv_idx // tokens_per_frame]

    block_mask = create_block_mask(mask_mod, None, None, q.shape[1], k.shape[1], device=q.device)
    fn = _compiled_flex() if q.is_cuda else flex_attention
    out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
    return out.transpose(1, 2)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def block_causal_mask(num_frames: int, chunk_frames: int, device=None) -> torch.Tensor:
    """Frame f attends to every frame of its own chunk and of earlier chunks."""
    chunk = torch.arange(num_frames, device=device) // chunk_frames
    return chunk[:, None] >= chunk[None, :]


def context_target_mask(
    num_context: int, num_target: int, context_mask: torch.Tensor | None = None, device=None
) -> torch.Tensor:
    """Clean context frames followed by noisy target frames.

    Context frames attend among themselves by `context_mask` (default: all of the context, as a teacher
    reading a clean memory does); target frames attend to the whole context and the whole target window.
    """
    total = num_context + num_target
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[:num_context, :num_context] = True if context_mask is None else context_mask
    mask[num_context:, :] = True
    return mask
