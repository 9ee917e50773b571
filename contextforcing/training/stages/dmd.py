"""Stage 1: Distribution Matching Distillation of the causal few-step student (Context Forcing Eq. 3-4).

Per step (Self-Forcing `trainer/distillation.py`): on every `dfake_gen_update_ratio`-th step a generator
update, then always a critic update, each on its own fresh self-rollout.
  generator  rollout (random exit per chunk, gradient only through exit steps) -> x; t shifted and
             clamped; x_t = noise(x, t); real x0 = frozen teacher with CFG, fake x0 = critic;
             loss = 0.5 ||x - sg(x - g)||^2, g = (x0_fake - x0_real) / mean|x - x0_real|   (losses.py)
  critic     no-grad rollout -> x; flow matching of the critic on x (the fake score tracks p_theta)

Rollouts follow the prompts of a script chunk by chunk (`rollout.Timeline`, switches as inference makes them).
The target window (the last `target_frames` frames) is scored in one call (`score_window: target`, the
paper's and the released code's window) or chunk by chunk (`score_window: chunk`: each chunk under the prompt
it was generated with, which a script that switches prompts inside the window needs, and what a context
teacher trained on one-chunk targets reads, configs/toy/teacher.yaml). A window is scored given the clean
context the scores read for its first chunk (`teacher_context`): the frames the student's memory attended
there at their positions (default, the paper), or the `context_window` frames before it (`contiguous`: the
released code's frames and positions, in our call), or the released Stage 2 call exactly (`released`:
departures.py); a window that starts the video has none, and is then scored bidirectionally on its own
(Stage 1 as released).

Where ours departs from Self-Forcing's or the released training, a switch reproduces theirs (docs/training.md):
`exit_step`, `reencode_noise`, `cross_chunk_grad` (the rollout, `RolloutRules`), `score_shift` and
`teacher_context: released` (departures.py).

`ScoreMatchingStage` holds everything both DMD stages share; Stage 2 (cdmd.py) draws how long the rollout is.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import torch
import torch.nn as nn

from contextforcing.config import SamplingConfig, get_preset
from contextforcing.errors import UserError
from contextforcing.model.wan import CausalWanModel
from contextforcing.sampling.samplers import add_noise, guided
from contextforcing.training import losses
from contextforcing.training.registry import BuildContext
from contextforcing.training.rollout import EXIT_STEPS, Rollout, RolloutRules, Timeline, self_rollout
from contextforcing.training.stage import StepContext, Update
from contextforcing.training.stages.common import (
    ContextLayout,
    OptimizerOptions,
    TextOptions,
    contiguous_layout,
    frozen_copy,
    gather_frames,
    guidance_standard,
    headings_tensor,
    layout_from_plan,
    load_or_build,
    memory_spec,
    schedule_of,
    text_encoder,
    training_camera,
    video_config,
)
from contextforcing.training.stages.departures import (
    ReleasedContext,
    ScoreTables,
    check_released_window,
    released_codec,
    released_score,
)
from contextforcing.training.stages.samples import DataOptions, PromptSource, sample_ids

CONTEXT_MODES = ("memory", "contiguous", "released")
SCORE_WINDOWS = ("target", "chunk")


@dataclass(frozen=True)
class ScoreMatchingOptions:
    """What both DMD stages share: the three models, guidance, the critic schedule, optimizers, data."""

    model: str = "tiny"
    init: str | None = None  # generator start (Stage 1: the ODE-initialised student; Stage 2: the Stage-1 student)
    real_init: str | None = None  # frozen real score (Stage 1: the teacher; Stage 2: the context teacher)
    critic_init: str | None = None  # fake score start; default: the real score's weights
    memory: dict = field(default_factory=lambda: {"policy": "slow_fast"})  # the student's memory
    guidance_scale: float = 3.0  # real score CFG
    guidance_convention: str = "self_forcing"  # cond + g (cond - uncond), as CF / SF configs write it
    exit_step: str = "per_chunk"  # per_chunk: one exit draw per target chunk | shared: one for all (SF, CF default)
    reencode_noise: bool = False  # commit passes read 0.995 x0 + 0.005 eps, as SF / CF rollouts do
    cross_chunk_grad: bool = False  # later chunks back-propagate into earlier exit passes (SF / CF in-place cache)
    score_shift: float | None = None  # table the scores' flows are read on; None: sampling.shift (SF / CF: 8.0)
    timestep_clamp: tuple[float, float] = (20.0, 980.0)
    dfake_gen_update_ratio: int = 5  # critic steps per generator step
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # the student's few-step list and shift
    generator_optimizer: OptimizerOptions = field(default_factory=lambda: OptimizerOptions(2e-6, (0.9, 0.999)))
    critic_optimizer: OptimizerOptions = field(default_factory=lambda: OptimizerOptions(4e-7, (0.5, 0.95)))
    text: TextOptions = field(default_factory=TextOptions)
    data: DataOptions = field(default_factory=DataOptions)
    teacher_context: str = "memory"  # memory (the paper) | contiguous (the released frames) | released (its call)
    context_window: int = 21  # contiguous / released: frames before each scored window
    score_window: str = "target"  # one score call over the target window | one per chunk

    # A run saved before `exit_step` replaced this boolean resumes as the same run (training/run_config.py).
    resume_renamed: ClassVar[dict] = {"same_exit_across_chunks": ("exit_step", {False: "per_chunk", True: "shared"})}

    def __post_init__(self):
        if self.dfake_gen_update_ratio < 1:
            raise UserError("dfake_gen_update_ratio must be at least 1")
        if self.teacher_context not in CONTEXT_MODES:
            raise UserError(f"teacher_context must be one of {', '.join(CONTEXT_MODES)}, got {self.teacher_context!r}")
        if self.score_window not in SCORE_WINDOWS:
            raise UserError(f"score_window must be target or chunk, got {self.score_window!r}")
        if self.teacher_context == "released" and self.score_window != "target":
            raise UserError("teacher_context=released scores the target window in one call: use score_window=target")
        if self.exit_step not in EXIT_STEPS:
            raise UserError(f"exit_step must be one of {', '.join(EXIT_STEPS)}, got {self.exit_step!r}")
        if self.score_shift is not None and not self.score_shift > 0:
            raise UserError(
                f"score_shift must be a positive shift (or null: the sampling shift), got {self.score_shift}"
            )
        low, high = self.timestep_clamp
        if not 0 <= low < high:
            raise UserError(f"timestep_clamp must be (low, high) with 0 <= low < high, got {self.timestep_clamp}")
        guidance_standard(self.guidance_scale, self.guidance_convention)

    @property
    def chunk_frames(self) -> int:
        return video_config(self.model).chunk_frames


@dataclass(frozen=True)
class DMDOptions(ScoreMatchingOptions):
    num_frames: int = 21  # rollout length (latent frames)
    target_frames: int = 0  # scored window at the end of the rollout (0: all of it)

    def __post_init__(self):
        super().__post_init__()
        if self.num_frames <= 0 or self.num_frames % self.chunk_frames:
            raise UserError(
                f"num_frames={self.num_frames} must be a positive multiple of the chunk ({self.chunk_frames})"
            )
        if self.target_frames < 0 or self.target_frames % self.chunk_frames or self.target_frames > self.num_frames:
            raise UserError(f"target_frames={self.target_frames} must be whole chunks, at most num_frames")
        if self.teacher_context == "released":
            before = self.num_frames - (self.target_frames or self.num_frames)
            check_released_window(before, before, self.context_window)


class ScoreMatchingStage:
    """Generator + critic (trainable) and a frozen real score, trained by DMD on self-rollouts."""

    name = "dmd"

    def __init__(self, options, device: torch.device, seed: int = 0):
        self.options, self.device = options, device
        self.video = video_config(options.model)
        self.sampling = options.sampling
        self.schedule = schedule_of(self.sampling)
        self.spec = memory_spec(options.memory)
        self.guidance = guidance_standard(options.guidance_scale, options.guidance_convention)
        self.generator = load_or_build(options.model, options.init, seed, device)
        real = load_or_build(options.model, options.real_init, seed + 1, device)
        # The fake score starts from its own checkpoint, else from the real score's weights (SF / CF).
        self.critic = (
            load_or_build(options.model, options.critic_init, seed + 2, device)
            if options.critic_init
            else copy.deepcopy(real).train()
        )
        self.real_score = frozen_copy(real)
        self.encoder = text_encoder(options.text, options.model)
        self.uncond = self.encoder.encode([options.text.negative_prompt])
        self.camera = training_camera(options.model, options.data)
        self.last_rollout: Rollout | None = None  # detached, for inspection and tests
        score = (
            schedule_of(dataclasses.replace(self.sampling, shift=options.score_shift)) if options.score_shift else None
        )
        self.tables = ScoreTables(self.schedule, score or self.schedule)
        self.rules = RolloutRules(options.exit_step, options.reencode_noise, options.cross_chunk_grad, self.released)
        self.released_context: ReleasedContext | None = None
        if self.released:
            channels = get_preset(options.model).model.in_dim
            self.released_context = ReleasedContext(
                released_codec(options.data, options.text, channels, self.video, device)
            )

    @property
    def released(self) -> bool:
        return self.options.teacher_context == "released"

    # -- contract --------------------------------------------------------------------------------------
    def trainable(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "critic": self.critic}

    def frozen(self) -> dict[str, nn.Module]:
        return {"real_score": self.real_score}

    def optimizer_settings(self, group: str) -> dict:
        o = self.options
        return (o.generator_optimizer if group == "generator" else o.critic_optimizer).settings()

    def updates(self, step: int) -> list[Update]:
        critic = [Update("critic", self.critic_loss)]
        if step % self.options.dfake_gen_update_ratio:
            return critic
        return [Update("generator", self.generator_loss)] + critic

    def batches(self, rank: int, world_size: int, start: int) -> Iterator[dict]:
        prompts = PromptSource(self.options.data)
        chunks = self.max_rollout_frames() // self.video.chunk_frames
        for ids in sample_ids(rank, world_size, start, self.options.data.micro_batch):
            scripts = [prompts.script(i, chunks) for i in ids]
            timeline = Timeline.from_scripts(self.encoder, scripts, self.camera, self.video.chunk_frames)
            yield {"scripts": scripts, "timeline": timeline}

    # -- what Stage 2 overrides ------------------------------------------------------------------------
    def max_rollout_frames(self) -> int:
        return self.options.num_frames

    def rollout_lengths(self, ctx: StepContext) -> tuple[int, int]:
        """(frames rolled out, frames of the scored target window at the end)."""
        o = self.options
        return o.num_frames, o.target_frames or o.num_frames

    # -- conditioning ----------------------------------------------------------------------------------
    def layout(self, rollout: Rollout, start: int, frames: int) -> ContextLayout:
        """What the scores read for the window of `frames` at `start`: the student's memory at its first chunk, or
        the frames before it."""
        o = self.options
        if o.teacher_context in ("contiguous", "released"):
            return contiguous_layout(start, o.context_window, frames)
        return layout_from_plan(rollout.chunk_plan(start), frames)

    def score(
        self, model: CausalWanModel, x_t, t, text, layout: ContextLayout, context: torch.Tensor, headings=None
    ) -> torch.Tensor:
        """Flow of a score network on one noisy target chunk given its clean context (`headings`: the camera
        headings of the context and target frames, [B, n] each, for a room-anchored model)."""
        context_headings, target_headings = headings or (None, None)
        if not layout.frames:
            return model(x_t, t, text, positions=layout.target_positions, headings=target_headings)
        if self.released:
            both = None if headings is None else torch.cat([context_headings, target_headings], 1)
            positions = layout.positions + layout.target_positions
            return released_score(model, x_t, t, text, positions, context, headings=both)
        return model.forward_with_context(
            x_t,
            t,
            text,
            context,
            layout.positions,
            layout.target_positions,
            context_headings=context_headings,
            target_headings=target_headings,
        )

    def scored_windows(self, rollout: Rollout, timeline: Timeline):
        """(slice of the target, its text, layout, clean context and camera headings) for every window scored
        in one call."""
        chunk, clean, end = self.video.chunk_frames, rollout.latents.detach(), rollout.latents.shape[2]
        size = chunk if self.options.score_window == "chunk" else end - rollout.target_start
        for start in range(rollout.target_start, end, size):
            lay = self.layout(rollout, start, size)
            local = slice(start - rollout.target_start, start - rollout.target_start + size)
            headings = None
            if timeline.headings is not None:
                headings = tuple(
                    headings_tensor(timeline.headings_of(frames), clean.device)
                    for frames in (lay.frames, lay.target_frames)
                )
            yield local, timeline.at(start // chunk), lay, self.context_latents(clean, lay.frames), headings

    def context_latents(self, clean: torch.Tensor, frames: list[int]) -> torch.Tensor:
        if self.released_context is not None and frames:
            return self.released_context.gather(clean, frames)
        return gather_frames(clean, frames)

    # -- losses ----------------------------------------------------------------------------------------
    def rollout(self, batch: dict, ctx: StepContext) -> tuple[Rollout, Timeline]:
        timeline = batch["timeline"].to(ctx.device)
        frames, target = self.rollout_lengths(ctx)
        rollout = self_rollout(
            self.generator,
            timeline,
            self.spec,
            self.video,
            self.sampling,
            frames,
            target,
            ctx,
            rules=self.rules,
        )
        self.last_rollout = Rollout(rollout.latents.detach(), rollout.target_start, rollout.exits, rollout.plans)
        return rollout, timeline

    def noised(self, x: torch.Tensor, ctx: StepContext):
        t = losses.dmd_timesteps(
            x.shape[0], self.schedule, tuple(self.options.timestep_clamp), ctx.generator, ctx.device
        )
        sigma = self.schedule.sigma(t)
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        return t, sigma, noise, add_noise(x.detach(), noise, sigma)

    def generator_loss(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        rollout, timeline = self.rollout(batch, ctx)
        x = rollout.target
        real_parts, fake_parts, timesteps = [], [], []
        with torch.no_grad():
            uncond = self.uncond.to(ctx.device).expand(x.shape[0], -1, -1)
            for local, text, lay, context, headings in self.scored_windows(rollout, timeline):
                t, _, _, x_t = self.noised(x[:, :, local], ctx)
                real = guided(
                    lambda y, _: self.score(self.real_score, y, t, text, lay, context, headings),
                    lambda y, _: self.score(self.real_score, y, t, uncond, lay, context, headings),
                    self.guidance,
                )(x_t, None)
                real_parts.append(self.tables.x0(x_t, real, t))
                fake = self.score(self.critic, x_t, t, text, lay, context, headings)
                fake_parts.append(self.tables.x0(x_t, fake, t))
                timesteps.append(t)
        x0_real, x0_fake = torch.cat(real_parts, dim=2), torch.cat(fake_parts, dim=2)
        loss = losses.dmd_generator_loss(x, x0_fake, x0_real)
        g = losses.dmd_gradient(x, x0_fake, x0_real)
        metrics = {
            "generator_loss": float(loss.detach().mean()),
            "dmd_gradient_norm": float(g.norm()),
            "rollout_frames": float(rollout.latents.shape[2]),
            "timestep": float(torch.stack(timesteps).mean()),
        }
        return loss.mean(), metrics

    def critic_loss(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            rollout, timeline = self.rollout(batch, ctx)
        x = rollout.target.detach()
        parts = []
        for local, text, lay, context, headings in self.scored_windows(rollout, timeline):
            t, _, noise, x_t = self.noised(x[:, :, local], ctx)
            flow = self.score(self.critic, x_t, t, text, lay, context, headings)
            parts.append(self.critic_window_loss(x_t, flow, t, noise, x[:, :, local], bool(lay.frames)))
        loss = torch.stack(parts).mean(0)
        metrics = {"critic_loss": float(loss.detach().mean()), "rollout_frames": float(rollout.latents.shape[2])}
        return loss.mean(), metrics

    def critic_window_loss(self, x_t, flow, t, noise, x, with_context: bool) -> torch.Tensor:
        """Flow matching of the critic on one window, per sample. The released code reads the flow as
        predicted, and its Stage 2 (a window with context) weights the loss by the batch mean of the table's
        training weight at t (0.13 to 2.08 over the clamped range); otherwise the flow is read through the
        score table (`ScoreTables`: Self-Forcing's round trip when the tables differ)."""
        if not self.released:
            return losses.critic_loss(self.tables.critic_flow(x_t, flow, t), noise, x)
        loss = losses.critic_loss(flow, noise, x)
        return loss * self.schedule.training_weight(t).mean() if with_context else loss


class DMDStage(ScoreMatchingStage):
    name = "dmd"


def build(options: DMDOptions, bctx: BuildContext) -> DMDStage:
    return DMDStage(options, bctx.device, bctx.seed)
