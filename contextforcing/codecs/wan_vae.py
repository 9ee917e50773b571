"""The Wan2.1 VAE through diffusers' `AutoencoderKLWan`, with Wan's latent normalisation and a streaming decoder.

Layouts:
- original Wan2.1 `Wan2.1_VAE.pth`: the state dict of Wan's own `WanVAE_` (names like
  `decoder.upsamples.4.residual.2.weight`); the architecture is read off the tensor shapes;
- diffusers `vae/`: `config.json` + `diffusion_pytorch_model.safetensors`.

The DiT works on normalised latents `(z - mean) / std` with Wan's fixed per-channel statistics; this codec
takes and returns those.

Streaming: Wan's decoder is causal in time. Each causal conv keeps the last input frames it saw (a
"feature cache"), so latent frames can be decoded a few at a time. diffusers' `decode` resets that cache
on every call, so `WanStreamDecoder` drives the decoder modules itself and keeps the cache between calls:
decoding a stream chunk by chunk gives the same frames as decoding it in one go, in constant memory.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

from contextforcing.errors import UserError
from contextforcing.io.weights import check_names, find_safetensors, load_strict, read_state_dict


def wan21_latent_stats() -> tuple[list[float], list[float]]:
    """Wan2.1's fixed 16-channel latent mean and std: diffusers' `AutoencoderKLWan` defaults are those values."""
    params = inspect.signature(AutoencoderKLWan.__init__).parameters
    return list(params["latents_mean"].default), list(params["latents_std"].default)


# ---------------------------------------------------------------------------------------------------------
# Key names: diffusers <-> original Wan2.1. One function (diffusers -> original) is the single source of
# truth; the other direction is built from it over the model's own key list.

_RESNET_LEAF = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
_RESNET = r"(?P<leaf>norm1|conv1|norm2|conv2|conv_shortcut)\.(?P<param>\w+)"
_STATIC = {
    "quant_conv": "conv1",
    "post_quant_conv": "conv2",
    "encoder.conv_in": "encoder.conv1",
    "decoder.conv_in": "decoder.conv1",
    "encoder.norm_out": "encoder.head.0",
    "decoder.norm_out": "decoder.head.0",
    "encoder.conv_out": "encoder.head.2",
    "decoder.conv_out": "decoder.head.2",
    "encoder.mid_block.attentions.0": "encoder.middle.1",
    "decoder.mid_block.attentions.0": "decoder.middle.1",
}


def _resnet(prefix: str, match: re.Match) -> str:
    return f"{prefix}.{_RESNET_LEAF[match['leaf']]}.{match['param']}"


def diffusers_to_original_key(key: str, num_res_blocks: int) -> str:
    """A diffusers `AutoencoderKLWan` (Wan2.1 variant) key -> the original Wan2.1 VAE key.

    The original decoder is one flat `upsamples` list: per level, `num_res_blocks + 1` residual blocks then
    (except after the last level) one resample block; diffusers groups the same modules per level.
    """
    for prefix, original in _STATIC.items():
        if key.startswith(prefix + "."):
            return original + key[len(prefix) :]
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\." + _RESNET, key):
        return _resnet(f"{m[1]}.middle.{2 * int(m[2])}", m)  # middle = [resnet, attention, resnet]
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\." + _RESNET, key):
        return _resnet(f"encoder.downsamples.{m[1]}", m)
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.((?:resample|time_conv)\..+)", key):
        return f"encoder.downsamples.{m[1]}.{m[2]}"
    per_level = num_res_blocks + 2  # residual blocks + the resample block
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\." + _RESNET, key):
        return _resnet(f"decoder.upsamples.{int(m[1]) * per_level + int(m[2])}", m)
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.upsamples.{int(m[1]) * per_level + num_res_blocks + 1}.{m[2]}"
    raise ValueError(f"no original Wan2.1 name for VAE key {key!r}")


def vae_to_original(vae: AutoencoderKLWan) -> dict[str, torch.Tensor]:
    """The VAE's weights under original Wan2.1 `Wan2.1_VAE.pth` names."""
    blocks = vae.config.num_res_blocks
    return {diffusers_to_original_key(k, blocks): v for k, v in vae.state_dict().items()}


def original_to_diffusers(state: Mapping[str, torch.Tensor], vae: AutoencoderKLWan, source: str) -> dict:
    """Renames an original Wan2.1 VAE state dict to `vae`'s (diffusers) names; errors use the original names."""
    blocks = vae.config.num_res_blocks
    to_diffusers = {diffusers_to_original_key(k, blocks): k for k in vae.state_dict()}
    check_names(to_diffusers, state, source)
    return {to_diffusers[k]: v for k, v in state.items()}


