"""The streaming engine: one chunk routine (`VideoStream.step`), prompt switches and prefill.

Per chunk of latent frames: few-step denoising against the context memory (predict x0, re-noise to
the next step), then one clean commit pass at t = 0 that writes the chunk's K/V into the memory and
lets the policy update its tiers. Inference drives it through `sampling.generation.Generation` (the one
chunk loop: noise, known frames, decoding, prompts); training rollouts and stages call `step` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from contextforcing.config import SamplingConfig, VideoConfig
from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.cross import CrossAttentionCache
from contextforcing.memory.plan import ChunkPlan, MemoryUpdate
from contextforcing.memory.spec import MemorySpec, check_recache
from contextforcing.model.wan import CausalWanModel
from contextforcing.sampling.samplers import (
    FlowMatchSchedule,
    KnownFrames,
    add_noise,
    euler_steps,
    guided,
    sample_euler,
    sample_few_step,
)

Headings = Sequence[Sequence[float]]  # [B][frames]: a camera heading (tokens) per sample and latent frame


@dataclass
class Branch:
    """One conditioning stream: a text (a cross-attention cache, or the tensor itself when training) and the
    context memory it builds; `denoise` is the model's flow under them."""

    model: CausalWanModel = field(repr=False)
    text: CrossAttentionCache | torch.Tensor
    memory: ContextMemory

    def denoise(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The flow at noisy latents x [B, C, frames, H, W], every frame at timestep `t` (a sampler's `Denoise`)."""
        ts = torch.full((x.shape[0], x.shape[2]), float(t), device=x.device)
        return self.model(x, ts, self.text, memory=self.memory)


@dataclass(frozen=True)
class SwitchEvent:
    """A prompt switch as the stream took it: the first frame under the new prompt, the frames it re-encoded."""

    frame: int  # first absolute latent frame generated under the new prompt
    recached: tuple[int, ...]  # frames re-encoded under the new prompt (`recache`)
    flush: bool  # sink and slow memory dropped
    recache: str  # window | longlive

    @classmethod
    def from_json(cls, event: dict) -> "SwitchEvent":
        """A sidecar's `events` entry of a switch (a replay reads them back)."""
        flush, recache = bool(event.get("flush", False)), str(event.get("recache", "window"))
        return cls(int(event["frame"]), tuple(int(f) for f in event.get("recached", [])), flush, recache)

    def to_json(self) -> dict:
        return {
            "event": "switch",
            "frame": self.frame,
            "recached": list(self.recached),
            "flush": self.flush,
            "recache": self.recache,
        }


@dataclass(frozen=True)
class PrefillEvent:
    """Given clean latents committed before the first generated chunk (an init video or image)."""

    frames: int
    frame: int = 0  # the first latent frame it committed

    def to_json(self) -> dict:
        return {"event": "prefill", "frames": self.frames}


class VideoStream:
    """Explicit state of one streaming generation: model, memories, texts, and the frame counter."""

    def __init__(
        self,
        model: CausalWanModel,
        text: torch.Tensor,
        memory: MemorySpec,
        video: VideoConfig,
        sampling: SamplingConfig = SamplingConfig(),
        *,
        uncond_text: torch.Tensor | None = None,
        euler_num_steps: int | None = None,
        max_frames: int | None = None,
        trainable: bool = False,
        recache: str = "window",
        reencode_noise: bool = False,
        fixed_shapes: bool = False,
    ):
        """`trainable`: a training rollout, some of whose chunks keep an autograd graph; the text is then
        handed to the model as a tensor on every pass instead of a cross-attention cache.
        `recache`: what a prompt switch re-encodes, `window` (ours) or `longlive` (LongLive 1.0's; see
        `TieredPolicy.recache`).
        `reencode_noise`: the commit pass of a generated chunk reads x0 noised to the commit timestep's table
        entry, as Self-Forcing's and Context Forcing's training rollouts do (docs/training.md); inference
        reads x0.
        `fixed_shapes`: every pass reads the same memory shapes (`ContextMemory`), for torch.compile and CUDA graphs.
        """
        check_recache(memory, recache)
        self.model, self.video, self.sampling, self.spec = model, video, sampling, memory
        self.trainable, self.recache, self.reencode_noise = trainable, recache, reencode_noise
        self.fixed_shapes = fixed_shapes
        self.schedule = FlowMatchSchedule(sampling.shift, sampling.num_train_timesteps)
        if euler_num_steps:  # multi-step (teacher) sampling
            self.steps = euler_steps(euler_num_steps, self.schedule)
        elif sampling.warp_denoising_steps:
            self.steps = self.schedule.warp(sampling.denoising_steps)
        else:
            self.steps = list(sampling.denoising_steps)
        self.multistep = bool(euler_num_steps)
        self.batch, self.max_frames, self.chunk_frames = text.shape[0], max_frames, video.chunk_frames
        self.device, self.dtype = text.device, model.dtype
        use_cfg = uncond_text is not None and sampling.guidance_scale != 1.0
        self.branches = [Branch(model, self._text(text), self._new_memory())]
        self.denoise = self.branches[0].denoise  # what the sampler calls: (x, t) -> flow
        if use_cfg:
            self.branches.append(Branch(model, self._text(uncond_text), self._new_memory()))
            self.denoise = guided(self.branches[0].denoise, self.branches[1].denoise, sampling.guidance_scale)
        self._set_prompt(text)
        self.frame = 0  # next absolute latent frame
        self.recent: dict[int, torch.Tensor] = {}  # clean latents of the frames a prompt switch re-encodes
        self.events: list[SwitchEvent | PrefillEvent] = []
        self.last_plan: ChunkPlan | None = None  # the last chunk's plan and update (branch 0's memory)
        self.last_update: MemoryUpdate | None = None

    @property
    def memory(self) -> ContextMemory:
        return self.branches[0].memory

    def _text(self, text: torch.Tensor) -> CrossAttentionCache | torch.Tensor:
        return text if self.trainable else CrossAttentionCache(text)

    def _new_memory(self) -> ContextMemory:
        layout = MemoryLayout.for_model(self.model.config, self.video)
        rotation = self.model.key_rotation(self.video.latent_height, self.video.latent_width)
        return ContextMemory(
            self.spec,
            layout,
            key_rotation=rotation,
            batch=self.batch,
            device=self.device,
            dtype=self.dtype,
            max_frames=self.max_frames,
            headings=self.model.config.room_anchored,
            fixed_shapes=self.fixed_shapes,
        )

    def _set_prompt(self, text: torch.Tensor) -> None:
        """Every branch's memory ranks by the conditional prompt, so guided branches attend the same frames."""
        for branch in self.branches:
            branch.memory.set_prompt(text)

    def noise(self, frames: int, generator: torch.Generator | None) -> torch.Tensor:
        shape = (self.batch, self.model.config.in_dim, frames, self.video.latent_height, self.video.latent_width)
        return torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)

    # -- the chunk routine -------------------------------------------------------------------------
    def step(
        self,
        noise: torch.Tensor,
        generator: torch.Generator | None = None,
        exit_step: int | None = None,
        known: KnownFrames | None = None,
        headings: Headings | None = None,
    ) -> torch.Tensor:
        """Generate the next chunk from `noise` [B, C, frames, H, W] and commit it to memory.

        `known` gives some frames of the chunk (replacement conditioning); a chunk that is wholly known
        skips denoising and is only committed, as `prefill` does. `headings`: the camera heading of each
        frame per sample ([B][frames] floats, tokens) for a room-anchored model (None: 0)."""
        frames = noise.shape[2]
        self._begin_chunk(frames, headings)
        if known is not None and known.all_known:
            x0 = known.latents.to(noise.dtype)
        elif self.multistep:
            x0 = sample_euler(self.denoise, noise, self.steps, self.schedule, known)
        else:
            x0 = sample_few_step(self.denoise, noise, self.steps, self.schedule, generator, exit_step, known)
        clean = x0.detach()  # x0 itself keeps its graph for a training rollout's loss
        self._commit(clean, self._reencoded(clean, generator) if self.reencode_noise else None)
        return x0

    def _reencoded(self, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """What the commit pass of a generated chunk reads with `reencode_noise`: add_noise(x0, eps, sigma(commit
        t)) with sigma the nearest table entry (Self-Forcing `context_noise: 0`: 0.995 x0 + 0.005 eps at shift 5),
        eps drawn right after the chunk as Self-Forcing draws it (without `reencode_noise` the commit reads x0)."""
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return add_noise(x0, eps, self.schedule.sigma(self.sampling.commit_timestep))

    def teacher_forced(
        self, x: torch.Tensor, t: torch.Tensor, clean: torch.Tensor, headings: Headings | None = None
    ) -> torch.Tensor:
        """A chunk whose clean latents are known (regression onto a teacher's trajectory): the model's flow at
        noisy x [B, C, frames, H, W] and timesteps t [B, frames] against the memory as it stands (under grad
        when enabled), then `clean` is committed as the chunk, as `step` commits a generated one."""
        self._begin_chunk(x.shape[2], headings)
        flow = self.model(x, t, self.branches[0].text, memory=self.memory)
        self._commit(clean.detach())
        return flow

    def _begin_chunk(self, frames: int, headings: Headings | None) -> None:
        plans = [branch.memory.begin_chunk(self.frame, frames, headings) for branch in self.branches]
        self.last_plan = plans[0]

    @torch.no_grad()
    def _commit(self, x0: torch.Tensor, seen: torch.Tensor | None = None) -> None:
        """Clean pass at the commit timestep: write this chunk's K/V (computed from `seen`, default x0), then
        let the policies update."""
        frames = x0.shape[2]
        ts = torch.full((x0.shape[0], frames), self.sampling.commit_timestep, device=x0.device)
        updates = []
        for branch in self.branches:
            self.model(x0 if seen is None else seen, ts, branch.text, memory=branch.memory, commit=True, flow=False)
            updates.append(branch.memory.commit())
        self.last_update = updates[0]
        for i in range(frames):
            self.recent[self.frame + i] = x0[:, :, i : i + 1]
        self.frame += frames
        keep = set(self.memory.recache_frames(self.frame, self.recache))
        self.recent = {f: x for f, x in self.recent.items() if f in keep}

    # -- conditioning changes ----------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, latents: torch.Tensor, headings: Headings | None = None) -> None:
        """Commit given clean latents [B, C, F, H, W] chunk by chunk (video continuation, I2V start), with their
        camera headings ([B][F] floats) for a room-anchored model."""
        for begin in range(0, latents.shape[2], self.chunk_frames):
            part = latents[:, :, begin : begin + self.chunk_frames].to(self.device)
            part_headings = None if headings is None else [h[begin : begin + part.shape[2]] for h in headings]
            self._begin_chunk(part.shape[2], part_headings)
            self._commit(part)
        self.events.append(PrefillEvent(latents.shape[2], self.frame - latents.shape[2]))

    @torch.no_grad()
    def switch_prompt(self, text: torch.Tensor, flush: bool = False) -> SwitchEvent:
        """New prompt from the next chunk on: reset the cross-attention cache and re-encode recent frames
        once under the new prompt (`recache`: our window, or LongLive's); sink and slow memory are kept, or
        dropped with `flush` (with LongLive's recache: its `global_sink: false`)."""
        branch = self.branches[0]
        check_recache(self.spec, self.recache, flush)  # before anything changes
        self._set_prompt(text)  # a retrieval by text ranks the recache's context by the new prompt already
        frames = branch.memory.begin_recache(self.frame, self.recache, flush)
        branch.text = self._text(text)
        if frames:
            window = torch.cat([self.recent[f] for f in frames], dim=2)
            ts = torch.full((window.shape[0], len(frames)), self.sampling.commit_timestep, device=window.device)
            self.model(window, ts, branch.text, memory=branch.memory, commit=True, flow=False)
        branch.memory.commit()
        event = SwitchEvent(self.frame, tuple(frames), flush, self.recache)
        self.events.append(event)
        return event


def known_in_chunk(known_frames: Mapping[int, torch.Tensor], first: int, noise: torch.Tensor) -> KnownFrames | None:
    """The known frames among the chunk's frames [first, first + frames), or None if there are none."""
    frames = range(first, first + noise.shape[2])
    mask = [f in known_frames for f in frames]
    if not any(mask):
        return None
    latents = torch.cat(
        [
            known_frames[f].to(noise.device, noise.dtype) if m else noise[:, :, i : i + 1]
            for i, (f, m) in enumerate(zip(frames, mask))
        ],
        dim=2,
    )
    return KnownFrames(latents, tuple(mask))
