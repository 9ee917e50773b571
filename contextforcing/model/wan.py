"""Causal Wan2.1 DiT with the original Wan2.1 parameter names.

Checkpoints of Wan2.1, Self-Forcing, CausVid, LongLive and Context Forcing load directly (key names are
those of Wan's `WanModel`). Compared with the bidirectional model only three things change: timesteps
are per frame (per-frame adaLN), RoPE takes an explicit temporal position for every frame, and
self-attention either reads a context memory (streaming) or obeys a frame-level mask (parallel).

Forward modes, all on the same weights:
  (a) cached chunk:      model(x_chunk, t, text, memory=mem, commit=...)   positions chosen by the memory
  (b) parallel masked:   model(x_clip, t, text, frame_mask=block_causal_mask(F, chunk))
  (c) context + target:  model.forward_with_context(target, t, text, context, context_positions, ...)
Tensor layout: latents [B, C, F, H, W]; timesteps [B, F]; text embeddings [B, text_len, text_dim].
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint

from contextforcing.config import ModelConfig
from contextforcing.model.attention import attention, context_target_mask
from contextforcing.model.rope import RopeAxes, apply_rope

if TYPE_CHECKING:
    from contextforcing.memory.context import ContextMemory, MemoryPass
    from contextforcing.memory.cross import CrossAttentionCache


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the parameter dtype."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return nn.functional.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class Attention(nn.Module):
    """Projections shared by self- and cross-attention (names: q, k, v, o, norm_q, norm_k)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = WanRMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))  # [B, L, dim] -> [B, L, H, D]

    def project_query(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.norm_q(self.q(x)))

    def project_key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.norm_k(self.k(x))), self.heads(self.v(x))


class AttentionInputs:
    """What self-attention needs besides the tokens: rotations, and a memory view or a mask."""

    def __init__(self, freqs, tokens_per_frame, frame_mask=None, backend="sdpa"):
        self.freqs, self.tokens_per_frame = freqs, tokens_per_frame
        self.frame_mask, self.backend = frame_mask, backend


class WanBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = WanLayerNorm(cfg.dim, cfg.eps)
        self.self_attn = Attention(cfg)
        self.norm3 = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(cfg)
        self.norm2 = WanLayerNorm(cfg.dim, cfg.eps)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(
        self,
        x,
        e0,
        text_emb,
        inputs: AttentionInputs,
        memory: "MemoryPass | None" = None,
        layer: int = 0,
        text_kv=None,
        keys_only: bool = False,
    ):
        """x [B, F, T, dim] float32 residual stream; e0 [B, F, 6, dim]; text_emb [B, Lt, dim].

        `memory` = the pass over the context memory: it takes block `layer`'s keys and values of the chunk and
        returns what to attend (None: attend the clip itself). `text_kv` = this layer's cached
        cross-attention keys/values, or None to project them from `text_emb` here. `keys_only`: hand the keys
        and values to the memory and stop (x returned unchanged): the last layer of a commit pass whose output
        nobody reads.
        Returns (x, text_kv) so that the caller can cache the text projection.
        """
        b, f, t, dim = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float().unsqueeze(1) + e0).chunk(6, dim=2)
        dtype = self.ffn[0].weight.dtype

        # 1. Self-attention over [memory context ; this clip], adaLN per frame.
        h = self._attention_input(x, shift1, scale1)
        q = self.self_attn.project_query(h)
        k, v = self.self_attn.project_key_value(h)
        q_rot, k_rot = apply_rope(q, inputs.freqs), apply_rope(k, inputs.freqs)
        keys, values, key_mask = memory.keys_values(layer, k, k_rot, v) if memory is not None else (k_rot, v, None)
        if keys_only:
            return x, text_kv
        y = attention(q_rot, keys, values, inputs.frame_mask, inputs.tokens_per_frame, inputs.backend, key_mask)
        y = self.self_attn.o(y.flatten(2)).float().reshape(b, f, t, dim)
        x = x + y * gate1

        # 2. Cross-attention to the text (no modulation, ungated residual).
        if text_kv is None:
            text_kv = self.cross_attn.project_key_value(text_emb)
        h = self.norm3(x).to(dtype).reshape(b, f * t, dim)
        y = attention(self.cross_attn.project_query(h), *text_kv)
        x = x + self.cross_attn.o(y.flatten(2)).float().reshape(b, f, t, dim)

        # 3. Feed-forward, adaLN per frame.
        h = (self.norm2(x) * (1 + scale2) + shift2).to(dtype)
        x = x + self.ffn(h).float() * gate2
        return x, text_kv

    def _attention_input(self, x, shift, scale) -> torch.Tensor:
        b, f, t, dim = x.shape
        return (self.norm1(x) * (1 + scale) + shift).to(self.ffn[0].weight.dtype).reshape(b, f * t, dim)

    def keys(self, x, e0) -> torch.Tensor:
        """The pre-RoPE self-attention keys [B, F*T, H, D] this block computes for residual stream x."""
        shift1, scale1 = (self.modulation.float().unsqueeze(1) + e0).chunk(6, dim=2)[:2]
        return self.self_attn.project_key_value(self._attention_input(x, shift1, scale1))[0]


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, e):
        """x [B, F, T, dim]; e [B, F, dim] -> [B, F, T, out_dim * prod(patch)]."""
        shift, scale = (self.modulation.float().unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)
        return self.head((self.norm(x) * (1 + scale) + shift).to(self.head.weight.dtype))


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos, sin] halves over 10000^(-i/half), computed in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.reshape(-1).to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).reshape(*t.shape, dim)


class CausalWanModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg.validate()
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.gradient_checkpointing = False
        self.attention_backend = "sdpa"
        # what every RoPE call reads, resolved once (the config's derived properties are not re-run per pass)
        self.room_anchored = cfg.room_anchored
        self.rope_axes = RopeAxes.of(cfg.head_dim, cfg.rope_theta, cfg.room_tokens)

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) of one latent frame."""
        _, ph, pw = self.config.patch_size
        return height // ph, width // pw

    def rope(self, positions, height: int, width: int, device, headings: torch.Tensor | None = None) -> torch.Tensor:
        """The RoPE rotations of frames at temporal `positions` (and, room-anchored, camera `headings` [B, F] in
        tokens) on a latent grid of height x width: [F*T, D/2], or [B, F*T, D/2] with headings."""
        if headings is not None and not self.room_anchored:
            raise ValueError("this model's width positions are screen columns: it takes no camera headings")
        return self.rope_axes.rotations(positions, *self.grid(height, width), device, headings=headings)

    def key_rotation(self, height: int, width: int):
        """A function (keys [B, n, T, H, D], frame positions, headings [B, n] or None) -> rotated keys [B, n*T, H, D]
        for the memory.

        The memory rotates every layer of a chunk at the same positions, so the rotations of the last
        positions asked for are kept and reused (one table per chunk instead of one per layer)."""
        last: dict = {}

        def rotate(keys: torch.Tensor, positions: Sequence[int], headings: torch.Tensor | None = None) -> torch.Tensor:
            key = (tuple(positions), keys.device, None if headings is None else id(headings))
            if key not in last or last[key][1] is not headings:
                last.clear()
                last[key] = (self.rope(positions, height, width, keys.device, headings), headings)
            return apply_rope(keys.flatten(1, 2), last[key][0])

        return rotate

    def embed_text(self, text: "torch.Tensor | CrossAttentionCache") -> torch.Tensor:
        if isinstance(text, torch.Tensor):
            return self.text_embedding(text.to(self.dtype))
        if text.embedded is None:
            text.embedded = self.text_embedding(text.text.to(self.dtype))
        return text.embedded

    def _embed_time(self, t: torch.Tensor):
        e = self.time_embedding(
            sinusoidal_embedding(self.config.freq_dim, t).to(self.time_embedding[0].weight.dtype)
        ).float()
        e0 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float()
        return e, e0.unflatten(-1, (6, self.config.dim))  # [B, F, dim], [B, F, 6, dim]

    def _embed_latents(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embedding(x.to(self.dtype))  # [B, dim, F, gh, gw]
        return h.flatten(3).transpose(1, 2).transpose(2, 3).float()  # [B, F, T, dim]

    def first_block_keys(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The first block's pre-RoPE keys [B, F*T, H, D] for latents x [B, C, F, H, W] at timesteps t ([B] or
        [B, F]): what any forward computes there, whatever it attends. No attention has run before them, so
        each frame's keys depend on that frame alone and a whole clip's are one cheap pass (the surprisal rule
        with `key_layers=first` reads them)."""
        if t.dim() == 1:
            t = t[:, None].expand(x.shape[0], x.shape[2])
        return self.blocks[0].keys(self._embed_latents(x), self._embed_time(t)[1])

    def _unpatchify(self, out: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        b, f = out.shape[:2]
        pt, ph, pw = self.config.patch_size
        out = out.reshape(b, f, gh, gw, pt, ph, pw, self.config.out_dim)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, self.config.out_dim, f * pt, gh * ph, gw * pw)

    # -- forward -----------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: "torch.Tensor | CrossAttentionCache",
        *,
        memory: "ContextMemory | None" = None,
        commit: bool = False,
        flow: bool = True,
        positions: Sequence[int] | None = None,
        headings: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Predict the flow (noise - x0) for latents x [B, C, F, H, W] at per-frame timesteps t [B, F].

        With `memory`, x is the memory's current chunk: positions (and camera headings) come from the memory,
        each layer's self-attention reads its context, and a `commit` pass stores this chunk's keys/values; a
        commit pass with `flow=False` returns None and skips what only the flow needs (the last layer after its
        keys and values are handed over, and the head): the memory it writes is the same.
        Without it, x is a whole clip with frame `positions` (default 0..F-1) and, for a room-anchored model,
        camera `headings` [B, F] in tokens (default: 0), under `frame_mask` (default: full attention).
        """
        b, _, f, height, width = x.shape
        gh, gw = self.grid(height, width)
        tokens_per_frame = gh * gw
        if t.dim() == 1:
            t = t[:, None].expand(b, f)
        step = None  # the pass over the memory, which places the chunk and hands each layer what it attends
        if memory is not None:
            step = memory.begin_pass(commit)
            positions, headings = step.positions, step.headings
        elif positions is None:
            positions = range(f)
        freqs = self.rope(positions, height, width, x.device, headings)
        inputs = AttentionInputs(freqs, tokens_per_frame, frame_mask, self.attention_backend)
        # A cross-attention cache is for inference: training passes the text tensor (VideoStream(trainable=True)),
        # since a cached projection would carry a stale graph or cut the text weights out of the gradient.
        text_cache = None if isinstance(text, torch.Tensor) else text
        text_emb = self.embed_text(text)

        if not flow and not (commit and memory is not None):
            raise ValueError("flow=False is for a commit pass into a memory (its output is the memory it writes)")
        h = self._embed_latents(x)
        e, e0 = self._embed_time(t)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            text_kv = text_cache.key_values.get(i) if text_cache is not None else None
            args = (h, e0, text_emb, inputs, step, i, text_kv, not flow and i == last)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h, text_kv = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                h, text_kv = block(*args)
            if text_cache is not None and text_kv is not None:
                text_cache.key_values[i] = text_kv
        return self._unpatchify(self.head(h, e), gh, gw) if flow else None

    def forward_with_context(
        self,
        target: torch.Tensor,
        t_target: torch.Tensor,
        text,
        context: torch.Tensor,
        context_positions: Sequence[int],
        target_positions: Sequence[int],
        t_context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        context_headings: torch.Tensor | None = None,
        target_headings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mode (c): denoise a target window that attends to a clean context laid out like the memory.

        context [B, C, Fc, H, W] at `context_positions` (e.g. sink, slow, fast as the student's memory
        places them), target [B, C, Ft, H, W] at `target_positions`; a room-anchored model also takes each
        frame's camera heading ([B, Fc] and [B, Ft], tokens). Returns the target's flow prediction.
        """
        b, fc = context.shape[0], context.shape[2]
        ft = target.shape[2]
        if t_context is None:
            t_context = torch.zeros(b, fc, device=target.device, dtype=t_target.dtype)
        if t_target.dim() == 1:
            t_target = t_target[:, None].expand(b, ft)
        mask = context_target_mask(fc, ft, context_mask, device=target.device)
        headings = None
        if context_headings is not None or target_headings is not None:
            headings = torch.cat(
                [_headings_or_zeros(context_headings, b, fc), _headings_or_zeros(target_headings, b, ft)], 1
            )
        out = self(
            torch.cat([context, target], dim=2),
            torch.cat([t_context, t_target], dim=1),
            text,
            positions=list(context_positions) + list(target_positions),
            headings=headings,
            frame_mask=mask,
        )
        return out[:, :, fc:]


def _headings_or_zeros(headings: torch.Tensor | None, batch: int, frames: int) -> torch.Tensor:
    return torch.zeros(batch, frames, dtype=torch.float64) if headings is None else headings.to(torch.float64)


def build_model(cfg: ModelConfig, *, device=None, dtype=torch.float32, seed: int | None = None) -> CausalWanModel:
    """A randomly initialised model (seeded), as the CLI's --random-init uses."""
    if seed is not None:
        torch.manual_seed(seed)
    return CausalWanModel(cfg).to(device=device, dtype=dtype).eval()
