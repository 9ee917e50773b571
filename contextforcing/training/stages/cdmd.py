"""Stage 2: Contextual DMD (Context Forcing Eq. 5-6, Algorithm 1).

The student rolls out L latent frames, L drawn uniformly (ctx.shared_randint) between `min_frames` and a
maximum that grows linearly with the step from `min_frames` to `max_frames` over `growth_steps` (the
long self-rollout curriculum), following a script's prompts from its first chunk, as inference does. Frames
before the target window are fully denoised under no_grad; the last `target_frames` keep the random exit.
Both scores see each noisy target chunk *given the student's own context* (dmd.py):

  teacher_context: memory      (default, the paper) the frames the student's memory attended for that chunk
                               -- sink, slow, cached fast -- at the student's positions, read from the
                               memory's plan; the chunk continues those positions
  teacher_context: contiguous  the released code's frames and positions: the `context_window` frames right
                               before the chunk, in our call (context labelled t = 0, attending itself)
  teacher_context: released    the released Stage 2 call exactly (departures.py): that window with its first
                               frame re-encoded through the VAE, one bidirectional pass labelled with the
                               target's timestep, the critic loss weighted by the training weight, the first
                               two target chunks fully denoised and the first without gradient

The real score is the frozen context teacher with CFG; the fake score (critic, initialised from the teacher
by default) is conditioned the same way; the DMD gradient and the critic loss cover the target window only.
"""

from __future__ import annotations

from dataclasses import dataclass

from contextforcing.errors import UserError
from contextforcing.training.registry import BuildContext
from contextforcing.training.stage import StepContext
from contextforcing.training.stages.departures import check_released_window
from contextforcing.training.stages.dmd import ScoreMatchingOptions, ScoreMatchingStage


@dataclass(frozen=True)
class CDMDOptions(ScoreMatchingOptions):
    guidance_scale: float = 5.0  # Stage 2 real score CFG (the released config)
    min_frames: int = 21  # L0 (latent frames)
    max_frames: int = 105  # L1, reached after growth_steps
    growth_steps: int = 600  # s_d of Algorithm 1 (the released config's decay_steps)
    target_frames: int = 21  # scored window at the end of the rollout

    def __post_init__(self):
        super().__post_init__()
        chunk = self.chunk_frames
        for name in ("min_frames", "max_frames", "target_frames"):
            if getattr(self, name) <= 0 or getattr(self, name) % chunk:
                raise UserError(f"cdmd {name}={getattr(self, name)} must be a positive multiple of the chunk ({chunk})")
        if not self.target_frames <= self.min_frames <= self.max_frames:
            raise UserError("cdmd needs target_frames <= min_frames <= max_frames")
        if self.growth_steps < 1:
            raise UserError("cdmd growth_steps must be at least 1")
        if self.teacher_context == "released":
            check_released_window(
                self.min_frames - self.target_frames, self.max_frames - self.target_frames, self.context_window
            )


class CDMDStage(ScoreMatchingStage):
    name = "cdmd"

    def max_rollout_frames(self) -> int:
        return self.options.max_frames

    def max_frames_at(self, step: int) -> int:
        """N_max(step): linear from min_frames to max_frames over growth_steps, in whole chunks."""
        o, chunk = self.options, self.video.chunk_frames
        grown = min(1.0, step / o.growth_steps) * (o.max_frames - o.min_frames)
        return o.min_frames + chunk * int(grown // chunk)

    def rollout_lengths(self, ctx: StepContext) -> tuple[int, int]:
        chunk = self.video.chunk_frames
        chunks = ctx.shared_randint(self.options.min_frames // chunk, self.max_frames_at(ctx.step) // chunk + 1)
        return chunks * chunk, self.options.target_frames


def build(options: CDMDOptions, bctx: BuildContext) -> CDMDStage:
    return CDMDStage(options, bctx.device, bctx.seed)