def vae_config_from_original(state: Mapping[str, torch.Tensor], source: str = "VAE checkpoint") -> dict:
    """Reads the `AutoencoderKLWan` architecture off an original Wan2.1 VAE state dict (any size)."""
    try:
        base_dim, in_channels = state["encoder.conv1.weight"].shape[:2]
        z_dim = state["conv2.weight"].shape[0]
        out_channels = state["decoder.head.2.weight"].shape[0]
        decoder_out_dim = state["decoder.head.0.gamma"].shape[0]
    except KeyError as exc:
        raise UserError(f"{source}: missing weight {exc.args[0]!r}; not a Wan2.1 VAE checkpoint") from None
    # The encoder's flat `downsamples` list: residual blocks per level, a resample block between levels.
    indices = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.downsamples.")})
    levels: list[list[int]] = [[]]  # output width of each residual block, per level
    temporal: list[bool] = []
    for i in indices:
        prefix = f"encoder.downsamples.{i}"
        if f"{prefix}.residual.6.weight" in state:
            levels[-1].append(state[f"{prefix}.residual.6.weight"].shape[0])
        elif f"{prefix}.resample.1.weight" in state:
            temporal.append(f"{prefix}.time_conv.weight" in state)
            levels.append([])
        else:
            raise UserError(f"{source}: unsupported VAE block {prefix} (attention in down blocks?)")
    if not all(levels) or len({len(level) for level in levels}) != 1:
        raise UserError(f"{source}: irregular encoder blocks; not a Wan2.1 VAE checkpoint")
    dim_mult = [level[-1] // base_dim for level in levels]
    decoder_base_dim = decoder_out_dim // dim_mult[0]
    return dict(
        base_dim=base_dim,
        decoder_base_dim=None if decoder_base_dim == base_dim else decoder_base_dim,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=len(levels[0]),
        temperal_downsample=temporal,
        in_channels=in_channels,
        out_channels=out_channels,
    )


def _build_on_meta(config: dict) -> AutoencoderKLWan:
    with torch.device("meta"):
        return AutoencoderKLWan(**config)


def load_vae_original(
    path: Path,
    device="cpu",
    dtype=torch.float32,
    latents_mean: Sequence[float] | None = None,
    latents_std: Sequence[float] | None = None,
) -> "WanVideoCodec":
    """Original Wan2.1 `Wan2.1_VAE.pth` (or a `.safetensors` with the same names).

    The file carries no latent statistics: Wan2.1's 16-channel ones are used unless others are given.
    """
    path = Path(path)
    state = read_state_dict(path)
    config = vae_config_from_original(state, str(path))
    if latents_mean is None or latents_std is None:
        latents_mean, latents_std = wan21_latent_stats()
        if len(latents_mean) != config["z_dim"]:
            raise UserError(
                f"{path}: {config['z_dim']} latent channels, but Wan2.1's latent statistics have "
                f"{len(latents_mean)}; pass latents_mean/latents_std"
            )
    vae = _build_on_meta({**config, "latents_mean": list(latents_mean), "latents_std": list(latents_std)})
    load_strict(vae, original_to_diffusers(state, vae, str(path)), str(path), device, dtype)
    return WanVideoCodec(vae)


def load_vae_diffusers(folder: Path, device="cpu", dtype=torch.float32) -> "WanVideoCodec":
    """A diffusers `AutoencoderKLWan` folder: `config.json` + `diffusion_pytorch_model.safetensors`."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{folder}: no config.json")
    try:
        config = AutoencoderKLWan.load_config(str(folder), local_files_only=True)
        vae = _build_on_meta(AutoencoderKLWan.extract_init_dict(config)[0])
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{config_path}: not a valid AutoencoderKLWan config ({str(exc).splitlines()[0]})") from None
    weights = find_safetensors(folder, "diffusion_pytorch_model.safetensors")
    load_strict(vae, read_state_dict(weights), str(weights), device, dtype)
    return WanVideoCodec(vae)


# ---------------------------------------------------------------------------------------------------------


class WanVideoCodec:
    """The video-codec interface over a Wan2.1 `AutoencoderKLWan`; latents in and out are normalised."""

    def __init__(self, vae: AutoencoderKLWan):
        config = vae.config
        if config.is_residual or config.patch_size is not None:
            raise UserError("only the Wan2.1 VAE is supported (this config is the Wan2.2 residual variant)")
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = config.z_dim
        self.stride_t = 2 ** sum(config.temperal_downsample)  # each temporal downsample halves the frames
        self.stride_hw = 2 ** (len(config.dim_mult) - 1)  # every level but the last halves H and W
        shape = (1, config.z_dim, 1, 1, 1)
        param = next(vae.parameters())
        self.mean = torch.tensor(config.latents_mean, dtype=torch.float32, device=param.device).view(shape)
        self.std = torch.tensor(config.latents_std, dtype=torch.float32, device=param.device).view(shape)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z.float() - self.mean) / self.std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float() * self.std + self.mean

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> normalised latents [B, C, 1 + (T-1)//stride_t, H/s, W/s].

        The latent is the posterior mean, as Wan uses for image/video conditioning. Trailing frames that do
        not fill a whole latent frame (T-1 not a multiple of stride_t) are dropped.
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise UserError(f"expected a video [B, 3, T, H, W], got shape {list(video.shape)}")
        _, _, frames, height, width = video.shape
        if height % self.stride_hw or width % self.stride_hw:
            raise UserError(f"video size {height}x{width} is not a multiple of the VAE stride {self.stride_hw}")
        usable = 1 + (frames - 1) // self.stride_t * self.stride_t
        video = video[:, :, :usable].to(device=self.device, dtype=self.dtype)
        z = self.vae.encode(video).latent_dist.mode()
        return self.normalize(z).to(self.dtype)

    def stream_decoder(self, frames_per_call: int | None = None) -> "WanStreamDecoder":
        return WanStreamDecoder(self, frames_per_call)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """One-shot decode of a whole latent video (a fresh stream)."""
        return self.stream_decoder().decode(latents)


class WanStreamDecoder:
    """Decodes a latent stream chunk by chunk, carrying the decoder's causal-conv cache between calls.

    Like Wan's causal VAE, the first latent frame of a stream gives 1 pixel frame and each later one
    `stride_t`. Only the last couple of frames per causal conv are kept, so memory does not grow with
    the stream. `frames_per_call` bounds how many latent frames go through the decoder at once (None: a
    whole chunk); it trades peak memory for speed and does not change the result beyond float rounding.
    """

    def __init__(self, codec: WanVideoCodec, frames_per_call: int | None = None):
        if frames_per_call is not None and frames_per_call < 1:
            raise UserError(f"frames_per_call must be at least 1, got {frames_per_call}")
        self.codec, self.frames_per_call = codec, frames_per_call
        decoder = codec.vae.decoder
        # One slot per causal conv, in the order the decoder visits them (as diffusers' clear_cache sizes it).
        self._cache: list = [None] * sum(isinstance(m, WanCausalConv3d) for m in decoder.modules())
        self.latent_frames_seen = 0

    def reset(self) -> None:
        self._cache = [None] * len(self._cache)
        self.latent_frames_seen = 0

    def _run(self, x: torch.Tensor, first: bool) -> torch.Tensor:
        # `feat_idx` is the decoder's cursor into the cache; it restarts at 0 on every pass.
        return self.codec.vae.decoder(x, feat_cache=self._cache, feat_idx=[0], first_chunk=first)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, F, h, w] -> video [B, 3, T, H, W] in [-1, 1] (float32, on the VAE device)."""
        codec = self.codec
        if latents.ndim != 5 or latents.shape[1] != codec.latent_channels:
            raise UserError(f"expected latents [B, {codec.latent_channels}, F, h, w], got {list(latents.shape)}")
        z = codec.denormalize(latents.to(codec.device)).to(codec.dtype)
        x = codec.vae.post_quant_conv(z)  # a 1x1x1 conv: no temporal state
        outs = []
        if self.latent_frames_seen == 0 and x.shape[2]:
            # The first frame must pass alone: the temporal upsamplers treat the stream's first call specially.
            outs.append(self._run(x[:, :, :1], first=True))
            x = x[:, :, 1:]
        step = self.frames_per_call or max(1, x.shape[2])
        for start in range(0, x.shape[2], step):
            outs.append(self._run(x[:, :, start : start + step], first=False))
        self.latent_frames_seen += latents.shape[2]
        if not outs:
            b, _, _, h, w = latents.shape
            return torch.zeros(b, 3, 0, h * codec.stride_hw, w * codec.stride_hw, device=codec.device)
        return torch.cat(outs, dim=2).clamp(-1.0, 1.0).float()
