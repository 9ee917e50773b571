"""Training data of the stages: prompts (DMD, CDMD, ODE pairs) and latent clips (context teacher).

Every sample is a pure function of (data seed, sample id), and micro-batch k of rank r holds samples
(k * world_size + r) * micro_batch + b, so `batches(rank, world_size, start)` can start anywhere (resume).

Sources:
  world    the synthetic world (contextforcing.data.world), encoded with the weight-free PreviewCodec;
           prompts are its grammar's training prompts (needs the tiny preset's 8x8 latent grid)
  smooth   procedural latent videos: a prompt "pattern k" picks a sum of drifting sinusoids (k < num_prompts)
  prompts  a text file, one prompt per line (VidProM for Wan-1.3B); prompts only, no clips
  latents  a directory of VAE-encoded clips (*.safetensors: tensor `latents` [C, F, H, W], metadata
           `prompt`), e.g. Sekai / UltraVideo encoded with the Wan VAE for the 1.3B context teacher
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from contextforcing.config import VideoConfig
from contextforcing.errors import UserError

SOURCES = ("world", "smooth", "prompts", "latents")


@dataclass(frozen=True)
class DataOptions:
    source: str = "world"
    prompts_file: str | None = None
    latents_dir: str | None = None
    num_prompts: int = 8  # smooth: distinct patterns
    modes: int = 3  # smooth: sinusoids per pattern
    seed: int = 0
    micro_batch: int = 1  # samples per micro-batch and rank

    def validate(self) -> "DataOptions":
        if self.source not in SOURCES:
            raise UserError(f"data.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "prompts" and not self.prompts_file:
            raise UserError("data.source prompts needs data.prompts_file")
        if self.source == "latents" and not self.latents_dir:
            raise UserError("data.source latents needs data.latents_dir")
        if self.micro_batch < 1:
            raise UserError(f"data.micro_batch must be at least 1, got {self.micro_batch}")
        return self


def sample_ids(rank: int, world_size: int, start: int, micro_batch: int) -> Iterator[list[int]]:
    """Sample ids of this rank's micro-batches from micro-batch `start` on, forever."""
    k = start
    while True:
        first = (k * world_size + rank) * micro_batch
        yield list(range(first, first + micro_batch))
        k += 1


class PromptSource:
    def __init__(self, options: DataOptions):
        self.options = options
        self.lines: list[str] | None = None
        if options.source == "prompts":
            path = Path(options.prompts_file)
            if not path.is_file():
                raise UserError(f"prompts file {path} does not exist")
            self.lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if not self.lines:
                raise UserError(f"prompts file {path} has no prompts")

    def prompt(self, sample: int) -> str:
        o = self.options
        if self.lines is not None:
            return self.lines[(sample + o.seed) % len(self.lines)]
        if o.source == "smooth":
            return f"pattern {self._rng(sample).integers(o.num_prompts)}"
        from contextforcing.data.world.prompts import sample_training_prompt

        return sample_training_prompt(self._rng(sample))

    def _rng(self, sample: int) -> np.random.Generator:
        return np.random.default_rng([self.options.seed, sample])


def smooth_clip(pattern: int, phase: float, frames: int, channels: int, video: VideoConfig,
                modes: int) -> torch.Tensor:
    """[C, F, H, W] sum of `modes` sinusoids drifting in time; the pattern fixes frequencies and speeds."""
    g = torch.Generator().manual_seed(pattern)
    kx, ky, speed, offset = (torch.rand(modes, channels, 1, 1, 1, generator=g) for _ in range(4))
    amplitude = torch.randn(modes, channels, 1, 1, 1, generator=g) / modes**0.5
    f = torch.arange(frames, dtype=torch.float32).reshape(1, 1, -1, 1, 1)
    y = torch.linspace(0, 1, video.latent_height).reshape(1, 1, 1, -1, 1)
    x = torch.linspace(0, 1, video.latent_width).reshape(1, 1, 1, 1, -1)
    angle = 2 * torch.pi * (kx * x + ky * y + offset + phase) + speed * f
    return (amplitude * torch.sin(angle)).sum(0)


def world_clip(prompt: str, seed: int, frames: int, channels: int, video: VideoConfig) -> torch.Tensor:
    """[C, F, H, W]: the world video for (prompt, seed) through the preview codec, first `frames` latents."""
    from contextforcing.codecs.preview import PreviewCodec
    from contextforcing.data.world import WorldSpec, render, simulate
    from contextforcing.data.world.style import FRAME_SIZE

    if FRAME_SIZE // video.vae_stride_hw != video.latent_height or video.latent_height != video.latent_width:
        raise UserError(f"the world source needs a {FRAME_SIZE // video.vae_stride_hw}x"
                        f"{FRAME_SIZE // video.vae_stride_hw} latent grid (the tiny preset)")
    pixels = render(simulate(WorldSpec(prompt, seed, frames / video.latent_fps)))
    video_tensor = torch.from_numpy(pixels).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    codec = PreviewCodec(channels, video.vae_stride_t, video.vae_stride_hw)
    return codec.encode(video_tensor)[0, :, :frames]


class ClipSource:
    """Latent clips with their prompts, for the context teacher."""

    def __init__(self, options: DataOptions, video: VideoConfig, channels: int, frames: int):
        if options.source == "prompts":
            raise UserError("the teacher needs latent clips: data.source must be world or smooth")
        self.options, self.video, self.channels, self.frames = options, video, channels, frames
        self.files: list[Path] = []
        if options.source == "latents":
            self.files = sorted(Path(options.latents_dir).glob("*.safetensors"))
            if not self.files:
                raise UserError(f"no *.safetensors latent clips in {options.latents_dir}")
        else:
            self.prompts = PromptSource(options)

    def clip(self, sample: int) -> tuple[str, torch.Tensor]:
        if self.files:
            return self._file_clip(self.files[(sample + self.options.seed) % len(self.files)])
        prompt = self.prompts.prompt(sample)
        if self.options.source == "world":
            return prompt, world_clip(prompt, sample, self.frames, self.channels, self.video)
        pattern = int(prompt.split()[-1])
        phase = float(self.prompts._rng(sample).random())
        return prompt, smooth_clip(pattern, phase, self.frames, self.channels, self.video, self.options.modes)

    def _file_clip(self, path: Path) -> tuple[str, torch.Tensor]:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            latents, prompt = f.get_tensor("latents"), (f.metadata() or {}).get("prompt", "")
        if latents.shape[1] < self.frames:
            raise UserError(f"{path} holds {latents.shape[1]} latent frames, the stage needs {self.frames}")
        return prompt, latents[:, : self.frames].float()
