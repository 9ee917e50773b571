"""Training data of the stages: prompts (DMD, CDMD, ODE pairs) and latent clips (context teacher).

Every sample is a pure function of (data seed, sample id), and micro-batch k of rank r holds samples
(k * world_size + r) * micro_batch + b, so `batches(rank, world_size, start)` can start anywhere (resume).

Sources:
  world    the synthetic world (contextforcing.data.world) rendered at 64x64 and encoded with the learned
           world codec (`data.codec: world`, the default; contextforcing/assets/world_codec.safetensors, or
           `data.codec_path`) or the weight-free PreviewCodec (`data.codec: preview`); prompts are its
           grammar's training prompts (needs an 8x8 latent grid: the `world` and `tiny` presets).
           `data.pool: N` draws clips from N fixed (prompt, seed) worlds and caches their latents in memory
           (and on disk under `data.cache_dir` when set), so each world is rendered and encoded once.
  panorama the scripted panorama world (contextforcing.data.world.panorama): clip i is `training_world(seed, i,
           data.seconds)`, a random training script and a world seed below the held-out range, rendered and
           encoded with the panorama codec (`data.codec: panorama`); its prompt changes chunk by chunk, so a
           clip carries one prompt per chunk (`Clip.prompts`) and the prompt stages read whole scripts
           (`PromptSource.script`). With `data.pool` the latents are cached like the world source's.
  smooth   procedural latent videos: a prompt "pattern k" picks a sum of drifting sinusoids (k < num_prompts)
  prompts  a text file, one prompt per line (VidProM for Wan-1.3B); prompts only, no clips
  latents  a directory of VAE-encoded clips (*.safetensors: tensor `latents` [C, F, H, W], metadata
           `prompt`), e.g. Sekai / UltraVideo encoded with the Wan VAE for the 1.3B context teacher
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from contextforcing.config import VideoConfig
from contextforcing.errors import UserError

SOURCES = ("world", "panorama", "smooth", "prompts", "latents")
CODECS = ("world", "panorama", "preview")


@dataclass(frozen=True)
class DataOptions:
    source: str = "world"
    prompts_file: str | None = None
    latents_dir: str | None = None
    num_prompts: int = 8  # smooth: distinct patterns
    modes: int = 3  # smooth: sinusoids per pattern
    seed: int = 0
    micro_batch: int = 1  # samples per micro-batch and rank
    codec: str = "world"  # world (the learned occlusion-world codec) | panorama (the panorama codec) | preview
    codec_path: str | None = None  # codec weights; default: the shipped file of `codec` in contextforcing/assets
    seconds: float = 30.0  # panorama source: length of each clip and script
    pool: int = 0  # world source: clips come from this many fixed worlds (sample % pool), cached; 0: all distinct
    cache_dir: str | None = None  # world source with a pool: encoded latents cached here across runs

    def validate(self) -> "DataOptions":
        if self.source not in SOURCES:
            raise UserError(f"data.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "prompts" and not self.prompts_file:
            raise UserError("data.source prompts needs data.prompts_file")
        if self.source == "latents" and not self.latents_dir:
            raise UserError("data.source latents needs data.latents_dir")
        if self.micro_batch < 1:
            raise UserError(f"data.micro_batch must be at least 1, got {self.micro_batch}")
        if self.codec not in CODECS:
            raise UserError(f"data.codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if self.pool < 0:
            raise UserError(f"data.pool must be >= 0, got {self.pool}")
        if self.source == "panorama" and self.codec == "world":
            raise UserError(
                "data.source panorama needs data.codec panorama (or preview); the occlusion world's "
                "codec reconstructs panorama frames badly (docs/world.md)"
            )
        if not self.seconds > 0:
            raise UserError(f"data.seconds must be positive, got {self.seconds}")
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

    def script(self, sample: int, chunks: int) -> list[str]:
        """The prompt of each of the first `chunks` chunks of sample `sample` (one prompt throughout, except for
        the panorama world, whose training scripts switch the camera, lights and ball chunk by chunk)."""
        if self.options.source != "panorama":
            return [self.prompt(sample)] * chunks
        from contextforcing.data.world.panorama import training_world

        spec = training_world(self.options.seed, sample, self.options.seconds)
        if chunks > spec.n_chunks:
            raise UserError(
                f"data.seconds={self.options.seconds:g} gives scripts of {spec.n_chunks} chunks; {chunks} are needed"
            )
        return [p.canonical for p in spec.script.chunk_prompts(spec.n_chunks)[:chunks]]

    def prompt(self, sample: int) -> str:
        o = self.options
        if o.source == "panorama":
            return self.script(sample, 1)[0]
        if self.lines is not None:
            return self.lines[(sample + o.seed) % len(self.lines)]
        if o.source == "smooth":
            return f"pattern {self._rng(sample).integers(o.num_prompts)}"
        from contextforcing.data.world.prompts import sample_training_prompt

        return sample_training_prompt(self._rng(sample))

    def _rng(self, sample: int) -> np.random.Generator:
        return np.random.default_rng([self.options.seed, sample])


def smooth_clip(pattern: int, phase: float, frames: int, channels: int, video: VideoConfig, modes: int) -> torch.Tensor:
    """[C, F, H, W] sum of `modes` sinusoids drifting in time; the pattern fixes frequencies and speeds."""
    g = torch.Generator().manual_seed(pattern)
    kx, ky, speed, offset = (torch.rand(modes, channels, 1, 1, 1, generator=g) for _ in range(4))
    amplitude = torch.randn(modes, channels, 1, 1, 1, generator=g) / modes**0.5
    f = torch.arange(frames, dtype=torch.float32).reshape(1, 1, -1, 1, 1)
    y = torch.linspace(0, 1, video.latent_height).reshape(1, 1, 1, -1, 1)
    x = torch.linspace(0, 1, video.latent_width).reshape(1, 1, 1, 1, -1)
    angle = 2 * torch.pi * (kx * x + ky * y + offset + phase) + speed * f
    return (amplitude * torch.sin(angle)).sum(0)


_CODECS: dict = {}


def world_video_codec(codec: str, channels: int, video: VideoConfig, path: str | None = None):
    """The codec that turns rendered world frames into latents: the learned world codec (weights required;
    loaded once per process) or the weight-free preview codec. Checked against the model's shapes."""
    key = (codec, channels, video.vae_stride_t, video.vae_stride_hw, path)
    if key in _CODECS:
        return _CODECS[key]
    if codec == "preview":
        from contextforcing.codecs.preview import PreviewCodec

        out = PreviewCodec(channels, video.vae_stride_t, video.vae_stride_hw)
    else:
        out = load_learned_world_codec(path, codec=codec)
        shape = (out.latent_channels, out.stride_t, out.stride_hw)
        if shape != (channels, video.vae_stride_t, video.vae_stride_hw):
            raise UserError(
                f"the world codec ({shape[0]} channels, strides {shape[1]}/{shape[2]}) does not fit the "
                f"model ({channels} channels, strides {video.vae_stride_t}/{video.vae_stride_hw})"
            )
    _CODECS[key] = out
    return out


