"""One streaming generation: the chunk loop (`Generation`), the chunks it yields (`DecodedChunk`) and a finished
video (`Video`).

`Pipeline.stream` checks a call and builds a `Generation`; the CLI's `generate` and `bench`, the live viewer,
the evaluation protocols and the scripts all iterate one. Each `next(generation)`:

1. the prompt switches due at this chunk (`VideoStream.switch_prompt`: new text, recent frames re-encoded);
2. the chunk's noise, the frames it must show (`known_frames`) and, for a room-anchored model, its headings;
3. `VideoStream.step`: denoise against the memory, commit the chunk to it;
4. the codec's streaming decode -> a `DecodedChunk`: pixels, latents, the memory's plan and update, timings.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch

from contextforcing.config import Preset, SamplingConfig
from contextforcing.errors import UserError
from contextforcing.io.provenance import provenance
from contextforcing.io.video import to_uint8_frames
from contextforcing.memory.headings import chunk_headings
from contextforcing.memory.plan import ChunkPlan, MemoryUpdate
from contextforcing.memory.spec import MemorySpec, check_recache
from contextforcing.sampling.stream import SwitchEvent, VideoStream, known_in_chunk
from contextforcing.sampling.switches import Prompt, place_prompts


class Door(Protocol):
    """What a generation uses of the pipeline that opened it (`contextforcing.pipeline.Pipeline`)."""

    preset_name: str
    preset: Preset
    model: torch.nn.Module
    codec: object  # `encode` and `stream_decoder` (contextforcing/codecs)
    device: torch.device
    weights: str
    weights_choice: dict | None
    camera: Callable[[str], float] | None  # a room-anchored model's: prompt -> heading step per latent frame

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]: ...

    def check_prompt(self, prompt: str) -> str: ...


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
    switch: SwitchEvent | None = None  # the prompt switch that took effect at this chunk

    def trace(self) -> dict:
        """The JSON record of this chunk (sidecars, reports, the live viewer). `copies` names the slow tier's own
        copies as [frame, position] (a frame may be attended twice), so that `sidecar.read_plan` gets the plan back."""
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
    chunks: list[DecodedChunk]  # each chunk's `frames` is a view of `frames`: the pixels are kept once
    record: dict  # the sidecar: prompts, seed, config, timings, events, memory trace

    @classmethod
    def of(cls, chunks: list[DecodedChunk], fps: int, record: dict) -> "Video":
        """The chunks' frames joined into one array, each chunk's `frames` then a view of its part of it."""
        frames = np.concatenate([c.frames for c in chunks])
        for chunk in chunks:
            chunk.frames = frames[chunk.first_frame : chunk.first_frame + len(chunk.frames)]
        return cls(frames, fps, chunks, record)

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
class MemoryFootprint:
    """What a generation's context memory holds (`bench`, `limits.check_stream`'s count)."""

    kv_bytes: int  # the stored keys and values
    view_bytes: int  # the rotated-key buffers that read them
    key_frames: int  # key frames one attention pass computes over (the last chunk's, layer 0)
    rotations: int  # context rotations so far


class Generation:
    """One streaming generation: iterate it to get `DecodedChunk`s as they finish.

    `switch(prompt)` changes the prompt from the next chunk on (the live viewer types into it);
    `seconds=None` streams until `close()`. The memory's plan of each chunk comes with its pixels."""

    def __init__(
        self,
        pipe: Door,
        prompts: Sequence[Prompt],
        options: StreamOptions,
        *,
        seed: int,
        negative_prompt: str | None = None,
        recache: str = "window",
        flush_on_switch: bool = False,
        init_latents: torch.Tensor | None = None,
        known_frames: Mapping[int, torch.Tensor] | None = None,
        decode: bool = True,
        progress: bool | str = False,
    ):
        """`prompts`: the first at chunk 0 and the switches on their chunks (`switches.place_prompts`)."""
        self.pipe, self.memory, self.sampling, self.seed, self.decode = (
            pipe,
            options.memory,
            options.sampling,
            seed,
            decode,
        )
        self.num_frames = options.num_frames
        self.chunks_total = None if self.num_frames is None else -(-self.num_frames // pipe.preset.video.chunk_frames)
        check_recache(self.memory, recache, flush_on_switch or any(p.flush for p in prompts))
        self.flush_on_switch = flush_on_switch
        self.prompts, self._pending = [prompts[0]], list(prompts[1:])
        self._stream = self._new_stream(negative_prompt, recache, init_latents)
        self.decoder = pipe.codec.stream_decoder()
        self.init_frames = 0
        if init_latents is not None:
            self._stream.prefill(init_latents)
            # Not re-emitted, but run through the decoder so its causal cache continues from the init clip:
            # the first generated latent frame then decodes to stride_t frames that follow on smoothly.
            self.decoder.decode(init_latents)
            self.init_frames = init_latents.shape[2]
        self.known_frames = known_frames
        self.heading = 0.0  # the camera's heading at the last generated frame (room-anchored models)
        self.camera_steps: dict[str, float] = {}  # prompt -> its camera's heading step, read once per prompt
        self._read_cameras([*self.prompts, *self._pending])
        self.generator = torch.Generator(pipe.device).manual_seed(seed)
        self.index, self.frames_emitted, self.closed = 0, 0, False
        self.bar = None if not progress else progress_bar(self.chunks_total, progress)

    def _new_stream(self, negative_prompt: str | None, recache: str, init: torch.Tensor | None) -> VideoStream:
        """The engine, with every prompt of the generation encoded up front."""
        pipe, guided = self.pipe, self.sampling.guidance_scale != 1.0
        negative, prompt = negative_prompt or "", self.prompts[0].text
        texts = pipe.encode([prompt, *(p.text for p in self._pending)] + ([negative] if guided else []))
        max_frames = None if self.num_frames is None else self.num_frames + (0 if init is None else init.shape[2])
        return VideoStream(
            pipe.model,
            texts[prompt],
            self.memory,
            pipe.preset.video,
            self.sampling,
            max_frames=max_frames,
            uncond_text=texts.get(negative) if guided else None,
            euler_num_steps=self.sampling.euler_steps or None,
            recache=recache,
        )

    # -- what the callers read ------------------------------------------------------------------------------
    @property
    def prompt(self) -> str:
        return self.prompts[-1].text

    @property
    def frame(self) -> int:
        """The next absolute latent frame."""
        return self._stream.frame

    @property
    def recache(self) -> str:
        return self._stream.recache

    @property
    def steps(self) -> int:
        """Denoising passes per chunk (the commit pass excluded)."""
        return len(self._stream.steps)

    @property
    def branches(self) -> int:
        """Conditioning branches each pass runs: 2 with classifier-free guidance, else 1."""
        return len(self._stream.branches)

    @property
    def batch(self) -> int:
        return self._stream.batch

    def memory_footprint(self) -> MemoryFootprint:
        memory = self._stream.memory
        return MemoryFootprint(memory.nbytes(), memory.view_nbytes(), memory.key_frames(), memory.rotations)

    # -- driving it ------------------------------------------------------------------------------------------
    def switch(self, prompt: str, flush: bool | None = None) -> int:
        """Switch to `prompt` from the next chunk on; returns the chunk it takes effect from."""
        if self.closed:
            raise UserError("the generation is closed: it takes no more prompt switches")
        prompt = self.pipe.check_prompt(prompt)
        flush = self.flush_on_switch if flush is None else flush
        check_recache(self.memory, self.recache, flush)
        chunk = max([self.index] + [p.chunk + 1 for p in self._pending])
        self._pending += place_prompts([Prompt(prompt, chunk, flush)], self.pipe.preset.video, self.chunks_total)
        self._read_cameras(self._pending[-1:])
        return chunk

    def _read_cameras(self, prompts: Sequence[Prompt]) -> None:
        """Each prompt's camera step, read (parsed) when the prompt is given rather than at every chunk."""
        if self.pipe.camera is not None:
            self.camera_steps.update({p.text: self.pipe.camera(p.text) for p in prompts})

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
        chunk = self._next_chunk(self._take_switches())
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.frame / self.pipe.preset.video.latent_fps:.2f} s of video", refresh=False)
            self.bar.update()
        return chunk

    def _take_switches(self) -> SwitchEvent | None:
        """The switches due at this chunk, taken by the engine; the last one's event (None: no switch here)."""
        event = None
        while self._pending and self._pending[0].chunk <= self.index:
            p = self._pending.pop(0)
            event = self._stream.switch_prompt(self.pipe.encode([p.text])[p.text], flush=p.flush)
            self.prompts.append(dataclasses.replace(p, chunk=self.index))
        return event

    @torch.no_grad()
    def _next_chunk(self, switch: SwitchEvent | None) -> DecodedChunk:
        frames = self._stream.chunk_frames
        if self.num_frames is not None:
            frames = min(frames, self.num_frames - self.index * self._stream.chunk_frames)
        noise = self._stream.noise(frames, self.generator)
        start = self._stream.frame
        known = None
        if self.known_frames:
            known = known_in_chunk(self.known_frames, start - self.init_frames, noise)
        began = time.perf_counter()
        latents = self._stream.step(noise, self.generator, known=known, headings=self._headings(start, frames))
        if latents.is_cuda:
            torch.cuda.synchronize(latents.device)
        generated = time.perf_counter()
        pixels = to_uint8_frames(self.decoder.decode(latents.float())[0]) if self.decode else _NO_FRAMES
        done = time.perf_counter()
        chunk = DecodedChunk(
            index=self.index,
            start=start,
            prompt=self.prompt,
            frames=pixels,
            first_frame=self.frames_emitted,
            latents=latents,
            plan=self._stream.last_plan,
            update=self._stream.last_update,
            seconds=generated - began,
            decode_seconds=done - generated,
            switch=switch,
        )
        self.index += 1
        self.frames_emitted += len(pixels)
        return chunk

    def _headings(self, start: int, frames: int) -> list[list[float]] | None:
        """The chunk's camera headings for a room-anchored model, from the prompt's camera (None: no camera)."""
        if self.pipe.camera is None:
            return None
        headings = chunk_headings(self.heading, self.camera_steps[self.prompt], start, frames)
        self.heading = headings[-1]
        return [headings]

    # -- the record ------------------------------------------------------------------------------------------
    def record(self, chunks: Sequence[DecodedChunk], interrupted: bool = False) -> dict:
        """The sidecar of this generation so far (the JSON edge of plans, prompts and timings)."""
        video = self.pipe.preset.video
        end = chunks[-1].start + chunks[-1].plan.frames if chunks else self.init_frames  # what `chunks` reach
        return {
            "prompt": self.prompts[0].text,
            "switches": [p.switch_json(video) for p in self.prompts[1:] if p.chunk < len(chunks)],
            "seed": self.seed,
            "weights": self.pipe.weights,
            "weights_choice": self.pipe.weights_choice,
            "preset": self.pipe.preset_name,
            "config": self._config(),
            "latent_frames": sum(c.plan.frames for c in chunks),
            "pixel_frames": sum(len(c.frames) for c in chunks),
            "fps": video.fps,
            "interrupted": interrupted,
            "chunk_seconds": [c.seconds for c in chunks],
            "decode_seconds": [c.decode_seconds for c in chunks],
            "events": [e.to_json() for e in self._stream.events if e.frame < end],
            "memory_trace": [c.trace() for c in chunks],
            "provenance": provenance(),
        }

    def _config(self) -> dict:
        pipe = self.pipe
        return {
            "model": dataclasses.asdict(pipe.preset.model),
            "video": dataclasses.asdict(pipe.preset.video),
            "sampling": dataclasses.asdict(self.sampling),
            "memory": self.memory.to_dict(),
            "switch": {"recache": self.recache, "flush": self.flush_on_switch},
            "device": str(pipe.device),
            "dtype": str(pipe.model.dtype).replace("torch.", ""),
        }


_NO_FRAMES = np.zeros((0, 0, 0, 3), np.uint8)


def progress_bar(chunks: int | None, progress: bool | str):
    """A tqdm bar of chunks on stderr (`progress` a string: its label); open-ended when `chunks` is None."""
    from tqdm import tqdm

    label = progress if isinstance(progress, str) else "generate"
    return tqdm(total=chunks, unit="chunk", desc=label, file=sys.stderr, dynamic_ncols=True)
