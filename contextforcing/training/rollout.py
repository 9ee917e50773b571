"""Student self-rollout for DMD and Contextual DMD, through the one chunk routine `VideoStream.step`.

Self-Forcing's stochastic gradient truncation: every chunk of the target window stops denoising at a
random exit step (drawn through `ctx.shared_randint`, so every rank runs the same forwards) and only that
step's forward keeps its graph; context chunks before the window are fully denoised under no_grad
(Context Forcing's clean context policy). The memory stores detached K/V (commit passes are no_grad),
so a target chunk's gradient comes only from its own exit-step forward.

`RolloutRules` holds where a rollout may follow Self-Forcing's or the released Context Forcing code instead
(docs/training.md): one exit step shared by all chunks, the commit pass reading x0 with a little noise,
the in-place cache's gradient path into earlier exit passes, and the released Stage 2's first target chunks.

Prompts follow a `Timeline` (one text per chunk): where it changes, the rollout switches prompts before the
chunk exactly as inference does (`VideoStream.switch_prompt`: the new text, the recent frames re-encoded
under it). A batch whose samples change prompts at different chunks switches all of them there (a sample
whose prompt did not change gets its recent frames re-encoded under the same text); the toy recipe rolls out
one sample per micro-batch, so its rollouts are inference's exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contextforcing.config import SamplingConfig, VideoConfig
from contextforcing.memory.headings import CameraStep, prompt_headings
from contextforcing.memory.plan import ChunkPlan
from contextforcing.memory.spec import MemorySpec
from contextforcing.model.wan import CausalWanModel
from contextforcing.sampling.stream import VideoStream
from contextforcing.training.stage import StepContext


@dataclass(frozen=True)
class Timeline:
    """The text of every chunk of a batch ([B, chunks, L, D]), the chunks before which some prompt changes, and
    for a room-anchored model the camera heading of every latent frame per sample (host floats, tokens)."""

    texts: torch.Tensor
    switches: tuple[int, ...] = ()
    headings: tuple[tuple[float, ...], ...] | None = None  # [B][frames]

    @classmethod
    def constant(cls, text: torch.Tensor, chunks: int) -> "Timeline":
        """One text [B, L, D] for every chunk."""
        return cls(text[:, None].expand(-1, chunks, -1, -1))

    @classmethod
    def from_scripts(
        cls, encoder, scripts: list[list[str]], camera: CameraStep | None = None, chunk_frames: int = 0
    ) -> "Timeline":
        """Encode per-sample chunk prompts (equal lengths); a switch wherever any sample's prompt changes; with a
        `camera`, each sample's headings over its chunks of `chunk_frames` latent frames."""
        chunks = len(scripts[0])
        texts = torch.stack([encoder.encode(script) for script in scripts])
        switches = tuple(c for c in range(1, chunks) if any(s[c] != s[c - 1] for s in scripts))
        headings = None
        if camera is not None:
            frames = chunks * chunk_frames
            headings = tuple(tuple(prompt_headings(camera, s, chunk_frames, frames)) for s in scripts)
        return cls(texts, switches, headings)

    @property
    def chunks(self) -> int:
        return self.texts.shape[1]

    def at(self, chunk: int) -> torch.Tensor:
        return self.texts[:, chunk]

    def headings_of(self, frames: list[int]) -> list[list[float]] | None:
        """[B][len(frames)] headings of the given latent frames (None without a camera)."""
        return None if self.headings is None else [[h[f] for f in frames] for h in self.headings]

    def to(self, device) -> "Timeline":
        return Timeline(self.texts.to(device), self.switches, self.headings)


EXIT_STEPS = ("per_chunk", "shared")


@dataclass(frozen=True)
class RolloutRules:
    """How a training rollout departs from plain inference; the defaults are ours (docs/training.md)."""

    exit_step: str = "per_chunk"  # per_chunk: one draw per target chunk | shared: one for all (SF, CF default)
    reencode_noise: bool = False  # commit passes read 0.995 x0 + 0.005 eps (SF, CF `context_noise: 0`)
    cross_chunk_grad: bool = False  # later chunks back-propagate into earlier exit passes (SF, CF in-place cache)
    released_first_chunks: bool = False  # CF release: first 2 target chunks fully denoised, the first without grad

    def exits(self, ctx: StepContext, chunks: int, num_steps: int) -> list[int]:
        """Exit step of each target chunk (the released rule overrides the first two after the draw)."""
        exits = draw_exits(ctx, chunks, num_steps, self.exit_step == "shared")
        if self.released_first_chunks:
            # The release fully denoises chunks starting at or before start_gradient_frame_index = target start
            # + 3 (its chunk), i.e. the first two target chunks (`pipeline/self_forcing_training.py`).
            exits[:2] = [num_steps - 1] * min(2, chunks)
        return exits

    def with_grad(self, target_chunk: int) -> bool:
        """Whether the target chunk's exit pass keeps its graph (the release: not the first one)."""
        return not (self.released_first_chunks and target_chunk == 0)


@dataclass
class Rollout:
    latents: torch.Tensor  # [B, C, F, H, W]: context frames detached, target frames with grad
    target_start: int  # first latent frame of the target window
    exits: list[int]  # exit step of each target chunk
    plans: list[ChunkPlan]  # the student memory's plan per chunk

    @property
    def target(self) -> torch.Tensor:
        return self.latents[:, :, self.target_start :]

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
    timeline: Timeline | torch.Tensor,
    memory: MemorySpec,
    video: VideoConfig,
    sampling: SamplingConfig,
    num_frames: int,
    target_frames: int,
    ctx: StepContext,
    *,
    rules: RolloutRules = RolloutRules(),
) -> Rollout:
    """Roll out `num_frames` latent frames under `timeline` (a text [B, L, D]: one prompt throughout); the last
    `target_frames` are the target window."""
    chunk = video.chunk_frames
    if num_frames % chunk or target_frames % chunk or not 0 < target_frames <= num_frames:
        raise ValueError(f"rollout of {num_frames} frames with a {target_frames}-frame target: not whole chunks")
    if isinstance(timeline, torch.Tensor):
        timeline = Timeline.constant(timeline, num_frames // chunk)
    if timeline.chunks < num_frames // chunk:
        raise ValueError(f"a timeline of {timeline.chunks} chunks cannot prompt a {num_frames}-frame rollout")
    stream = VideoStream(
        model,
        timeline.at(0),
        memory,
        video,
        sampling,
        max_frames=num_frames,
        trainable=True,
        reencode_noise=rules.reencode_noise,
    )
    if rules.cross_chunk_grad:
        stream.memory.track_exit_gradients()
    target_start = num_frames - target_frames
    exits = rules.exits(ctx, target_frames // chunk, len(stream.steps))
    chunks, plans = [], []
    for start in range(0, num_frames, chunk):
        if start // chunk in timeline.switches:
            stream.switch_prompt(timeline.at(start // chunk))
        noise = stream.noise(chunk, ctx.generator)
        headings = timeline.headings_of(list(range(start, start + chunk)))
        index = (start - target_start) // chunk
        if start < target_start:
            with torch.no_grad():  # context: the full few-step schedule, no graph
                chunks.append(stream.step(noise, ctx.generator, headings=headings))
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and rules.with_grad(index)):
                chunks.append(stream.step(noise, ctx.generator, exit_step=exits[index], headings=headings))
        plans.append(stream.last_plan)
    return Rollout(torch.cat(chunks, dim=2), target_start, exits, plans)
