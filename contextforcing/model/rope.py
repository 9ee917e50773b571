"""Wan's 3D rotary position embedding, computed on the fly for explicit frame positions.

The head dimension is split into a temporal part and two equal spatial parts: height and width get
2 * (head_dim // 6) dims each, time gets the rest (44/42/42 for head_dim 128). Angles are computed in
float64 as Wan does. Positions are arbitrary integers chosen by the caller (the context memory picks
them at read time), so there is no position table (a model keeps only its axes' frequencies, `RopeAxes`)
and no 1024-frame wall.

Width positions are screen columns (Wan), or with a room-anchored model (`ModelConfig.rope_width = "room"`)
the column plus the camera's heading of each frame, per sample (`headings` [B, F], in tokens, may be
fractional): the width frequencies are then the first harmonics of the room's circumference, so position
p and p + room_tokens rotate alike and a wall keeps its position however the camera turned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(temporal, height, width) real dims of the head dimension."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def axis_frequencies(dims: int, theta: float, device=None) -> torch.Tensor:
    """Inverse frequencies of one axis: theta^(-2i/dims) for i < dims/2, float64."""
    return 1.0 / theta ** (torch.arange(0, dims, 2, dtype=torch.float64, device=device) / dims)


def room_frequencies(dims: int, room_tokens: int, device=None) -> torch.Tensor:
    """Angular frequencies of a width axis that wraps every `room_tokens` tokens: 2 pi k / room_tokens for the
    harmonics k = 1 .. dims/2 (the lowest ones: neighbouring positions stay alike, every offset differs)."""
    k = torch.arange(1, dims // 2 + 1, dtype=torch.float64, device=device)
    return 2 * math.pi * k / room_tokens


@dataclass(frozen=True)
class RopeAxes:
    """The inverse frequencies of the three axes: a model's are resolved once, at its construction, and every pass
    only places positions on them (`rotations`). Kept as host floats (the float64 values, exactly), not as
    buffers: `model.to(dtype)` would cast a buffer, and a model built on the meta device or moved between devices
    has nothing to move. They are made a tensor once per device a pass runs on (`_on_device`): a tensor built from
    host values is a synchronous host-to-device copy, which must not happen on every pass."""

    time: tuple[float, ...]  # dt/2 of them
    height: tuple[float, ...]  # dh/2
    width: tuple[float, ...]  # dw/2: Wan's, or the room's harmonics
    _on_device: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # device -> the three

    @classmethod
    def of(cls, head_dim: int, theta: float, room_tokens: int = 0) -> "RopeAxes":
        """`room_tokens` > 0: width frequencies wrap around a room of that many tokens (`room_frequencies`);
        0: Wan's."""
        dt, dh, dw = rope_split(head_dim)
        host = "cpu"  # explicitly: a model built on the meta device (loading) still needs real frequencies
        width = room_frequencies(dw, room_tokens, host) if room_tokens else axis_frequencies(dw, theta, host)
        axes = (axis_frequencies(dt, theta, host), axis_frequencies(dh, theta, host), width)
        return cls(*(tuple(f.tolist()) for f in axes))

    def rotations(
        self,
        frame_positions: Sequence[int] | torch.Tensor,
        height: int,
        width: int,
        device=None,
        *,
        headings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Complex rotations for tokens laid out frame-major, then row, then column.

        Returns complex128 [len(frame_positions) * height * width, head_dim // 2], or with `headings` ([B, F]
        width offsets in tokens) [B, F * height * width, head_dim // 2].
        """
        frames = torch.as_tensor(frame_positions, dtype=torch.float64, device=device).reshape(-1)
        n_f = frames.numel()
        if device not in self._on_device:
            axes = (self.time, self.height, self.width)
            self._on_device[device] = tuple(torch.tensor(f, dtype=torch.float64, device=device) for f in axes)
        freq_t, freq_h, freq_w = self._on_device[device]
        angle_t = torch.outer(frames, freq_t)  # [F, dt/2]
        angle_h = torch.outer(torch.arange(height, dtype=torch.float64, device=device), freq_h)
        columns = torch.arange(width, dtype=torch.float64, device=device)
        if headings is None:
            angle_w = torch.outer(columns, freq_w)[None, None, None]  # [1, 1, 1, w, dw/2]
            batch = ()
        else:
            place = headings.to(device=device, dtype=torch.float64)[:, :, None] + columns  # [B, F, w]
            angle_w = (place[..., None] * freq_w)[:, :, None]  # [B, F, 1, w, dw/2]
            batch = (headings.shape[0],)
        shape = (*batch, n_f, height, width)
        angles = torch.cat(
            [
                angle_t[:, None, None, :].expand(*shape, -1),
                angle_h[None, :, None, :].expand(*shape, -1),
                angle_w.expand(*shape, -1) if batch else angle_w[0, 0].expand(*shape, -1),
            ],
            dim=-1,
        )  # [(B,) F, h, w, head_dim/2]
        return torch.polar(torch.ones_like(angles), angles).reshape(*batch, n_f * height * width, -1)


def rope_frequencies(
    frame_positions: Sequence[int] | torch.Tensor,
    height: int,
    width: int,
    head_dim: int,
    theta: float,
    device=None,
    *,
    headings: torch.Tensor | None = None,
    room_tokens: int = 0,
) -> torch.Tensor:
    """The rotations of `RopeAxes.of(head_dim, theta, room_tokens)` in one call (a model keeps its axes)."""
    return RopeAxes.of(head_dim, theta, room_tokens).rotations(
        frame_positions, height, width, device, headings=headings
    )


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, L, H, D] by freqs [L, D/2] or per sample [B, L, D/2] (adjacent pairs are the complex
    numbers), in float64."""
    b, length, heads, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, length, heads, d // 2, 2))
    rotation = freqs[None, :, None, :] if freqs.dim() == 2 else freqs[:, :, None, :]
    return torch.view_as_real(xc * rotation).reshape(b, length, heads, d).to(x.dtype)
