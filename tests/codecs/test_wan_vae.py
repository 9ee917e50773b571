"""Wan VAE: both file layouts load the same weights; streaming decode equals diffusers' one-shot decode."""

from __future__ import annotations

import pytest
import torch

from contextforcing.codecs.loading import DIFFUSERS, ORIGINAL, WAN_VAE_CHECKPOINT, load_vae, vae_layout
from contextforcing.codecs.wan_vae import (
    WanVideoCodec,
    diffusers_to_original_key,
    load_vae_original,
    vae_config_from_original,
    vae_to_original,
    wan21_latent_stats,
)
from contextforcing.errors import UserError

STREAM_TOL = 1e-5  # float32: chunked convs differ from frame-by-frame ones only in summation order
Z_DIM = 16  # the tiny test VAE keeps Wan2.1's latent width (see conftest)
LATENT_HW = (2, 3)  # 16x24 pixels: small enough that a dozen latent frames decode in well under a second


@pytest.fixture(scope="module")
def vae_dirs(tmp_path_factory, tiny_vae):
    original = tmp_path_factory.mktemp("wan_original")
    torch.save(vae_to_original(tiny_vae), original / WAN_VAE_CHECKPOINT)
    diffusers = tmp_path_factory.mktemp("wan_diffusers")
    tiny_vae.save_pretrained(diffusers / "vae")
    return {ORIGINAL: original, DIFFUSERS: diffusers}


