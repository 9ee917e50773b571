"""Wan's 3D rotary position embedding, computed on the fly for explicit frame positions.

The head dimension is split into a temporal part and two equal spatial parts: height and width get
2 * (head_dim // 6) dims each, time gets the rest (44/42/42 for head_dim 128). Angles are computed in
float64 as Wan does. Positions are arbitrary integers chosen by the caller (the context memory picks
them at read time), so there is no table and no 1024-frame wall.
"""

from __future__ import annotations

from typing import Sequence

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(temporal, height, width) real dims of the head dimension."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def axis_frequencies(dims: int, theta: float, device=None) -> torch.Tensor:
    """Inverse frequencies of one axis: theta^(-2i/dims) for i < dims/2, float64."""
    return 1.0 / theta ** (torch.arange(0, dims, 2, dtype=torch.float64, device=device) / dims)


def rope_frequencies(
    frame_positions: Sequence[int] | torch.Tensor, height: int, width: int, head_dim: int, theta: float, device=None
) -> torch.Tensor:
    """Complex rotations for tokens laid out frame-major, then row, then column.

    Returns complex128 [len(frame_positions) * height * width, head_dim // 2].
    """
    dt, dh, dw = rope_split(head_dim)
    frames = torch.as_tensor(frame_positions, dtype=torch.float64, device=device).reshape(-1)
    angle_t = torch.outer(frames, axis_frequencies(dt, theta, device))  # [F, dt/2]
    angle_h = torch.outer(torch.arange(height, dtype=torch.float64, device=device), axis_frequencies(dh, theta, device))
    angle_w = torch.outer(torch.arange(width, dtype=torch.float64, device=device), axis_frequencies(dw, theta, device))
    n_f = frames.numel()
    angles = torch.cat(
        [
            angle_t[:, None, None, :].expand(n_f, height, width, -1),
            angle_h[None, :, None, :].expand(n_f, height, width, -1),
            angle_w[None, None, :, :].expand(n_f, height, width, -1),
        ],
        dim=-1,
    )  # [F, h, w, head_dim/2]
    return torch.polar(torch.ones_like(angles), angles).reshape(n_f * height * width, -1)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, L, H, D] by freqs [L, D/2] (adjacent pairs are the complex numbers), in float64."""
    b, length, heads, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, length, heads, d // 2, 2))
    return torch.view_as_real(xc * freqs[None, :, None, :]).reshape(b, length, heads, d).to(x.dtype)
