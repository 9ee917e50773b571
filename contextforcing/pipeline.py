"""The front door: load a model once, call it with a prompt, get frames; or stream decoded chunks live.

    import contextforcing as cf
    pipe = cf.Pipeline.from_pretrained()                       # the embedded world model
    hold, pan = "warm room, hold, lights on, black ball", "warm room, pan left, lights on, black ball"
    video = pipe(hold, seconds=20, seed=0, progress=True)      # frames [T, H, W, 3] uint8, plans, timings
    for chunk in pipe.stream(hold, seconds=120, memory=cf.Memory.slow_fast(slow=12), switches={40.0: pan}):
        chunk.frames, chunk.plan                               # pixels and the memory's plan, as they finish
    pipe.save(video, "out.mp4")

A `Pipeline` holds the parts (DiT, text encoder, codec) and what the model was trained with (memory,
sampling), which every call uses unless told otherwise. `stream` returns a `Generation`: an iterator of
decoded chunks that also takes prompt switches while it runs. The CLI's `generate` and `bench`, the live
viewer and the evaluation scripts all drive one; below it is `sampling.stream`'s one chunk routine.
Loaders live in `contextforcing.parts`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from contextforcing import parts
from contextforcing.config import SamplingConfig, VideoConfig, from_dict
from contextforcing.errors import UserError, checked_keywords, option, quote, shorten, unknown_keyword
from contextforcing.io.provenance import provenance
from contextforcing.io.video import read_video, save_video
from contextforcing.memory.plan import ChunkPlan, MemoryUpdate
from contextforcing.memory.policies import POLICY_OPTIONS, MemorySpec, check_recache, make_spec, tier_params
from contextforcing.parts import Parts
from contextforcing.runtime.limits import check_stream
from contextforcing.runtime.threads import use_threads
from contextforcing.sampling.camera import chunk_headings
from contextforcing.sampling.stream import VideoStream, known_in_chunk

# An init video longer than one Wan clip (81 frames = 21 latent frames) is cut to its last 81 frames:
# the memory keeps only a bounded context anyway, and the VAE encode of a long clip would dominate.
MAX_INIT_PIXEL_FRAMES = 81
# Text embeddings kept per pipeline (UMT5's are 4 MiB each): enough for any prompt script, bounded for a server.
MAX_CACHED_PROMPTS = 64


@dataclass
class DecodedChunk:
    """One finished chunk: its pixels and what the memory did for it."""

    index: int  # chunk number in this generation
    start: int  # first absolute latent frame
    prompt: str  # the prompt it was generated under
    frames: np.ndarray  # uint8 [n, H, W, 3], the pixel frames this chunk adds to the video (empty: not decoded)
    first_frame: int  # index of frames[0] in the whole video
    latents: torch.Tensor  # clean latents [B, C, frames, h, w]
    plan: ChunkPlan
    update: MemoryUpdate
    seconds: float  # wall time of denoising + commit (decode excluded)
    decode_seconds: float

    def trace(self) -> dict:
        """The JSON record of this chunk (sidecars, reports, the live viewer). `copies` names the slow tier's own
        copies as [frame, position] (a frame may be attended twice), so that `trace.read_plan` gets the plan back."""
        copies = [[a.frame, a.position] for a in self.plan.context if a.copy]
        return {**self.plan.to_json(), **self.update.to_json(), "copies": copies}

    def __repr__(self) -> str:  # not the pixels and latents
        return (
            f"DecodedChunk(index={self.index}, latent frames {self.start}..{self.start + self.plan.frames - 1}, "
            f"{len(self.frames)} pixel frames from {self.first_frame}, prompt={self.prompt!r}, "
            f"promoted={list(self.update.promoted)}, seconds={self.seconds:.3f})"
        )


@dataclass
class Video:
    """A finished (or interrupted) generation: frames plus the record of how it was made."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    fps: int
    chunks: list[DecodedChunk]
    record: dict  # the sidecar: prompts, seed, config, timings, events, memory trace

    @property
    def plans(self) -> list[ChunkPlan]:
        return [c.plan for c in self.chunks]

    def __repr__(self) -> str:  # the frames and the record are large: their shape and size, not their values
        t, h, w = self.frames.shape[:3]
        return (
            f"Video({t} frames of {w}x{h} at {self.fps} fps = {t / self.fps:.2f} s, {len(self.chunks)} chunks, "
            f"memory {self.record.get('config', {}).get('memory', {}).get('policy', '?')}, seed {self.record.get('seed')})"
        )


