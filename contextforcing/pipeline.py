"""The front door: load a model once, call it with a prompt, get frames; or stream decoded chunks live.

    import contextforcing as cf
    pipe = cf.Pipeline.from_pretrained()                       # the embedded world model
    video = pipe("striped cool room", seconds=20, seed=0)      # frames [T, H, W, 3] uint8, plans, timings
    for chunk in pipe.stream("a red ball", seconds=120, memory=cf.Memory.slow_fast(slow=12),
                             switches={40.0: "a blue cube"}):
        chunk.frames, chunk.plan                               # pixels and the memory's plan, as they finish
    pipe.save(video, "out.mp4")

A `Pipeline` holds the parts (DiT, text encoder, codec) and what the model was trained with (memory,
sampling), which every call uses unless told otherwise. `stream` returns a `Generation`: an iterator of
decoded chunks that also takes prompt switches while it runs (the live viewer, the CLI's `generate`,
`bench` and the evaluation scripts all drive one). Everything below the front door is `sampling.stream`'s
one chunk routine.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch

from contextforcing.config import Preset, SamplingConfig, from_dict
from contextforcing.errors import UserError
from contextforcing.memory.plan import ChunkPlan, MemoryUpdate
from contextforcing.memory.policies import MemorySpec, check_recache, make_spec, tier_params
from contextforcing.sampling.stream import VideoStream, known_in_chunk


@dataclass
class DecodedChunk:
    """One finished chunk: its pixels and what the memory did for it."""

    index: int  # chunk number in this generation
    start: int  # first absolute latent frame
    prompt: str  # the prompt it was generated under
    frames: np.ndarray  # uint8 [n, H, W, 3], the pixel frames this chunk adds to the video
    first_frame: int  # index of frames[0] in the whole video
    latents: torch.Tensor  # clean latents [B, C, frames, h, w]
    plan: ChunkPlan
    update: MemoryUpdate
    seconds: float  # wall time: denoising + commit (decode excluded)
    decode_seconds: float

    def trace(self) -> dict:
        """The JSON record of this chunk (sidecars, reports, the live viewer)."""
        return {"seconds": self.seconds, **self.plan.to_json(), **self.update.to_json()}


@dataclass
class Video:
    """A finished (or interrupted) generation: frames plus everything needed to describe how it was made."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    fps: int
    chunks: list[DecodedChunk]
    record: dict  # the sidecar: prompts, seed, config, timings, events, memory trace

    @property
    def plans(self) -> list[ChunkPlan]:
        return [c.plan for c in self.chunks]


@dataclass
class Prompt:
    """A prompt and the chunk it takes effect from."""

    text: str
    chunk: int
    flush: bool = False


