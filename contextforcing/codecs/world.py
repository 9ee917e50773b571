"""A small learned video codec for the synthetic world (docs/world.md), shipped with the package.

Strides as Wan's VAE: `stride_hw = 8` (64x64 pixels -> 8x8 latents) and `stride_t = 4`, where the first
latent frame of a stream is one pixel frame and every later one four. Each latent frame is coded on its
own: the encoder sees the 4 pixel frames of a latent frame stacked as 12 channels (the first frame of a
stream repeated 4 times), the decoder turns one 16x8x8 latent into those 4 frames (of which the first
latent frame of a stream keeps one). So the codec has no temporal state, and decoding a stream chunk by
chunk equals decoding it at once, trivially.

Latents are normalised per channel with the mean/std measured on training clips (stored with the
weights, as Wan's VAE ships its statistics): `encode` returns `(z - mean) / std`, the decoder takes those.

`load_world_codec()` loads `contextforcing/assets/world_codec.safetensors` (trained on the occlusion world;
weights, config and latent statistics in the safetensors metadata); `load_world_codec(PANORAMA_PATH)`
the codec trained on the panorama world (same architecture). Training: `contextforcing.training.world_codec`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from contextforcing.errors import UserError

FORMAT = "contextforcing.world_codec/1"
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "assets" / "world_codec.safetensors"  # occlusion world
PANORAMA_PATH = DEFAULT_PATH.with_name("panorama_codec.safetensors")  # the panorama world's codec
DEFAULT_CONFIG = {
    "latent_channels": 16,
    "stride_t": 4,
    "stride_hw": 8,
    "enc_channels": [16, 32, 48, 64],
    "dec_channels": [80, 48, 24, 16],
}
BLOCK = 4  # latent frames per forward pass, zero-padded: every frame goes through the same batch shape, so
# results do not depend on how a stream is chunked (a conv's float rounding can depend on the batch size)


def _blocked(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`net` over x [N, ...] in zero-padded batches of exactly BLOCK items."""
    outs = []
    for i in range(0, len(x), BLOCK):
        part = x[i : i + BLOCK]
        if len(part) < BLOCK:
            part = torch.cat([part, part.new_zeros(BLOCK - len(part), *part.shape[1:])])
        outs.append(net(part)[: min(BLOCK, len(x) - i)])
    return torch.cat(outs) if outs else net(x)