@dataclass(frozen=True)
class StreamOptions:
    """What a stream is asked to do, checked (`Pipeline.stream_options`)."""

    memory: MemorySpec
    sampling: SamplingConfig
    num_frames: int | None  # latent frames to generate (None: until the generation is closed)


@dataclass(frozen=True)
class Prompt:
    """A prompt and the chunk it takes effect from."""

    text: str
    chunk: int
    flush: bool = False


class Generation:
    """One streaming generation: iterate it to get `DecodedChunk`s as they finish.

    `switch(prompt)` changes the prompt from the next chunk on (the live viewer types into it);
    `seconds=None` streams until `close()`. The memory's plan of each chunk comes with its pixels."""

    def __init__(
        self,
        pipe: "Pipeline",
        prompt: str,
        num_frames: int | None,
        *,
        seed: int,
        memory: MemorySpec,
        sampling: SamplingConfig,
        negative_prompt: str | None,
        switches: Sequence[Prompt],
        recache: str,
        flush_on_switch: bool,
        init_pixels: torch.Tensor | None,
        known_frames: Mapping | None,
        decode: bool,
        progress: bool | str = False,
    ):
        video = pipe.preset.video
        self.pipe, self.memory, self.sampling, self.seed, self.decode = pipe, memory, sampling, seed, decode
        self.num_frames = num_frames
        self.chunks_total = None if num_frames is None else -(-num_frames // video.chunk_frames)
        check_recache(memory, recache, flush_on_switch or any(p.flush for p in switches))
        self.flush_on_switch = flush_on_switch
        self.prompts = [Prompt(prompt, 0)]
        self._pending = list(switches)
        self._check_switches()
        negative = negative_prompt or ""
        texts = pipe.encode(
            [prompt, *(p.text for p in self._pending)] + ([negative] if sampling.guidance_scale != 1.0 else [])
        )
        init = None if init_pixels is None else pipe.codec.encode(init_pixels.to(pipe.device)).float()
        max_frames = None if num_frames is None else num_frames + (0 if init is None else init.shape[2])
        self.stream = VideoStream(
            pipe.model,
            texts[prompt],
            memory,
            video,
            sampling,
            max_frames=max_frames,
            uncond_text=texts.get(negative) if sampling.guidance_scale != 1.0 else None,
            euler_num_steps=sampling.euler_steps or None,
            recache=recache,
        )
        self.decoder = pipe.codec.stream_decoder()
        self.init_frames = 0
        if init is not None:
            self.stream.prefill(init)
            # Not re-emitted, but run through the decoder so its causal cache continues from the init clip:
            # the first generated latent frame then decodes to stride_t frames that follow on smoothly.
            self.decoder.decode(init)
            self.init_frames = init.shape[2]
        self.known_frames = known_frames
        self.heading = 0.0  # the camera's heading at the last generated frame (room-anchored models)
        self.generator = torch.Generator(pipe.device).manual_seed(seed)
        self.index, self.frames_emitted, self.closed = 0, 0, False
        self.bar = None if not progress else progress_bar(self.chunks_total, progress)

    def _check_switches(self) -> None:
        video = self.pipe.preset.video
        chunk_s = video.chunk_frames / video.latent_fps
        last = 0
        for p in self._pending:
            if p.chunk <= last:
                raise UserError(
                    f"switches: the switch to {quote(p.text)} lands on chunk {p.chunk} ({p.chunk * chunk_s:g} s), not "
                    f"after chunk {last}; switches land on {chunk_s:g} s chunk boundaries, space them further apart"
                )
            if self.chunks_total is not None and p.chunk >= self.chunks_total:
                raise UserError(
                    f"switches: the switch to {quote(p.text)} at {p.chunk * chunk_s:g} s is past the end of the video "
                    f"({self.chunks_total} chunks of {chunk_s:g} s; the last switch can be at "
                    f"{(self.chunks_total - 1) * chunk_s:g} s)"
                )
            last = p.chunk

    @property
    def prompt(self) -> str:
        return self.prompts[-1].text

    def switch(self, prompt: str, flush: bool | None = None) -> int:
        """Switch to `prompt` from the next chunk on; returns the chunk it takes effect from."""
        if self.closed:
            raise UserError("the generation is closed: it takes no more prompt switches")
        prompt = self.pipe.check_prompt(prompt)
        flush = self.flush_on_switch if flush is None else flush
        check_recache(self.memory, self.stream.recache, flush)
        chunk = max([self.index] + [p.chunk + 1 for p in self._pending])
        if self.chunks_total is not None and chunk >= self.chunks_total:
            raise UserError("the video has no chunk left to switch prompts at")
        self._pending.append(Prompt(prompt, chunk, flush))
        return chunk

    def close(self) -> None:
        self.closed = True
        if self.bar is not None:
            self.bar.close()

    def __iter__(self) -> Iterator[DecodedChunk]:
        return self

    def __next__(self) -> DecodedChunk:
        if self.closed or (self.chunks_total is not None and self.index >= self.chunks_total):
            self.close()
            raise StopIteration
        while self._pending and self._pending[0].chunk <= self.index:
            p = self._pending.pop(0)
            self.stream.switch_prompt(self.pipe.encode([p.text])[p.text], flush=p.flush)
            self.prompts.append(dataclasses.replace(p, chunk=self.index))
        chunk = self._next_chunk()
        if self.bar is not None:
            video_s = self.stream.frame / self.pipe.preset.video.latent_fps
            self.bar.set_postfix_str(f"{video_s:.2f} s of video", refresh=False)
            self.bar.update()
        return chunk

    @torch.no_grad()
    def _next_chunk(self) -> DecodedChunk:
        frames = self.stream.chunk_frames
        if self.num_frames is not None:
            frames = min(frames, self.num_frames - self.index * self.stream.chunk_frames)
        noise = self.stream.noise(frames, self.generator)
        start = self.stream.frame
        known = None
        if self.known_frames:
            known = known_in_chunk(self.known_frames, start - self.init_frames, noise)
        began = time.perf_counter()
        latents = self.stream.step(noise, self.generator, known=known, headings=self._headings(start, frames))
        if latents.is_cuda:
            torch.cuda.synchronize(latents.device)
        generated = time.perf_counter()
        pixels = to_uint8_frames(self.decoder.decode(latents.float())[0]) if self.decode else _NO_FRAMES
        done = time.perf_counter()
        chunk = DecodedChunk(
            self.index,
            start,
            self.prompt,
            pixels,
            self.frames_emitted,
            latents,
            self.stream.last_plan,
            self.stream.last_update,
            generated - began,
            done - generated,
        )
        self.index += 1
        self.frames_emitted += len(pixels)
        return chunk

    def _headings(self, start: int, frames: int) -> list[list[float]] | None:
        """The chunk's camera headings for a room-anchored model, from the prompt's camera (None: no camera)."""
        if self.pipe.camera is None:
            return None
        headings = chunk_headings(self.heading, self.pipe.camera(self.prompt), start, frames)
        self.heading = headings[-1]
        return [headings]

    def record(self, chunks: Sequence[DecodedChunk], interrupted: bool = False) -> dict:
        """The sidecar of this generation so far (the JSON edge of plans, prompts and timings)."""
        pipe, video = self.pipe, self.pipe.preset.video
        end = chunks[-1].start + chunks[-1].plan.frames if chunks else self.init_frames  # what `chunks` reach
        return {
            "prompt": self.prompts[0].text,
            "switches": [
                {"chunk": p.chunk, "frame": p.chunk * video.chunk_frames, "prompt": p.text, "flush": p.flush}
                for p in self.prompts[1:]
                if p.chunk < len(chunks)
            ],
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
            "events": [e for e in self.stream.events if e.get("frame", 0) < end],
            "memory_trace": [c.trace() for c in chunks],
            "provenance": provenance(),
        }


_NO_FRAMES = np.zeros((0, 0, 0, 3), np.uint8)


def progress_bar(chunks: int | None, progress: bool | str):
    """A tqdm bar of chunks on stderr (`progress` a string: its label); open-ended when `chunks` is None."""
    from tqdm import tqdm

    label = progress if isinstance(progress, str) else "generate"
    return tqdm(total=chunks, unit="chunk", desc=label, file=sys.stderr, dynamic_ncols=True)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """video [3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


@dataclass
class Pipeline(Parts):
    """A model ready to generate: its `Parts`, and the memory and sampling it was trained with (defaults)."""

    _texts: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_parts(cls, parts: Parts) -> "Pipeline":
        return cls(**{f.name: getattr(parts, f.name) for f in dataclasses.fields(Parts)})

    # -- sources -------------------------------------------------------------------------------------
    @classmethod
    @checked_keywords("Pipeline.from_pretrained")
    def from_pretrained(
        cls,
        source: str | Path | None = None,
        *,
        checkpoint: str | None = None,
        preset: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        use_ema: bool | None = None,
        lora: str | None = None,
        lora_alpha: float | None = None,
        num_heads: int | None = None,
        checkpoint_format: str | None = None,
        threads: int | None = None,
    ) -> "Pipeline":
        """`source` None: the embedded world model (contextforcing/assets). Otherwise a local Wan2.1
        directory (UMT5, VAE and the base DiT), with `checkpoint` a distilled causal DiT in any format
        `model.checkpoints` reads (Self-Forcing, LongLive, Causal Forcing, Context Forcing).
        `threads`: torch's CPU threads for this process (None: `contextforcing.runtime.threads`' rule)."""
        use_threads(threads)
        dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
        if source is None and checkpoint is None:
            if any(x is not None for x in (preset, use_ema, lora, lora_alpha, num_heads, checkpoint_format)):
                raise UserError("the embedded model takes no weight options; give a Wan directory to use them")
            return cls.from_parts(parts.load_embedded(device, dtype))
        if source is None:
            raise UserError("a checkpoint needs the Wan2.1 directory too (for the UMT5 text encoder and the VAE)")
        parts.check_weight_flags(True, lora=lora, lora_alpha=lora_alpha, num_heads=num_heads)
        return cls.from_parts(
            parts.load_wan(
                str(source),
                checkpoint,
                preset or parts.REAL_DEFAULT_PRESET,
                checkpoint_format=checkpoint_format,
                use_ema=use_ema,
                lora=lora,
                lora_alpha=lora_alpha,
                num_heads=num_heads,
                device=device,
                dtype=dtype,
            )
        )

    @classmethod
    @checked_keywords("Pipeline.random")
    def random(
        cls,
        preset: str = "tiny",
        *,
        seed: int = 0,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
    ) -> "Pipeline":
        """A randomly initialised model of `preset` (tests, benchmarks) with the weight-free parts."""
        use_threads(threads)
        return cls.from_parts(parts.load_random(preset, seed, device, dtype))

    # -- what a call uses ----------------------------------------------------------------------------
    def memory_for(self, memory: MemorySpec | str | dict | None = None) -> MemorySpec:
        """None: the trained memory. A policy name: the trained options if it is the trained policy, else the
        policy's defaults. A dict: overrides of the trained memory (`policy` may name another policy). A
        `Memory` from a named constructor (`cf.Memory.slow_fast(slow=12)`): the same, its given options over
        the trained ones when it names the trained policy; `cf.Memory.slow_fast(slow=12).exact()`: exactly as
        given (the policy's defaults for the rest)."""
        return resolve_memory(self.memory, memory, self.preset.video.chunk_frames)

    def sampling_for(self, sampling: SamplingConfig | dict | None = None) -> SamplingConfig:
        """None: the trained sampling; a dict: overrides of it (shift, denoising_steps, guidance_scale, ...)."""
        if sampling is None:
            return self.sampling
        if isinstance(sampling, SamplingConfig):
            return sampling
        if not isinstance(sampling, dict):
            raise UserError(f"sampling must be a SamplingConfig or a dict of options, got {type(sampling).__name__}")
        return from_dict(SamplingConfig, {**dataclasses.asdict(self.sampling), **sampling}, where="sampling")

    def stream_options(
        self,
        memory: MemorySpec | str | dict | None = None,
        sampling: SamplingConfig | dict | None = None,
        seconds: float | None = None,
        init_pixels: torch.Tensor | None = None,
    ) -> StreamOptions:
        """A call's memory, sampling and length, checked (`limits.check_stream`: ranges, and the context memory
        against what the device has free) before anything is allocated. `init_pixels`: a clip the memory holds too."""
        video = self.preset.video
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
            raise UserError(f"seconds must be a number (or None: until closed), got {shorten(repr(seconds))}")
        num_frames = None if seconds is None else video.latent_frames_for(seconds)
        spec, sampling = self.memory_for(memory), self.sampling_for(sampling)
        init_frames = 0 if init_pixels is None else 1 + (init_pixels.shape[2] - 1) // video.vae_stride_t
        max_frames = None if num_frames is None else num_frames + init_frames
        check_stream(
            spec, sampling, self.preset.model, video, dtype=self.model.dtype, device=self.device, max_frames=max_frames
        )
        return StreamOptions(spec, sampling, num_frames)

    def check_prompt(self, prompt: str) -> str:
        """The prompt stripped, or a UserError if it is empty or the model cannot read it."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("empty prompt")
        if self.prompt_check is not None:
            self.prompt_check(prompt)
        return prompt.strip()

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Text embeddings per prompt, as the DiT's device and dtype (cached: a prompt is encoded once)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._texts]
        if new:
            self._texts.update(parts.encode_prompts(self, new))
        out = {p: self._texts[p] for p in prompts}
        for p in out:  # most recently used last; a long-running server keeps only the newest prompts
            self._texts[p] = self._texts.pop(p)
        while len(self._texts) > MAX_CACHED_PROMPTS:
            self._texts.pop(next(iter(self._texts)))
        return out

    def place(self, switches: Mapping[float, str] | Sequence[Prompt] | None, flush: bool = False) -> list[Prompt]:
        """Prompt switches at video seconds onto the nearest chunk boundaries (half rounds up)."""
        if switches is None:
            return []
        if not isinstance(switches, Mapping):
            if isinstance(switches, (str, bytes)) or not all(isinstance(p, Prompt) for p in switches):
                raise UserError(
                    f"switches must be a dict of seconds of video to prompts, e.g. {{10.0: {self.example_prompt!r}}}, "
                    f"got {_described(switches)}"
                )
            return [Prompt(self.check_prompt(p.text), p.chunk, p.flush) for p in switches]
        video = self.preset.video
        chunk_s = video.chunk_frames / video.latent_fps
        placed = []
        for at, text in sorted(switches.items()):
            if isinstance(at, bool) or not isinstance(at, (int, float)) or not at > 0 or not math.isfinite(at):
                raise UserError(f"switches: a switch time must be a positive number of seconds of video, got {at!r}")
            placed.append(Prompt(self.check_prompt(text), math.floor(at / chunk_s + 0.5), flush))
        return placed

    # -- generating ----------------------------------------------------------------------------------
    @checked_keywords("Pipeline.stream")
    def stream(
        self,
        prompt: str,
        seconds: float | None = None,
        *,
        seed: int = 0,
        memory: MemorySpec | str | dict | None = None,
        sampling: SamplingConfig | dict | None = None,
        negative_prompt: str | None = None,
        switches: Mapping[float, str] | Sequence[Prompt] | None = None,
        flush_on_switch: bool = False,
        recache: str = "window",
        init_video: str | Path | None = None,
        init_image: str | Path | None = None,
        known_frames: Mapping[int, torch.Tensor] | None = None,
        decode: bool = True,
        progress: bool | str = False,
    ) -> Generation:
        """A live generation of `seconds` (None: until closed) from `prompt`.

        `switches` maps video seconds to prompts (each lands on the nearest chunk boundary); `init_video` /
        `init_image` is continued (encoded and prefilled into memory, not re-emitted); `known_frames` maps
        latent frames (counted from the start) to clean latents the video must show (evaluation
        protocols); `decode=False` skips the codec (benchmarks of the transformer alone); `progress=True` (or a
        label) shows a tqdm bar of chunks on stderr."""
        prompt = self.check_prompt(prompt)
        check_seconds(seconds, allow_none=True)
        check_seed(seed)
        init_pixels, _ = read_init_clip(self.preset.video, init_video, init_image)
        options = self.stream_options(memory, sampling, seconds, init_pixels)
        return Generation(
            self,
            prompt,
            options.num_frames,
            seed=seed,
            memory=options.memory,
            sampling=options.sampling,
            negative_prompt=negative_prompt,
            switches=self.place(switches, flush_on_switch),
            recache=recache,
            flush_on_switch=flush_on_switch,
            init_pixels=init_pixels,
            known_frames=known_frames,
            decode=decode,
            progress=progress,
        )

    def __call__(self, prompt: str, seconds: float, **kwargs) -> Video:
        """Generate `seconds` of video at once (see `stream` for the options, `progress=True` among them)."""
        if seconds is None:
            raise UserError(
                "seconds=None would never return from pipe(...): give a length, or stream without end with "
                "pipe.stream(prompt, None) and close() it"
            )
        check_seconds(seconds)
        for key in kwargs:
            if key not in _STREAM_KEYWORDS:
                raise unknown_keyword("pipe", key, ["prompt", "seconds", *_STREAM_KEYWORDS])
        generation = self.stream(prompt, seconds, **kwargs)
        chunks = list(generation)
        frames = np.concatenate([c.frames for c in chunks])
        return Video(frames, self.preset.video.fps, chunks, generation.record(chunks))

    def save(self, video: Video, path: str | Path) -> Path:
        """Write `video` as an mp4 with its JSON sidecar beside it, as a pair and atomically (the CLI's writer)."""
        return save_video(path, video.frames, video.fps, video.record)


# The keywords `pipe(prompt, seconds, ...)` passes on to `stream` (checked before any work).
_STREAM_KEYWORDS = [n for n in inspect.signature(Pipeline.stream).parameters if n not in ("self", "prompt", "seconds")]


def check_seconds(seconds, allow_none: bool = False) -> None:
    """A video length: a positive, finite number of seconds (None: unbounded, where `allow_none`)."""
    if seconds is None and allow_none:
        return
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not 0 < seconds < math.inf:
        kind = "None (until closed) or " if allow_none else ""
        raise UserError(f"{option('seconds')} must be {kind}a positive, finite number of seconds, got {seconds!r}")


def check_seed(seed) -> None:
    """A generation seed: a whole number torch.Generator takes (64 bits, not negative)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise UserError(f"{option('seed')} must be a whole number in [0, 2**64), got {seed!r}")


def _described(value) -> str:
    """A value's type for an error, with its items' type for a list or tuple (`list of tuple`)."""
    kind = type(value).__name__
    if isinstance(value, (list, tuple)) and value:
        kind += f" of {type(value[0]).__name__}"
    return kind


def resolve_memory(trained: MemorySpec, memory: MemorySpec | str | dict | None, chunk_frames: int) -> MemorySpec:
    """The memory of a call: see `Pipeline.memory_for`. Sizes are checked here, before any work."""
    if isinstance(memory, MemorySpec) and memory.given is not None:
        memory = {"policy": memory.name, **memory.overrides()}  # a named constructor's options, as overrides
    if isinstance(memory, MemorySpec):
        spec = memory
    else:
        if memory is None or isinstance(memory, str):
            memory = {} if memory is None else {"policy": memory}
        if not isinstance(memory, dict):
            raise UserError(
                f"memory must be None (the trained memory), a policy name ({', '.join(POLICY_OPTIONS)}), a dict of "
                f"options or a cf.Memory, got {type(memory).__name__}"
            )
        options = dict(memory)
        name = options.pop("policy", trained.name)
        base = _non_default(trained) if name == trained.name else {}
        spec = make_spec(name, {**base, **options})
    tier_params(spec, chunk_frames)
    return spec


def _non_default(spec: MemorySpec) -> dict:
    """A spec's options that differ from its policy's defaults (so that `layout=released`, which fixes some
    switches, can still be asked for on top of a trained memory)."""
    defaults = make_spec(spec.name).to_dict()
    return {k: v for k, v in spec.to_dict().items() if k != "policy" and defaults.get(k) != v}


# -- init video / image --------------------------------------------------------------------------------------
def read_init_clip(
    video: VideoConfig, init_video: str | Path | None = None, init_image: str | Path | None = None
) -> tuple[torch.Tensor | None, dict | None]:
    """The init video or image as [1, 3, T, H, W] in [-1, 1] at the preset's pixel size, and what was used."""
    if init_video and init_image:
        raise UserError(f"use either {option('init_video')} or {option('init_image')}, not both")
    if not (init_video or init_image):
        return None, None
    if init_image:
        frames, kind, path = _read_image(init_image), "image", init_image
    else:
        frames, kind, path = read_video(init_video)[0], "video", init_video
        # The end of the clip is what the generation continues; keep 1 + k * stride_t whole frames of it.
        keep = min(len(frames), MAX_INIT_PIXEL_FRAMES)
        frames = frames[-(1 + (keep - 1) // video.vae_stride_t * video.vae_stride_t) :]
    height, width = video.latent_height * video.vae_stride_hw, video.latent_width * video.vae_stride_hw
    pixels = _fit(torch.from_numpy(frames).permute(0, 3, 1, 2), height, width) / 127.5 - 1.0
    info = {"kind": kind, "path": str(path), "source_size": list(frames.shape[1:3]), "pixel_frames": len(frames)}
    return pixels.permute(1, 0, 2, 3)[None], info


def _read_image(path: str):
    import imageio.v3 as iio
    import numpy as np

    try:
        image = np.asarray(iio.imread(path))
    except Exception as err:  # imageio raises many types for missing or broken files
        raise UserError(f"cannot read image {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)  # greyscale
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise UserError(f"image {path} has shape {list(image.shape)}; expected a single RGB(A) or grey image")
    return image[None, :, :, :3].astype(np.uint8)  # drop alpha


def _fit(frames: torch.Tensor, height: int, width: int, batch: int = 16) -> torch.Tensor:
    """uint8 [T, 3, h, w] -> float [T, 3, height, width]: scale to cover, then centre crop (no distortion).
    A few frames at a time, so a long HD clip never exists as one float tensor."""
    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, math.ceil(h * scale)), max(width, math.ceil(w * scale)))
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    out = []
    for part in frames.split(batch):
        resized = F.interpolate(part.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        out.append(resized[:, :, top : top + height, left : left + width].clamp(0, 255))
    return torch.cat(out)