class Generation:
    """One streaming generation: iterate it to get `DecodedChunk`s as they finish.

    `switch(prompt)` changes the prompt from the next chunk on (the live viewer types into it);
    `seconds=None` streams until `close()`. The memory's plan of each chunk comes with its pixels."""

    def __init__(self, pipe: "Pipeline", prompt: str, seconds: float | None, *, seed: int, memory: MemorySpec,
                 sampling: SamplingConfig, negative_prompt: str | None, switches: list[Prompt], recache: str,
                 flush_on_switch: bool, init_latents: torch.Tensor | None, known_frames: Mapping | None):
        video = pipe.preset.video
        self.pipe, self.memory, self.sampling, self.seed = pipe, memory, sampling, seed
        self.num_frames = video.latent_frames_for(seconds) if seconds is not None else None
        self.chunks_total = None if self.num_frames is None else self.num_frames // video.chunk_frames
        if self.num_frames is None and tier_params(memory, video.chunk_frames).capacity is None:
            raise UserError(f"memory {memory.name!r} grows with the video: give a length (seconds)")
        check_recache(memory, recache)
        self.flush_on_switch = flush_on_switch
        self.prompts = [Prompt(prompt, 0)]
        self._pending = sorted(switches, key=lambda p: p.chunk)
        self._check_switches()
        uncond = None
        if sampling.guidance_scale != 1.0:
            uncond = pipe.encode([negative_prompt or ""])[negative_prompt or ""]
        prefill = init_latents.shape[2] if init_latents is not None else 0
        max_frames = None if self.num_frames is None else self.num_frames + prefill
        self.stream = VideoStream(pipe.model, pipe.encode([prompt])[prompt], memory, video, sampling,
                                  uncond_text=uncond, max_frames=max_frames, recache=recache)
        self.decoder = pipe.codec.stream_decoder()
        if init_latents is not None:
            self.stream.prefill(init_latents.to(pipe.device))
            self.decoder.decode(init_latents.float())  # primes the causal decoder; not re-emitted
        self.stream_start = self.stream.frame
        self.known_frames = known_frames
        self.generator = torch.Generator(pipe.device).manual_seed(seed)
        self.index = 0
        self.frames_emitted = 0
        self.closed = False

    def _check_switches(self) -> None:
        last = 0
        for p in self._pending:
            if p.chunk <= last:
                raise UserError(f"prompt switch to {p.text!r} lands on chunk {p.chunk}, not after chunk {last}; "
                                f"switches land on chunk boundaries, space them further apart")
            if self.chunks_total is not None and p.chunk >= self.chunks_total:
                raise UserError(f"prompt switch to {p.text!r} at chunk {p.chunk} is past the video's "
                                f"{self.chunks_total} chunks")
            last = p.chunk

    @property
    def prompt(self) -> str:
        return self.prompts[-1].text

    def switch(self, prompt: str, flush: bool | None = None) -> int:
        """Switch to `prompt` from the next chunk on; returns that chunk's index."""
        if not prompt.strip():
            raise UserError("empty prompt")
        self.pipe.check_prompt(prompt)
        chunk = max([self.index] + [p.chunk + 1 for p in self._pending])
        self._pending.append(Prompt(prompt.strip(), chunk, self.flush_on_switch if flush is None else flush))
        return chunk

    def close(self) -> None:
        self.closed = True

    def __iter__(self) -> Iterator[DecodedChunk]:
        return self

    def __next__(self) -> DecodedChunk:
        if self.closed or (self.chunks_total is not None and self.index >= self.chunks_total):
            raise StopIteration
        while self._pending and self._pending[0].chunk <= self.index:
            p = self._pending.pop(0)
            self.stream.switch_prompt(self.pipe.encode([p.text])[p.text], flush=p.flush)
            self.prompts.append(dataclasses.replace(p, chunk=self.index))
        return self._next_chunk()

    @torch.no_grad()
    def _next_chunk(self) -> DecodedChunk:
        frames = self.stream.chunk_frames
        if self.num_frames is not None:
            frames = min(frames, self.num_frames - self.index * self.stream.chunk_frames)
        noise = self.stream.noise(frames, self.generator)
        start = self.stream.frame
        known = None
        if self.known_frames:
            known = known_in_chunk(self.known_frames, start - self.stream_start, noise)
        began = time.perf_counter()
        latents = self.stream.step(noise, self.generator, known=known)
        if latents.is_cuda:
            torch.cuda.synchronize(latents.device)
        generated = time.perf_counter()
        pixels = to_uint8_frames(self.decoder.decode(latents.float())[0])
        done = time.perf_counter()
        chunk = DecodedChunk(self.index, start, self.prompt, pixels, self.frames_emitted, latents,
                             self.stream.last_plan, self.stream.last_update, generated - began, done - generated)
        self.index += 1
        self.frames_emitted += len(pixels)
        return chunk

    def record(self, chunks: list[DecodedChunk], interrupted: bool = False) -> dict:
        """The sidecar of this generation so far (the JSON edge of plans, prompts and timings)."""
        pipe, video = self.pipe, self.pipe.preset.video
        return {
            "prompt": self.prompts[0].text,
            "switches": [{"chunk": p.chunk, "frame": p.chunk * video.chunk_frames, "prompt": p.text, "flush": p.flush}
                         for p in self.prompts[1:]],
            "seed": self.seed,
            "weights": pipe.weights,
            "weights_choice": pipe.weights_choice,
            "preset": pipe.preset_name,
            "config": {
                "model": dataclasses.asdict(pipe.preset.model),
                "video": dataclasses.asdict(video),
                "sampling": dataclasses.asdict(self.sampling),
                "memory": self.memory.to_dict(),
                "switch": {"recache": self.stream.recache, "flush": self.flush_on_switch},
                "device": str(pipe.device),
                "dtype": str(pipe.model.dtype).replace("torch.", ""),
            },
            "latent_frames": sum(c.plan.frames for c in chunks),
            "pixel_frames": sum(len(c.frames) for c in chunks),
            "fps": video.fps,
            "interrupted": interrupted,
            "chunk_seconds": [c.seconds for c in chunks],
            "decode_seconds": [c.decode_seconds for c in chunks],
            "events": self.stream.events,
            "memory_trace": [{k: v for k, v in c.trace().items() if k != "seconds"} for c in chunks],
        }


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """video [3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


@dataclass
class Pipeline:
    """A model ready to generate: its parts, and the memory and sampling it was trained with (defaults)."""

    preset_name: str
    preset: Preset
    model: torch.nn.Module
    text_encoder: object
    codec: object
    device: torch.device
    weights: str  # where the weights came from
    memory: MemorySpec  # the memory the model was trained with: the default of every call
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    weights_choice: dict | None = None  # which checkpoint entry and LoRA scale were used
    prompt_check: object = None  # callable(prompt) raising UserError for prompts the model cannot read
    _texts: dict = field(default_factory=dict, repr=False)

    # -- sources -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, *, checkpoint: str | None = None,
                        preset: str | None = None, device: str | None = None, dtype: str | None = None,
                        use_ema: bool | None = None, lora: str | None = None, lora_alpha: float | None = None,
                        num_heads: int | None = None, checkpoint_format: str | None = None) -> "Pipeline":
        """`source` None: the embedded world model (contextforcing/assets). Otherwise a local Wan2.1
        directory (UMT5, VAE and the base DiT), with `checkpoint` a distilled causal DiT in any format
        `model.checkpoints` reads (Self-Forcing, LongLive, Causal Forcing, Context Forcing)."""
        from contextforcing import loading

        if source is None and checkpoint is None:
            if any(x is not None for x in (preset, use_ema, lora, lora_alpha, num_heads, checkpoint_format)):
                raise UserError("the embedded model takes no weight options; give a Wan directory to use them")
            return loading.embedded(device, dtype)
        if source is None:
            raise UserError("a checkpoint needs the Wan2.1 directory too (for the UMT5 text encoder and the VAE)")
        return loading.wan(str(source), checkpoint, preset or loading.REAL_DEFAULT_PRESET,
                           checkpoint_format=checkpoint_format, use_ema=use_ema, lora=lora, lora_alpha=lora_alpha,
                           num_heads=num_heads, device=device, dtype=dtype)

    @classmethod
    def random(cls, preset: str = "tiny", *, seed: int = 0, device: str | None = None,
               dtype: str | None = None) -> "Pipeline":
        """A randomly initialised model of `preset` (tests, benchmarks) with the weight-free parts."""
        from contextforcing import loading

        return loading.random_init(preset, seed, device, dtype)

    # -- what a call uses ----------------------------------------------------------------------------
    def memory_for(self, memory: MemorySpec | str | dict | None = None) -> MemorySpec:
        """None: the trained memory. A policy name: the trained options if it is the trained policy, else the
        policy's defaults. A dict: overrides of the trained memory (`policy` may name another policy). A
        `Memory`: exactly as given."""
        if isinstance(memory, MemorySpec):
            tier_params(memory, self.preset.video.chunk_frames)
            return memory
        if memory is None:
            memory = {}
        if isinstance(memory, str):
            memory = {"policy": memory}
        if not isinstance(memory, dict):
            raise UserError(f"memory must be a Memory, a policy name or a dict of options, got {type(memory).__name__}")
        options = dict(memory)
        name = options.pop("policy", self.memory.name)
        base = {k: v for k, v in self.memory.to_dict().items() if k != "policy"} if name == self.memory.name else {}
        spec = make_spec(name, {**_explicit(self.memory, base), **options})
        tier_params(spec, self.preset.video.chunk_frames)
        return spec

    def sampling_for(self, sampling: SamplingConfig | dict | None = None) -> SamplingConfig:
        """None: the trained sampling; a dict: overrides of it (shift, denoising_steps, guidance_scale, ...)."""
        if sampling is None:
            return self.sampling
        if isinstance(sampling, SamplingConfig):
            return sampling
        if not isinstance(sampling, dict):
            raise UserError(f"sampling must be a SamplingConfig or a dict of options, got {type(sampling).__name__}")
        return from_dict(SamplingConfig, {**dataclasses.asdict(self.sampling), **sampling}, where="sampling")

    def check_prompt(self, prompt: str) -> None:
        if self.prompt_check is not None:
            self.prompt_check(prompt)

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Text embeddings per prompt, as the DiT's device and dtype (cached: a prompt is encoded once)."""
        from contextforcing import loading

        new = [p for p in dict.fromkeys(prompts) if p not in self._texts]
        if new:
            self._texts.update(loading.encode_prompts(self, new))
        return {p: self._texts[p] for p in prompts}

    # -- generating ----------------------------------------------------------------------------------
    def stream(self, prompt: str, seconds: float | None = None, *, seed: int = 0,
               memory: MemorySpec | str | dict | None = None, sampling: SamplingConfig | dict | None = None,
               negative_prompt: str | None = None, switches: Mapping[float, str] | None = None,
               flush_on_switch: bool = False, recache: str = "window", init: torch.Tensor | None = None,
               known_frames: Mapping[int, torch.Tensor] | None = None) -> Generation:
        """A live generation of `seconds` (None: until closed) from `prompt`.

        `switches` maps video seconds to prompts (each lands on the nearest chunk boundary); `init` is a
        clean latent clip [1, C, F, h, w] to continue (prefilled into memory); `known_frames` maps latent
        frames (counted from the start) to clean latents the video must show (evaluation protocols)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("empty prompt")
        self.check_prompt(prompt)
        video = self.preset.video
        chunk_s = video.chunk_frames / video.latent_fps
        placed = []
        for at, text in sorted((switches or {}).items()):
            if not isinstance(at, (int, float)) or at <= 0:
                raise UserError(f"a prompt switch time must be a positive number of seconds, got {at!r}")
            self.check_prompt(text)
            placed.append(Prompt(text, int(at / chunk_s + 0.5), flush_on_switch))
        return Generation(self, prompt.strip(), seconds, seed=seed, memory=self.memory_for(memory),
                          sampling=self.sampling_for(sampling), negative_prompt=negative_prompt, switches=placed,
                          recache=recache, flush_on_switch=flush_on_switch, init_latents=init,
                          known_frames=known_frames)

    def __call__(self, prompt: str, seconds: float, **kwargs) -> Video:
        """Generate `seconds` of video at once (see `stream` for the options)."""
        generation = self.stream(prompt, seconds, **kwargs)
        chunks = list(generation)
        frames = np.concatenate([c.frames for c in chunks]) if chunks else np.zeros((0, 0, 0, 3), np.uint8)
        return Video(frames, self.preset.video.fps, chunks, generation.record(chunks))

    def save(self, video: Video, path: str | Path) -> Path:
        """Write `video` as an mp4 with its JSON sidecar beside it, both atomically (the CLI's writer)."""
        from contextforcing.generation import write_video_and_sidecar

        return write_video_and_sidecar(path, [video.frames], video.fps, lambda _frames: video.record)


def _explicit(spec: MemorySpec, base: dict) -> dict:
    """The trained options that differ from the policy's defaults (so that layout switches stay coherent)."""
    defaults = make_spec(spec.name).to_dict()
    return {k: v for k, v in base.items() if defaults.get(k) != v}
