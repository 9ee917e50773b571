"""A weight-free preview codec with Wan's strides, for random-init presets.

It is not a learned VAE: latent channels 0-2 are shown as RGB, each latent cell becomes a
stride_hw x stride_hw block of pixels, and (like Wan's causal VAE) the first latent frame of a stream
gives one pixel frame and each later one gives `stride_t` frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PreviewCodec:
    def __init__(self, latent_channels: int, stride_t: int = 4, stride_hw: int = 8):
        self.latent_channels, self.stride_t, self.stride_hw = latent_channels, stride_t, stride_hw

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> latents [B, C, 1 + (T-1)//stride_t, H/s, W/s]."""
        b, _, t, h, w = video.shape
        frames = torch.cat([video[:, :, :1], video[:, :, 1 :: self.stride_t]], dim=2)[
            :, :, : 1 + (t - 1) // self.stride_t
        ]
        pooled = F.avg_pool3d(frames, (1, self.stride_hw, self.stride_hw))
        latents = torch.zeros(b, self.latent_channels, pooled.shape[2], *pooled.shape[3:], dtype=video.dtype)
        latents[:, :3] = pooled
        return latents

    def stream_decoder(self) -> "PreviewStreamDecoder":
        return PreviewStreamDecoder(self)


class PreviewStreamDecoder:
    def __init__(self, codec: PreviewCodec):
        self.codec = codec
        self.started = False

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, F, h, w] -> video [B, 3, T, H, W] in [-1, 1]."""
        s = self.codec.stride_hw
        rgb = latents[:, :3].float().clamp(-1, 1)
        rgb = rgb.repeat_interleave(s, dim=3).repeat_interleave(s, dim=4)
        repeats = torch.full((rgb.shape[2],), self.codec.stride_t, dtype=torch.long)
        if not self.started:
            repeats[0] = 1
            self.started = True
        return rgb.repeat_interleave(repeats.to(rgb.device), dim=2)