CODEC_FILES = {"world": "world_codec.safetensors", "panorama": "panorama_codec.safetensors"}


def world_codec_file(path: str | None = None, codec: str = "world") -> Path:
    """Where a learned world codec's weights are (default: the file of `codec` shipped in the package)."""
    if path:
        return Path(path)
    return Path(__file__).resolve().parents[2] / "assets" / CODEC_FILES[codec]


def load_learned_world_codec(path: str | None = None, device: str = "cpu", codec: str = "world"):
    file = world_codec_file(path, codec)
    if not file.is_file():
        raise UserError(
            f"the learned world codec's weights {file} are missing; train or fetch them, or set "
            f"stage.data.codec=preview (the weight-free preview codec)"
        )
    try:
        from contextforcing.codecs.world import load_world_codec
    except ImportError as err:
        raise UserError(f"the learned world codec is not available ({err}); set stage.data.codec=preview") from None
    return load_world_codec(str(file), device=device)


def world_clip(
    prompt: str,
    seed: int,
    frames: int,
    channels: int,
    video: VideoConfig,
    codec: str = "world",
    codec_path: str | None = None,
) -> torch.Tensor:
    """[C, F, H, W]: the world video for (prompt, seed) through the chosen codec, first `frames` latents."""
    from contextforcing.data.world import WorldSpec, render, simulate
    from contextforcing.data.world.style import FRAME_SIZE

    if FRAME_SIZE // video.vae_stride_hw != video.latent_height or video.latent_height != video.latent_width:
        raise UserError(
            f"the world source needs a {FRAME_SIZE // video.vae_stride_hw}x"
            f"{FRAME_SIZE // video.vae_stride_hw} latent grid (the world or tiny preset)"
        )
    coder = world_video_codec(codec, channels, video, codec_path)
    pixels = render(simulate(WorldSpec(prompt, seed, frames / video.latent_fps)))
    pixel_frames = video.pixel_frames_for(frames)
    video_tensor = torch.from_numpy(pixels[:pixel_frames]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        return coder.encode(video_tensor)[0, :, :frames].float().contiguous()


@dataclass(frozen=True)
class Clip:
    """One latent clip for the context teacher: latents, the prompt of every chunk, and (panorama world) the
    chunk-aligned latent frames whose chunk shows a part of the room that only memory beyond the fast frames
    can restore (a revisit last seen before the cached fast frames)."""

    latents: torch.Tensor  # [C, F, H, W]
    prompts: list[str]  # one per chunk
    memory_starts: tuple[int, ...] = ()
    headings: tuple[float, ...] = ()  # camera heading of each latent frame (tokens), for a room-anchored model

    def prompt_at(self, frame: int, chunk_frames: int) -> str:
        return self.prompts[frame // chunk_frames]


def memory_starts(track, chunk_frames: int, cached_fast: int) -> tuple[int, ...]:
    """Chunk starts h of a panorama track whose chunk [h, h + chunk) shows a revisited unit last seen before
    h - cached_fast: what the attention sink and the slow memory are for (docs/world.md, Revisits)."""
    from contextforcing.data.world.panorama import track_revisits

    starts = set()
    for r in track_revisits(track):
        h = r.back_latent - r.back_latent % chunk_frames
        if r.seen_latent < h - cached_fast and h + chunk_frames <= track.n_latents:
            starts.add(h)
    return tuple(sorted(starts))


class ClipSource:
    """Latent clips with their prompts, for the context teacher."""

    def __init__(
        self,
        options: DataOptions,
        video: VideoConfig,
        channels: int,
        frames: int,
        cached_fast: int = 0,
        camera=None,
    ):
        """`camera` (panorama source): turns each clip's chunk prompts into per-frame headings (`Clip.headings`)."""
        if options.source == "prompts":
            raise UserError("the teacher needs latent clips: data.source must be world, panorama or smooth")
        self.options, self.video, self.channels, self.frames = options, video, channels, frames
        self.cached_fast = cached_fast  # panorama: the fast frames a target's chunk attends (memory_starts)
        self.camera = camera
        self.files: list[Path] = []
        if options.source == "latents":
            self.files = sorted(Path(options.latents_dir).glob("*.safetensors"))
            if not self.files:
                raise UserError(f"no *.safetensors latent clips in {options.latents_dir}")
        else:
            self.prompts = PromptSource(options)
        if options.source == "panorama":
            from contextforcing.data.world.panorama import training_world

            clip_frames = training_world(options.seed, 0, options.seconds).n_latents
            if clip_frames < frames:
                raise UserError(
                    f"data.seconds={options.seconds:g} gives clips of {clip_frames} latent frames; "
                    f"the stage needs {frames}"
                )
            self.frames = clip_frames
        self._cache: dict[int, Clip] = {}

    def clip(self, sample: int) -> Clip:
        if self.files:
            return self._whole(*self._file_clip(self.files[(sample + self.options.seed) % len(self.files)]))
        o = self.options
        if o.source in ("world", "panorama") and o.pool:
            sample %= o.pool
            if sample not in self._cache:
                self._cache[sample] = self._cached_world_clip(sample)
            return self._cache[sample]
        if o.source == "panorama":
            return self._panorama_clip(sample, self._encode_panorama(sample))
        prompt = self.prompts.prompt(sample)
        if o.source == "world":
            return self._whole(
                prompt, world_clip(prompt, sample, self.frames, self.channels, self.video, o.codec, o.codec_path)
            )
        pattern = int(prompt.split()[-1])
        phase = float(self.prompts._rng(sample).random())
        return self._whole(
            prompt, smooth_clip(pattern, phase, self.frames, self.channels, self.video, self.options.modes)
        )

    def _whole(self, prompt: str, latents: torch.Tensor) -> Clip:
        chunks = -(-latents.shape[1] // self.video.chunk_frames)
        return Clip(latents, [prompt] * chunks)

    def _panorama_clip(self, sample: int, latents: torch.Tensor) -> Clip:
        from contextforcing.data.world.panorama import simulate, training_world

        track = simulate(training_world(self.options.seed, sample, self.options.seconds))
        prompts, chunk = track.chunk_prompts(), self.video.chunk_frames
        headings = ()
        if self.camera is not None:
            from contextforcing.memory.headings import prompt_headings

            headings = tuple(prompt_headings(self.camera, prompts, chunk, latents.shape[1]))
        return Clip(latents, prompts, memory_starts(track, chunk, self.cached_fast), headings)

    def _encode_panorama(self, sample: int) -> torch.Tensor:
        """[C, F, H, W] float32: training clip `sample` rendered and encoded (the codec's encode is per latent frame)."""
        from contextforcing.data.world.panorama import render, simulate, training_world

        o = self.options
        coder = world_video_codec(o.codec, self.channels, self.video, o.codec_path)
        pixels = render(simulate(training_world(o.seed, sample, o.seconds)))
        video_tensor = torch.from_numpy(pixels).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            return coder.encode(video_tensor)[0, :, : self.frames].float().contiguous()

    def _cached_world_clip(self, sample: int) -> Clip:
        """One pooled world: its latents from the disk cache when one is set and holds them (stored as float16
        for the panorama world, whose clips are long)."""
        o = self.options
        panorama = o.source == "panorama"
        key = f"{o.seconds:g}s" if panorama else self.prompts.prompt(sample)
        file = None
        if o.cache_dir:
            tag = f"{o.source}-{o.codec}-s{o.seed}-f{self.frames}-c{self.channels}"
            file = Path(o.cache_dir) / tag / f"{sample:06d}.safetensors"
            if file.is_file():
                from safetensors import safe_open

                with safe_open(str(file), "pt") as f:
                    if (f.metadata() or {}).get("prompt") == key:
                        latents = f.get_tensor("latents").float()
                        return self._panorama_clip(sample, latents) if panorama else self._whole(key, latents)
        if panorama:
            latents = self._encode_panorama(sample)
        else:
            latents = world_clip(key, sample, self.frames, self.channels, self.video, o.codec, o.codec_path)
        if file is not None:
            from safetensors.torch import save_file

            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}.tmp")
            stored = latents.half() if panorama else latents
            save_file({"latents": stored.contiguous()}, str(tmp), metadata={"prompt": key, "seed": str(sample)})
            tmp.replace(file)
            latents = stored.float()  # what a later run reads back: a resumed run sees the same values
        return self._panorama_clip(sample, latents) if panorama else self._whole(key, latents)

    def _file_clip(self, path: Path) -> tuple[str, torch.Tensor]:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            latents, prompt = f.get_tensor("latents"), (f.metadata() or {}).get("prompt", "")
        if latents.shape[1] < self.frames:
            raise UserError(f"{path} holds {latents.shape[1]} latent frames, the stage needs {self.frames}")
        return prompt, latents[:, : self.frames].float()
