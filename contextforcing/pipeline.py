"""The front door: load a model once, call it with a prompt, get frames; or stream decoded chunks live.

    import contextforcing as cf
    pipe = cf.Pipeline.from_pretrained()                       # the embedded world model
    hold, pan = "warm room, hold, lights on, black ball", "warm room, pan left, lights on, black ball"
    video = pipe(hold, seconds=20, seed=0, progress=True)      # frames [T, H, W, 3] uint8, plans, timings
    for chunk in pipe.stream(hold, seconds=120, memory=cf.Memory.slow_fast(slow=12), switches={40.0: pan}):
        chunk.frames, chunk.plan                               # pixels and the memory's plan, as they finish
    pipe.save(video, "out.mp4")

A `Pipeline` holds the parts (DiT, text encoder, codec) and what the model was trained with (memory,
sampling), which every call uses unless told otherwise. Every pipeline comes from `from_pretrained` (the CLI's
commands, the live viewer and the evaluation scripts too; `contextforcing.parts` reads the files). `stream`
checks a call and returns a `Generation` (`contextforcing.sampling.generation`): the one chunk loop, an
iterator of decoded chunks that also takes prompt switches while it runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from contextforcing import parts
from contextforcing.config import SamplingConfig, from_dict
from contextforcing.errors import UserError, checked_keywords, option, shorten, unknown_keyword
from contextforcing.io.video import read_init_clip, save_video
from contextforcing.memory.spec import POLICY_OPTIONS, MemorySpec, make_spec, tier_params
from contextforcing.parts import ModelSource, Parts
from contextforcing.runtime.limits import check_stream
from contextforcing.runtime.threads import use_threads
from contextforcing.sampling.generation import DecodedChunk, Generation, StreamOptions, Video
from contextforcing.sampling.switches import Prompt, as_prompts, place_prompts

__all__ = ["DecodedChunk", "Generation", "Pipeline", "Prompt", "Video"]

# Text embeddings kept per pipeline (UMT5's are 4 MiB each): enough for any prompt script, bounded for a server.
MAX_CACHED_PROMPTS = 64


@dataclass
class Pipeline(Parts):
    """A model ready to generate: its `Parts`, and the memory and sampling it was trained with (defaults)."""

    _texts: dict = field(default_factory=dict, repr=False)

    # -- sources -------------------------------------------------------------------------------------
    @classmethod
    @checked_keywords("Pipeline.from_pretrained")
    def from_pretrained(
        cls,
        source: str | Path | None = None,
        *,
        checkpoint: str | Path | None = None,
        weights: str | Path | None = None,
        preset: str | None = None,
        random_init: bool = False,
        seed: int = 0,
        memory: MemorySpec | str | dict | None = None,
        device: str | None = None,
        dtype: str | None = None,
        use_ema: bool | None = None,
        lora: str | Path | None = None,
        lora_alpha: float | None = None,
        num_heads: int | None = None,
        checkpoint_format: str | None = None,
        threads: int | None = None,
    ) -> "Pipeline":
        """Nothing given: the embedded world model (contextforcing/assets). `source`: a local Wan2.1 directory
        (UMT5, VAE and the base DiT), with `checkpoint` a distilled causal DiT in any format `model.checkpoints`
        reads (Self-Forcing, LongLive, Causal Forcing, Context Forcing). `weights`: a checkpoint of the `world`
        preset (or `preset`, e.g. `world-screen`) with the embedded model's parts (a training run's export).
        `random_init`: random weights of `preset` (default tiny) drawn from `seed`, with the weight-free parts.
        `memory`: the default memory of every call (None: what the model was trained with; see `memory_for`).
        `threads`: torch's CPU threads for this process (None: `contextforcing.runtime.threads`' rule)."""
        use_threads(threads)
        dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
        model = ModelSource(
            preset=preset,
            source=source,
            checkpoint=checkpoint,
            weights=weights,
            random_init=random_init,
            seed=seed,
            checkpoint_format=checkpoint_format,
            use_ema=use_ema,
            lora=lora,
            lora_alpha=lora_alpha,
            num_heads=num_heads,
        )
        loaded = parts.load(model, device, dtype)
        pipe = cls(**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(Parts)})
        if memory is not None:
            pipe.memory = pipe.memory_for(memory)
        return pipe

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
        """A randomly initialised model of `preset` (tests, benchmarks) with the weight-free parts:
        `from_pretrained(preset=preset, random_init=True, seed=seed)`."""
        return cls.from_pretrained(
            preset=preset, random_init=True, seed=seed, device=device, dtype=dtype, threads=threads
        )

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
        video = self.preset.video
        init_pixels, _ = read_init_clip(video, init_video, init_image)
        options = self.stream_options(memory, sampling, seconds, init_pixels)
        chunks = None if options.num_frames is None else -(-options.num_frames // video.chunk_frames)
        asked = as_prompts(switches, flush_on_switch, self.example_prompt)
        asked = [Prompt(prompt), *(dataclasses.replace(p, text=self.check_prompt(p.text)) for p in asked)]
        prompts = place_prompts(asked, video, chunks)
        init = None if init_pixels is None else self.codec.encode(init_pixels.to(self.device)).float()
        return Generation(
            self,
            prompts,
            options,
            seed=seed,
            negative_prompt=negative_prompt,
            recache=recache,
            flush_on_switch=flush_on_switch,
            init_latents=init,
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
        return Video.of(chunks, self.preset.video.fps, generation.record(chunks))

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
