"""Streams random latents through the Wan VAE's streaming decoder and prints memory per chunk.

Memory should be flat after the first chunks: the decoder carries only a couple of frames per causal conv.

    python scripts/stream_decode_memory.py                       # real Wan2.1 VAE shape, random weights
    python scripts/stream_decode_memory.py --wan-dir DIR --device cuda --dtype bfloat16 --latent-hw 60 104

On CPU the real shape is slow; the default latent size is small. Weights are random unless --wan-dir is given.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_codec(args):
    from contextforcing.codecs.loading import load_vae
    from contextforcing.codecs.wan_vae import WanVideoCodec

    dtype = getattr(torch, args.dtype)
    if args.wan_dir:
        return load_vae(args.wan_dir, args.device, dtype)
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan()  # Wan2.1's architecture, random weights
    return WanVideoCodec(torch.nn.Module.to(vae, args.device, dtype))  # plain .to: skips a diffusers warning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wan-dir", help="a Wan2.1 directory (or VAE file); default: random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--latent-hw", type=int, nargs=2, default=(4, 6), metavar=("H", "W"))
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--chunk-frames", type=int, default=3)
    args = parser.parse_args()

    codec = build_codec(args)
    decoder = codec.stream_decoder()
    cuda = torch.device(args.device).type == "cuda"
    header = f"{'chunk':>5} {'frames':>6} {'sec':>7} {'rss MiB':>8} {'peak rss':>8}"
    print(header + (f" {'gpu peak MiB':>12}" if cuda else ""))
    for i in range(args.chunks):
        latents = torch.randn(1, codec.latent_channels, args.chunk_frames, *args.latent_hw, device=args.device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        video = decoder.decode(latents).cpu()
        seconds = time.perf_counter() - start
        line = f"{i:>5} {video.shape[2]:>6} {seconds:>7.3f} {current_rss_mib():>8.1f} {peak_rss_mib():>8.1f}"
        if cuda:
            line += f" {torch.cuda.max_memory_allocated() / 2**20:>12.1f}"
        print(line, flush=True)
        del video


if __name__ == "__main__":
    main()