class _Res(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.a = nn.Conv2d(ch, ch, 3, padding=1)
        self.b = nn.Conv2d(ch, ch, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.b(self.act(self.a(self.act(x))))


def _up(cin: int, cout: int) -> nn.Module:
    """x2 upsampling by sub-pixel convolution (1x1 conv to 4 * cout channels, then pixel shuffle)."""
    return nn.Sequential(nn.Conv2d(cin, 4 * cout, 1), nn.PixelShuffle(2))


class WorldEncoder(nn.Module):
    """[N, 3 * stride_t, 64, 64] (one latent frame's pixel frames) -> [N, C, 8, 8].

    Two paths summed at 8x8: a linear patch embedding (each 8x8 pixel block of the 4 frames, as ViT's) and
    a small strided conv stack that sees across block edges.
    """

    def __init__(self, frames: int, latent_channels: int, ch: list[int], stride_hw: int = 8):
        super().__init__()
        c0, c1, c2, c3 = ch
        act = nn.SiLU
        self.patch = nn.Sequential(nn.PixelUnshuffle(stride_hw), nn.Conv2d(3 * frames * stride_hw**2, c3, 1))
        self.conv = nn.Sequential(
            nn.Conv2d(3 * frames, c0, 3, padding=1),
            act(),
            nn.Conv2d(c0, c1, 4, stride=2, padding=1),
            act(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            act(),
            nn.Conv2d(c2, c3, 4, stride=2, padding=1),
        )
        self.head = nn.Sequential(act(), nn.Conv2d(c3, c3, 3, padding=1), act(), nn.Conv2d(c3, latent_channels, 1))

    def forward(self, x):
        return self.head(self.patch(x) + self.conv(x))


class WorldDecoder(nn.Module):
    """[N, C, 8, 8] -> [N, 3 * stride_t, 64, 64] (unclamped; the codec clamps to [-1, 1]).

    A trunk at 8x8, then two paths summed at 64x64: a linear patch head (pixel shuffle of a 1x1 conv: flat
    blocks) and a sub-pixel conv stack that refines edges, shapes and the sprite.
    """

    def __init__(self, frames: int, latent_channels: int, ch: list[int], stride_hw: int = 8):
        super().__init__()
        c0, c1, c2, c3 = ch
        act = nn.SiLU
        self.trunk = nn.Sequential(nn.Conv2d(latent_channels, c0, 3, padding=1), _Res(c0), act())
        self.patch = nn.Sequential(nn.Conv2d(c0, 3 * frames * stride_hw**2, 1), nn.PixelShuffle(stride_hw))
        self.up = nn.Sequential(
            _up(c0, c1),
            nn.Conv2d(c1, c1, 3, padding=1),
            act(),
            _up(c1, c2),
            nn.Conv2d(c2, c2, 3, padding=1),
            act(),
            _up(c2, c3),
            nn.Conv2d(c3, 3 * frames, 3, padding=1),
        )

    def forward(self, z):
        h = self.trunk(z)
        return self.patch(h) + self.up(h)


class WorldCodecModel(nn.Module):
    """The trainable part: encoder, decoder and the latent statistics (buffers)."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = dict(DEFAULT_CONFIG, **(config or {}))
        c = self.config
        self.encoder = WorldEncoder(c["stride_t"], c["latent_channels"], c["enc_channels"], c["stride_hw"])
        self.decoder = WorldDecoder(c["stride_t"], c["latent_channels"], c["dec_channels"], c["stride_hw"])
        self.register_buffer("latent_mean", torch.zeros(c["latent_channels"]))
        self.register_buffer("latent_std", torch.ones(c["latent_channels"]))


def group_frames(video: torch.Tensor, stride_t: int) -> torch.Tensor:
    """video [B, 3, T, H, W] -> [B, F, 3 * stride_t, H, W], F = 1 + (T - 1) // stride_t.

    Latent frame 0 is pixel frame 0 repeated `stride_t` times; latent k > 0 holds frames
    stride_t*k - stride_t + 1 .. stride_t*k. Trailing frames that do not fill a latent frame are dropped.
    """
    b, c, t, h, w = video.shape
    f = 1 + (t - 1) // stride_t
    first = video[:, :, :1].expand(b, c, stride_t, h, w)
    rest = video[:, :, 1 : 1 + (f - 1) * stride_t]
    x = torch.cat([first, rest], dim=2).reshape(b, c, f, stride_t, h, w)
    return x.permute(0, 2, 3, 1, 4, 5).reshape(b, f, stride_t * c, h, w)


def ungroup_frames(x: torch.Tensor, stride_t: int) -> torch.Tensor:
    """[B, F, 3 * stride_t, H, W] -> [B, 3, F * stride_t, H, W] (all frames of each latent frame)."""
    b, f, _, h, w = x.shape
    x = x.reshape(b, f, stride_t, 3, h, w).permute(0, 3, 1, 2, 4, 5)
    return x.reshape(b, 3, f * stride_t, h, w)


class WorldCodec:
    """The video-codec interface (`contextforcing.codecs`) around a trained `WorldCodecModel`."""

    def __init__(self, model: WorldCodecModel, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        c = model.config
        self.latent_channels, self.stride_t, self.stride_hw = c["latent_channels"], c["stride_t"], c["stride_hw"]

    def _check(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[2] < 1:
            raise UserError(f"the world codec encodes video [B, 3, T, H, W], got shape {tuple(video.shape)}")
        if video.shape[3] % self.stride_hw or video.shape[4] % self.stride_hw:
            raise UserError(
                f"the world codec needs H and W divisible by {self.stride_hw}, got {tuple(video.shape[3:])}"
            )

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> normalised latents [B, C, 1 + (T-1)//4, H/8, W/8]."""
        self._check(video)
        groups = group_frames(video.to(self.device, torch.float32), self.stride_t)
        b, f = groups.shape[:2]
        flat = groups.reshape(b * f, *groups.shape[2:])
        z = _blocked(self.model.encoder, flat)
        z = (z - self.model.latent_mean[:, None, None]) / self.model.latent_std[:, None, None]
        return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode_groups(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, F, h, w] -> all stride_t frames of every latent frame [B, 3, 4F, H, W]."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise UserError(
                f"the world codec decodes latents [B, {self.latent_channels}, F, h, w], "
                f"got shape {tuple(latents.shape)}"
            )
        b, c, f, h, w = latents.shape
        z = latents.to(self.device, torch.float32).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        z = z * self.model.latent_std[:, None, None] + self.model.latent_mean[:, None, None]
        x = _blocked(self.model.decoder, z)
        x = x.clamp(-1, 1).reshape(b, f, *x.shape[1:])
        return ungroup_frames(x, self.stride_t)

    def stream_decoder(self) -> "WorldStreamDecoder":
        return WorldStreamDecoder(self)

    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames [T, H, W, 3] -> normalised latents [1, C, F, H/8, W/8] (float32)."""
        return self.encode(torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1).float()

    def round_trip(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames [T, H, W, 3] encoded and decoded, as a model's latents would be shown (uint8)."""
        decoded = self.stream_decoder().decode(self.encode_frames(frames))[0]
        return ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


class WorldStreamDecoder:
    """Decodes a latent stream in chunks: the first latent frame gives 1 pixel frame, later ones 4 each."""

    def __init__(self, codec: WorldCodec):
        self.codec = codec
        self.started = False

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, F, h, w] -> video [B, 3, T', H, W] in [-1, 1]."""
        video = self.codec.decode_groups(latents)
        if not self.started and latents.shape[2] > 0:
            self.started = True
            video = video[:, :, self.codec.stride_t - 1 :]  # latent 0: its frames are copies of frame 0
        return video


def save_world_codec(model: WorldCodecModel, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Weights + config (+ `extra`, e.g. training notes) as safetensors metadata, written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config), "extra": json.dumps(extra or {})}
    tmp = path.with_name(path.name + ".partial")
    save_file(state, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)  # a package asset: readable by everyone
    os.replace(tmp, path)


def load_world_codec(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> WorldCodec:
    """The shipped world codec (or the one at `path`); a one-line `UserError` when missing or corrupt."""
    from safetensors import safe_open

    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise UserError(
            f"world codec weights not found at {path} (train them with `python -m contextforcing.training.world_codec`)"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises several types for truncated/garbled files
        text = str(exc).strip().splitlines()
        raise UserError(
            f"{path}: corrupted or unreadable world codec file ({text[0] if text else type(exc).__name__})"
        ) from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a world codec file (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        model = WorldCodecModel(json.loads(meta["config"]))
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        text = str(exc).strip().splitlines()
        raise UserError(
            f"{path}: world codec weights do not match their config ({text[0] if text else exc!r})"
        ) from None
    return WorldCodec(model, device)
