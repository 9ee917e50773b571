"""Context teacher: flow matching of a target window given a clean context in the student's memory layout.

One sample (Context Forcing Sec. 3.1 / 4; the released teacher's data layout):
  history  the clip's first `history` latent frames (drawn per sample through ctx.shared_randint, whole
           chunks between history_min and history_max: the paper samples 5-20 s of context); with
           `memory_windows` > 0, that share of samples is drawn among the targets that show a part of the
           room last seen before the cached fast frames (panorama world: `Clip.memory_starts`)
  context  the frames the student's memory would attend when its next chunk starts right after the
           history -- sink, slow, cached fast -- at the student's bounded positions (TieredPolicy.plan)
  target   `target_frames` frames after the history, noised at one timestep; positions continue the
           first target chunk's, exactly as Contextual DMD will lay out the student's rollout
  text     the prompt of the target's first chunk (a script switches prompts chunk by chunk; the context is
           read under it, as a prompt switch re-encodes the recent frames under the new prompt), or with
           probability `text_dropout` the negative prompt: the unconditional branch that CFG needs

Slow frames follow `slow_rule`: `surprisal` (default) applies the student's surprisal rule to the teacher's
own pre-RoPE keys -- with `key_layers=first` on the first block's keys of the whole history at once
(`common.chunk_signals`, exact and cheap), otherwise by streaming the clean history through the teacher's
memory (VideoStream.prefill); `stride` promotes every `slow_stride_chunks` chunks (the released teacher:
every 1.5 s over up to 18 s). Every sample has its own layout; samples whose layouts place the same
positions share one forward.

Error recycling (ERFT, Stable Video Infinity): see training/error_buffer.py.
LoRA (`lora_rank` > 0): the base is frozen and adapters train on `lora_targets` (training/lora.py); the
released teacher used rank 128 / alpha 128 on q, k, v, o, ffn.0, ffn.2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn

from contextforcing.config import SamplingConfig
from contextforcing.errors import UserError
from contextforcing.memory.spec import tier_params
from contextforcing.memory.store import MemoryLayout
from contextforcing.sampling.samplers import add_noise, x0_from_flow
from contextforcing.sampling.stream import VideoStream
from contextforcing.training import losses
from contextforcing.training.error_buffer import (
    ErrorBuffer,
    ErrorRecyclingOptions,
    Injection,
    draw_injection,
    fit_frames,
)
from contextforcing.training.lora import DEFAULT_TARGETS as LORA_TARGETS
from contextforcing.training.lora import apply_lora
from contextforcing.training.registry import BuildContext
from contextforcing.training.stage import StepContext, Update
from contextforcing.training.stages.common import (
    ContextLayout,
    OptimizerOptions,
    TextOptions,
    chunk_signals,
    gather_frames,
    headings_tensor,
    layout_from_plan,
    load_or_build,
    memory_spec,
    plan_after_history,
    schedule_of,
    text_encoder,
    training_camera,
    video_config,
)
from contextforcing.training.stages.samples import Clip, ClipSource, DataOptions, sample_ids

SLOW_RULES = ("surprisal", "stride")


@dataclass(frozen=True)
class TeacherOptions:
    model: str = "tiny"  # preset of the teacher's shape (and the latent video grid)
    init: str | None = None  # checkpoint to start from (e.g. Wan2.1-T2V-1.3B); random init when unset
    memory: dict = field(default_factory=lambda: {"policy": "slow_fast"})  # the student's memory
    slow_rule: str = "surprisal"  # surprisal | stride
    slow_stride_chunks: int = 2  # stride rule: one keyframe every 2 chunks = 6 latents = 1.5 s
    target_frames: int = 21  # noisy target window (latent frames)
    history_min: int = 21  # clean history before the target, latent frames (5 s)
    history_max: int = 81  # (20 s)
    memory_windows: float = 0.0  # share of samples whose target needs memory beyond the fast frames
    text_dropout: float = 0.0  # probability that a sample's text is the negative prompt (CFG's unconditional)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # shift, num_train_timesteps
    optimizer: OptimizerOptions = field(default_factory=OptimizerOptions)
    error_recycling: ErrorRecyclingOptions = field(default_factory=ErrorRecyclingOptions)
    text: TextOptions = field(default_factory=TextOptions)
    data: DataOptions = field(default_factory=DataOptions)
    lora_rank: int = 0  # 0: full fine-tuning; >0: LoRA adapters of this rank on a frozen base
    lora_alpha: float = 128.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        if self.slow_rule not in SLOW_RULES:
            raise UserError(f"teacher slow_rule must be one of {', '.join(SLOW_RULES)}, got {self.slow_rule!r}")
        if self.lora_rank < 0:
            raise UserError(f"lora_rank must be 0 (full fine-tuning) or positive, got {self.lora_rank}")
        chunk = video_config(self.model).chunk_frames
        for name in ("target_frames", "history_min", "history_max"):
            if getattr(self, name) % chunk:
                raise UserError(f"teacher {name}={getattr(self, name)} must be a multiple of the chunk ({chunk})")
        # history_min 0 also trains the first chunk of a video (no context), which a teacher trained from
        # scratch needs before it can sample ODE pairs or score Stage 1 rollouts from the start.
        if not 0 <= self.history_min <= self.history_max or self.history_max == 0:
            raise UserError(
                f"teacher needs 0 <= history_min <= history_max, history_max > 0, got "
                f"{self.history_min}, {self.history_max}"
            )
        for name in ("memory_windows", "text_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"teacher {name} must be in [0, 1], got {getattr(self, name)}")


class TeacherStage:
    name = "teacher"

    def __init__(self, options: TeacherOptions, device: torch.device, seed: int = 0):
        self.options, self.device = options, device
        self.video = video_config(options.model)
        self.sampling = options.sampling
        self.schedule = schedule_of(self.sampling)
        self.spec = memory_spec(options.memory)
        if options.slow_rule == "stride":
            self.spec = dataclasses.replace(
                self.spec,
                options=dataclasses.replace(self.spec.options, rule="uniform", interval=options.slow_stride_chunks),
            )
        self.teacher = load_or_build(options.model, options.init, seed, device)
        if options.lora_rank:
            apply_lora(self.teacher, options.lora_rank, options.lora_alpha, options.lora_targets)
        self.encoder = text_encoder(options.text, options.model)
        self.uncond = self.encoder.encode([options.text.negative_prompt])
        self.camera = training_camera(options.model, options.data)
        er = options.error_recycling
        self.latent_errors = ErrorBuffer.from_options(er, self.schedule)
        self.noise_errors = ErrorBuffer.from_options(er, self.schedule)

    # -- contract --------------------------------------------------------------------------------------
    def trainable(self) -> dict[str, nn.Module]:
        return {"generator": self.teacher}  # the model this stage trains and exports

    def frozen(self) -> dict[str, nn.Module]:
        return {}

    def optimizer_settings(self, group: str) -> dict:
        return self.options.optimizer.settings()

    def updates(self, step: int) -> list[Update]:
        return [Update("generator", self.loss)]

    # The trainer saves these per rank in each checkpoint, so resuming keeps the recycled errors.
    def state_dict(self) -> dict:
        return {"latent_errors": self.latent_errors.state_dict(), "noise_errors": self.noise_errors.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.latent_errors.load_state_dict(state["latent_errors"])
        self.noise_errors.load_state_dict(state["noise_errors"])

    def batches(self, rank: int, world_size: int, start: int) -> Iterator[dict]:
        o = self.options
        cached_fast = tier_params(self.spec, self.video.chunk_frames).window
        source = ClipSource(
            o.data,
            self.video,
            self.teacher.config.in_dim,
            o.history_max + o.target_frames,
            cached_fast=(cached_fast or 0) - self.video.chunk_frames,
            camera=self.camera,
        )
        for ids in sample_ids(rank, world_size, start, o.data.micro_batch):
            clips = [source.clip(i) for i in ids]
            frames = min(c.latents.shape[1] for c in clips)
            yield {"clips": clips, "latents": torch.stack([c.latents[:, :frames] for c in clips])}

    # -- layout ----------------------------------------------------------------------------------------
    def draw_history(self, ctx: StepContext, clip: Clip | None = None, frames: int | None = None) -> int:
        """A history length (whole chunks) for one sample: a target that needs memory (with probability
        `memory_windows`, where the clip has one in range), else uniform in [history_min, history_max]."""
        o, chunk = self.options, self.video.chunk_frames
        high = o.history_max if frames is None else min(o.history_max, frames - o.target_frames)
        needs_memory = [h for h in (clip.memory_starts if clip else ()) if o.history_min <= h <= high]
        pick_memory = ctx.shared_uniform() < o.memory_windows  # always drawn: a fixed number of draws per sample
        if pick_memory and needs_memory:
            return needs_memory[ctx.shared_randint(0, len(needs_memory))]
        return chunk * ctx.shared_randint(o.history_min // chunk, high // chunk + 1)

    @torch.no_grad()
    def layout(
        self, history: int, text: torch.Tensor, latents: torch.Tensor, headings: list[float] | None = None
    ) -> ContextLayout:
        """The student's memory at the chunk after `history` clean frames of `latents` [1, ...] (with their camera
        `headings` for a room-anchored model)."""
        chunk = self.video.chunk_frames
        params = tier_params(self.spec, chunk)
        if params.score is not None:  # a retrieval memory: its relevance reads the keys or the camera headings
            signals = chunk_signals(self.teacher, latents[:, :, :history], self.sampling, chunk)
            layout = MemoryLayout.for_model(self.teacher.config, self.video)
            plan = plan_after_history(self.spec, chunk, history, signals, headings, layout)
        elif self.options.slow_rule == "stride" or not params.surprisal:
            plan = plan_after_history(self.spec, chunk, history)
        elif params.first_layer_keys:
            signals = chunk_signals(self.teacher, latents[:, :, :history], self.sampling, chunk)
            plan = plan_after_history(self.spec, chunk, history, signals)
        else:
            stream = VideoStream(self.teacher, text, self.spec, self.video, self.sampling, max_frames=history + chunk)
            stream.prefill(latents[:, :, :history], None if headings is None else [list(headings[:history])])
            plan = stream.memory.begin_chunk(history, chunk)
        return layout_from_plan(plan, self.options.target_frames)

    def texts(self, prompts: list[str], ctx: StepContext) -> torch.Tensor:
        """[B, L, D]: each prompt, or the negative prompt with probability text_dropout (a value, not control flow)."""
        text = self.encoder.encode(prompts).to(ctx.device)
        if self.options.text_dropout > 0:
            drop = torch.rand(len(prompts), generator=ctx.generator, device=ctx.device) < self.options.text_dropout
            text = torch.where(drop[:, None, None], self.uncond.to(ctx.device).expand_as(text), text)
        return text

    # -- loss ------------------------------------------------------------------------------------------
    def loss(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        latents, clips = batch["latents"].to(ctx.device), batch["clips"]
        chunk = self.video.chunk_frames
        histories = [self.draw_history(ctx, c, latents.shape[2]) for c in clips]
        text = self.texts([c.prompt_at(h, chunk) for c, h in zip(clips, histories)], ctx)
        layouts = [
            self.layout(h, text[i : i + 1], latents[i : i + 1], clips[i].headings or None)
            for i, h in enumerate(histories)
        ]
        target = torch.cat([gather_frames(latents[i : i + 1], lay.target_frames) for i, lay in enumerate(layouts)])
        b = target.shape[0]
        t = losses.training_timesteps(b, self.schedule, ctx.generator, ctx.device)
        sigma = self.schedule.sigma(t)
        noise = torch.randn(target.shape, generator=ctx.generator, device=ctx.device)
        injection = draw_injection(self.options.error_recycling, ctx)
        target_in = target + self._errors(self.latent_errors, t, target, ctx) if injection.latent else target
        noise_in = noise + self._errors(self.noise_errors, t, noise, ctx) if injection.noise else noise
        x_t = add_noise(target_in, noise_in, sigma)
        flow = torch.empty_like(x_t)
        for members in _same_positions(layouts):
            lay, index = layouts[members[0]], torch.tensor(members, device=ctx.device)
            context = torch.cat([gather_frames(latents[i : i + 1], layouts[i].frames) for i in members])
            context = self.inject_context(injection, context, lay, ctx)
            context_headings, target_headings = self.headings(clips, layouts, members, ctx.device)
            flow[index] = self.teacher.forward_with_context(
                x_t[index],
                t[index],
                text[index],
                context,
                lay.positions,
                lay.target_positions,
                context_headings=context_headings,
                target_headings=target_headings,
            )
        # The velocity toward the *clean* target from the error-carrying noise (SVI's ERFT target).
        loss = losses.flow_matching_loss(flow, noise_in, target)
        self.bank_errors(injection, ctx, t, x_t, flow, sigma, target, noise_in)
        metrics = {
            "loss": float(loss.detach().mean()),
            "history": sum(histories) / b,
            "context": sum(len(lay.frames) for lay in layouts) / b,
            "slow": sum(lay.tiers.count("slow") for lay in layouts) / b,
            "inject_latent": float(injection.latent),
            "inject_context": float(injection.context),
            "inject_noise": float(injection.noise),
            "error_bank": float(len(self.latent_errors)),
        }
        return loss.mean(), metrics

    def headings(self, clips: list[Clip], layouts: list[ContextLayout], members: list[int], device):
        """Camera headings [n, Fc] and [n, Ft] of the context and target frames of samples `members` (None, None
        for a model whose width positions are screen columns)."""
        if self.camera is None:
            return None, None
        return tuple(
            headings_tensor([[clips[i].headings[f] for f in getattr(layouts[i], which)] for i in members], device)
            for which in ("frames", "target_frames")
        )

    def _errors(self, bank: ErrorBuffer, t: torch.Tensor | None, like: torch.Tensor, ctx) -> torch.Tensor:
        """One banked error per sample (zeros where the bucket is still empty), fitted to `like`'s frames."""
        out = torch.zeros_like(like)
        for i in range(like.shape[0]):
            e = bank.sample(None if t is None else float(t[i]), ctx.generator)
            if e is not None:
                out[i] = fit_frames(e, like.shape[2]).to(out)
        return out

    def inject_context(self, injection: Injection, context, layout: ContextLayout, ctx):
        """Recycled errors on the context frames of `error_recycling.context_tiers`: the fast (motion) frames, as
        the released teacher (sink and slow stay clean), or every frame of the memory."""
        every = self.options.error_recycling.context_tiers == "all"
        drifting = list(range(len(layout.frames))) if every else layout.fast_indices()
        if not (injection.context and drifting):
            return context
        index = torch.tensor(drifting, device=context.device)
        drift = self._errors(self.latent_errors, None, context.index_select(2, index), ctx)
        return context.index_add(2, index, drift)

    @torch.no_grad()
    def bank_errors(self, injection: Injection, ctx, t, x_t, flow, sigma, target, noise) -> None:
        """Bank this step's errors: x0_hat - x0 and eps_hat - eps, with eps_hat = x_t + (1 - sigma) v."""
        options = self.options.error_recycling
        allowed = ctx.shared_uniform() < options.clean_update_prob or not injection.clean
        if not options.active(ctx.step) or not allowed:
            return
        x0_hat = x0_from_flow(x_t, flow.detach(), sigma)
        s = sigma.to(x_t.device).reshape(-1, 1, 1, 1, 1)
        eps_hat = x_t.double() + (1 - s) * flow.detach().double()
        self.latent_errors.add(t, x0_hat - target)
        self.noise_errors.add(t, (eps_hat - noise.double()).float())


def _same_positions(layouts: list[ContextLayout]) -> list[list[int]]:
    """Sample indices grouped by identical context and target positions (one forward per group)."""
    groups: dict[tuple, list[int]] = {}
    for i, lay in enumerate(layouts):
        groups.setdefault((tuple(lay.positions), tuple(lay.target_positions)), []).append(i)
    return list(groups.values())


def build(options: TeacherOptions, bctx: BuildContext) -> TeacherStage:
    return TeacherStage(options, bctx.device, bctx.seed)
