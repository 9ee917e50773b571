"""Stage 2: Contextual DMD (Context Forcing Eq. 5-6, Algorithm 1).

The student rolls out L latent frames, L drawn uniformly (ctx.shared_randint) between `min_frames` and a
maximum that grows linearly with the step from `min_frames` to `max_frames` over `growth_steps` (the
long self-rollout curriculum). Frames before the target window are fully denoised under no_grad; the
last `target_frames` keep the random exit. Both scores see the noisy target *given the student's own
context*:

  teacher_context: memory      (default, the paper) the frames the student's memory attended when the
                               target window began -- sink, slow, cached fast -- at the student's positions,
                               read from the memory's plan; the target continues those positions
  teacher_context: contiguous  (the released code) the `context_window` frames right before the target

The real score is the frozen context teacher with CFG; the fake score (critic, initialised from the teacher
by default) is conditioned the same way; the DMD gradient and the critic loss cover the target window only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contextforcing.errors import UserError
from contextforcing.model.wan import CausalWanModel
from contextforcing.training.rollout import Rollout
from contextforcing.training.registry import BuildContext
from contextforcing.training.stage import StepContext
from contextforcing.training.stages.common import ContextLayout, contiguous_layout, gather_frames, layout_from_plan
from contextforcing.training.stages.dmd import ScoreMatchingOptions, ScoreMatchingStage

CONTEXT_MODES = ("memory", "contiguous")


@dataclass(frozen=True)
class CDMDOptions(ScoreMatchingOptions):
    guidance_scale: float = 5.0  # Stage 2 real score CFG (the released config)
    min_frames: int = 21  # L0 (latent frames)
    max_frames: int = 105  # L1, reached after growth_steps
    growth_steps: int = 600  # s_d of Algorithm 1 (the released config's decay_steps)
    target_frames: int = 21  # scored window at the end of the rollout
    teacher_context: str = "memory"  # memory | contiguous
    context_window: int = 21  # contiguous mode: frames before the target

    def __post_init__(self):
        super().__post_init__()
        chunk = self.chunk_frames
        for name in ("min_frames", "max_frames", "target_frames"):
            if getattr(self, name) <= 0 or getattr(self, name) % chunk:
                raise UserError(f"cdmd {name}={getattr(self, name)} must be a positive multiple of the chunk ({chunk})")
        if not self.target_frames <= self.min_frames <= self.max_frames:
            raise UserError("cdmd needs target_frames <= min_frames <= max_frames")
        if self.teacher_context not in CONTEXT_MODES:
            raise UserError(f"cdmd teacher_context must be memory or contiguous, got {self.teacher_context!r}")
        if self.growth_steps < 1:
            raise UserError("cdmd growth_steps must be at least 1")


@dataclass
class Condition:
    layout: ContextLayout
    context: torch.Tensor  # [B, C, Fc, H, W] clean, detached


class CDMDStage(ScoreMatchingStage):
    name = "cdmd"

    def max_frames_at(self, step: int) -> int:
        """N_max(step): linear from min_frames to max_frames over growth_steps, in whole chunks."""
        o, chunk = self.options, self.video.chunk_frames
        grown = min(1.0, step / o.growth_steps) * (o.max_frames - o.min_frames)
        return o.min_frames + chunk * int(grown // chunk)

    def rollout_lengths(self, ctx: StepContext) -> tuple[int, int]:
        chunk = self.video.chunk_frames
        chunks = ctx.shared_randint(self.options.min_frames // chunk, self.max_frames_at(ctx.step) // chunk + 1)
        return chunks * chunk, self.options.target_frames

    def layout(self, rollout: Rollout) -> ContextLayout:
        o = self.options
        if o.teacher_context == "contiguous":
            return contiguous_layout(rollout.target_start, o.context_window, o.target_frames)
        return layout_from_plan(rollout.chunk_plan(rollout.target_start), o.target_frames)

    def condition(self, rollout: Rollout) -> Condition:
        layout = self.layout(rollout)
        return Condition(layout, gather_frames(rollout.latents.detach(), layout.frames))

    def score(self, model: CausalWanModel, x_t, t, text, condition: Condition) -> torch.Tensor:
        c = condition.layout
        return model.forward_with_context(x_t, t, text, condition.context, c.positions, c.target_positions)


def build(options: CDMDOptions, bctx: BuildContext) -> CDMDStage:
    return CDMDStage(options, bctx.device, bctx.seed)
