"""Student self-rollout for DMD and Contextual DMD, through the one chunk routine `VideoStream.step`.

Self-Forcing's stochastic gradient truncation: every chunk of the target window stops denoising at a
random exit step (drawn through `ctx.shared_randint`, so every rank runs the same forwards) and only that
step's forward keeps its graph; context chunks before the window are fully denoised under no_grad
(Context Forcing's clean context policy). The memory stores detached K/V (commit passes are no_grad),
so a target chunk's gradient comes only from its own exit-step forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contextforcing.config import SamplingConfig, VideoConfig
from contextforcing.memory.plan import ChunkPlan
from contextforcing.memory.policies import MemorySpec
from contextforcing.model.wan import CausalWanModel
from contextforcing.sampling.stream import VideoStream
from contextforcing.training.stage import StepContext


@dataclass
class Rollout:
    latents: torch.Tensor  # [B, C, F, H, W]: context frames detached, target frames with grad
    target_start: int  # first latent frame of the target window
    exits: list[int]  # exit step of each target chunk
    plans: list[ChunkPlan]  # the student memory's plan per chunk

    @property
    def target(self) -> torch.Tensor:
        return self.latents[:, :, self.target_start:]

    def chunk_plan(self, frame: int) -> ChunkPlan:
        """The memory plan of the chunk whose first frame is `frame`."""
        for plan in self.plans:
            if plan.start == frame:
                return plan
        raise KeyError(f"no chunk starts at latent frame {frame}")


def draw_exits(ctx: StepContext, chunks: int, num_steps: int, same_across_chunks: bool) -> list[int]:
    """Exit step per target chunk, in [0, num_steps); one shared draw for all chunks or one per chunk."""
    if same_across_chunks:
        return [ctx.shared_randint(0, num_steps)] * chunks
    return [ctx.shared_randint(0, num_steps) for _ in range(chunks)]


def self_rollout(
    model: CausalWanModel,
    text: torch.Tensor,
    memory: MemorySpec,
    video: VideoConfig,
    sampling: SamplingConfig,
    num_frames: int,
    target_frames: int,
    ctx: StepContext,
    *,
    same_exit_across_chunks: bool = False,
) -> Rollout:
    """Roll out `num_frames` latent frames; the last `target_frames` are the target window."""
    chunk = video.chunk_frames
    if num_frames % chunk or target_frames % chunk or not 0 < target_frames <= num_frames:
        raise ValueError(f"rollout of {num_frames} frames with a {target_frames}-frame target: not whole chunks")
    stream = VideoStream(model, text, memory, video, sampling, max_frames=num_frames, trainable=True)
    target_start = num_frames - target_frames
    exits = draw_exits(ctx, target_frames // chunk, len(stream.steps), same_exit_across_chunks)
    chunks, plans = [], []
    for start in range(0, num_frames, chunk):
        noise = stream.noise(chunk, ctx.generator)
        if start < target_start:
            with torch.no_grad():  # context: the full few-step schedule, no graph
                chunks.append(stream.step(noise, ctx.generator))
        else:
            chunks.append(stream.step(noise, ctx.generator, exit_step=exits[(start - target_start) // chunk]))
        plans.append(stream.last_plan)
    return Rollout(torch.cat(chunks, dim=2), target_start, exits, plans)