def _latents(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, Z_DIM, frames, *LATENT_HW, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", [ORIGINAL, DIFFUSERS])
def test_both_layouts_load_identical_weights(vae_dirs, tiny_vae, layout):
    assert vae_layout(vae_dirs[layout]) == layout
    codec = load_vae(vae_dirs[layout])
    loaded, source = codec.vae.state_dict(), tiny_vae.state_dict()
    assert loaded.keys() == source.keys()
    assert all(torch.equal(loaded[k], source[k]) for k in source)
    for field in (
        "base_dim",
        "z_dim",
        "dim_mult",
        "num_res_blocks",
        "temperal_downsample",
        "latents_mean",
        "latents_std",
    ):
        assert str(codec.vae.config[field]) == str(tiny_vae.config[field]), field
    assert (codec.latent_channels, codec.stride_t, codec.stride_hw) == (16, 4, 8)


def test_load_vae_accepts_a_weight_file(vae_dirs):
    codec = load_vae(vae_dirs[ORIGINAL] / WAN_VAE_CHECKPOINT, dtype=torch.bfloat16)
    assert codec.dtype == torch.bfloat16


def test_key_mapping_agrees_with_diffusers_converter_on_the_real_wan21_vae():
    """On the real architecture our (structure-aware) mapping names every key as diffusers' converter does."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):
        real = AutoencoderKLWan()  # defaults are Wan2.1's VAE
    blocks = real.config.num_res_blocks
    # Values are the diffusers names, so the converter's output shows where each original key landed.
    original = {diffusers_to_original_key(k, blocks): k for k in real.state_dict()}
    converted = convert_wan_vae_to_diffusers(original)
    assert len(converted) == len(original)
    assert all(new == expected for new, expected in converted.items())


def test_architecture_is_read_from_original_shapes():
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        real = AutoencoderKLWan()
    config = vae_config_from_original(vae_to_original(real))
    assert config["base_dim"] == 96 and config["z_dim"] == 16 and config["num_res_blocks"] == 2
    assert config["dim_mult"] == [1, 2, 4, 4] and config["temperal_downsample"] == [False, True, True]
    assert config["decoder_base_dim"] is None


@pytest.mark.parametrize(
    "chunks, frames_per_call",
    [([3, 3, 3, 3], None), ([1, 2, 4, 1, 3], None), ([3, 3, 3], 1)],
)
def test_streaming_decode_equals_one_shot_decode(tiny_vae, chunks, frames_per_call):
    codec = WanVideoCodec(tiny_vae)
    latents = _latents(sum(chunks))
    # The reference is diffusers' own decode of the whole latent video (it un-normalises like Wan's pipeline).
    reference = tiny_vae.decode(codec.denormalize(latents)).sample
    assert (reference.abs() < 1).float().mean() > 0.5, "test weights saturate the output clamp"

    decoder = codec.stream_decoder(frames_per_call)
    outputs, start = [], 0
    for n in chunks:
        outputs.append(decoder.decode(latents[:, :, start : start + n]))
        expected_frames = codec.stride_t * n - (codec.stride_t - 1 if start == 0 else 0)
        assert outputs[-1].shape[2] == expected_frames  # the stream's first latent frame gives one pixel frame
        start += n
    streamed = torch.cat(outputs, dim=2)
    assert streamed.shape == reference.shape == (1, 3, 1 + 4 * (sum(chunks) - 1), 16, 24)
    diff = (streamed - reference).abs().max().item()
    print(f"chunks={chunks} frames_per_call={frames_per_call}: max |stream - one-shot| = {diff:.2e}")
    assert diff <= (0.0 if frames_per_call == 1 else STREAM_TOL)  # frame by frame is diffusers' own schedule


def test_stream_state_does_not_grow(tiny_vae):
    """Flat memory: after the first chunks the carried cache has a fixed size however long the stream."""
    decoder = WanVideoCodec(tiny_vae).stream_decoder()
    sizes = []
    for i in range(6):
        decoder.decode(_latents(3, seed=i))
        sizes.append(sum(t.numel() for t in decoder._cache if isinstance(t, torch.Tensor)))
    assert len(set(sizes[1:])) == 1, sizes
    decoder.reset()
    assert decoder.decode(_latents(3)).shape[2] == 9  # a reset stream starts over with its 1-frame head


def test_encode_gives_normalised_posterior_mean(tiny_vae):
    codec = WanVideoCodec(tiny_vae)
    video = torch.rand(2, 3, 9, 16, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (2, 16, 3, 2, 3)
    mean, std = (torch.tensor(s).view(1, -1, 1, 1, 1) for s in wan21_latent_stats())
    expected = (tiny_vae.encode(video).latent_dist.mode() - mean) / std
    torch.testing.assert_close(latents, expected)
    # Frames that do not fill a latent frame are dropped; a single image is a 1-frame video.
    torch.testing.assert_close(codec.encode(torch.cat([video, video[:, :, :2]], dim=2)), latents)
    assert codec.encode(video[:, :, :1]).shape == (2, 16, 1, 2, 3)
    with pytest.raises(UserError, match="multiple of the VAE stride"):
        codec.encode(video[:, :, :, :12])


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(UserError, match="not found") as err:
        load_vae(tmp_path / "nope")
    _one_line(err)
    with pytest.raises(UserError, match="no VAE found") as err:
        load_vae(tmp_path)
    assert WAN_VAE_CHECKPOINT in _one_line(err)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no diffusion_pytorch_model.safetensors"):
        load_vae(tmp_path)


def test_corrupted_files(vae_dirs, tmp_path):
    import shutil

    bad = tmp_path / "diffusers"
    shutil.copytree(vae_dirs[DIFFUSERS], bad)
    weights = bad / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="corrupted or unreadable safetensors") as err:
        load_vae(bad)
    _one_line(err)
    pth = tmp_path / WAN_VAE_CHECKPOINT
    pth.write_bytes((vae_dirs[ORIGINAL] / WAN_VAE_CHECKPOINT).read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupted or unreadable checkpoint") as err:
        load_vae(tmp_path, layout=ORIGINAL)
    _one_line(err)


def test_missing_and_misshaped_weights_are_named(tiny_vae, tmp_path):
    state = vae_to_original(tiny_vae)
    missing = dict(state)
    del missing["decoder.upsamples.4.residual.2.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(UserError, match="missing 1 weight") as err:
        load_vae(tmp_path / "missing.pth")
    assert "decoder.upsamples.4.residual.2.weight" in _one_line(err)  # named as in the user's file
    wrong = dict(state)
    wrong["decoder.upsamples.4.residual.2.bias"] = torch.zeros(5)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="shape mismatch.*expected \\[8\\] found \\[5\\]") as err:
        load_vae(tmp_path / "wrong.pth")
    _one_line(err)


def test_original_layout_with_other_latent_width_needs_statistics(make_tiny_vae, tmp_path):
    vae = make_tiny_vae(seed=4, z_dim=4)
    torch.save(vae_to_original(vae), tmp_path / WAN_VAE_CHECKPOINT)
    with pytest.raises(UserError, match="pass latents_mean/latents_std"):
        load_vae(tmp_path)
    codec = load_vae_original(tmp_path / WAN_VAE_CHECKPOINT, latents_mean=[0.0] * 4, latents_std=[2.0] * 4)
    assert codec.latent_channels == 4 and codec.std.flatten().tolist() == [2.0] * 4
