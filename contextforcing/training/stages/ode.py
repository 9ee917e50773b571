"""ODE initialisation: teacher trajectories, then regression of the causal student onto them.

Pairs (CausVid Sec. 3.3 / Self-Forcing `generate_ode_pairs`): the multi-step teacher samples with Euler and
CFG through `VideoStream(euler_num_steps=...)` with the student's memory, following a script's prompts chunk
by chunk (prompt switches as inference makes them); for each script we store its chunk prompts, the noise,
the ODE states at the student's few-step timesteps and the final latents, in sharded safetensors files.

The known bug of the reference code (states stored at indices [0, 12, 24, 36] of a shift-8 trajectory
while the student's list is warped at shift 5) cannot happen here: the stored indices are *derived* from
the student's own warped list on the teacher's Euler grid (same schedule, same shift), generation refuses
a grid that does not contain every student step, and training refuses pairs whose timesteps or shift
differ from its own.

Regression: the student streams the trajectory chunk by chunk through its own memory, teacher-forced
(`VideoStream.teacher_forced`): each chunk of each sample picks one stored state k, the student predicts x0
from it at t_k attending the clean final latents of the chunks before (as its memory keeps them, under the
script's prompts), and the chunk's final latents are committed; the predictions are regressed onto the final
latents (ode_regression_loss). A batch switches prompts where any of its scripts does (`rollout.Timeline`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from contextforcing.config import SamplingConfig
from contextforcing.errors import UserError
from contextforcing.model.wan import CausalWanModel
from contextforcing.sampling.samplers import euler_steps, x0_from_flow
from contextforcing.sampling.stream import VideoStream
from contextforcing.training import distributed, losses
from contextforcing.training.registry import BuildContext
from contextforcing.training.rollout import Timeline
from contextforcing.training.stage import StepContext, Update
from contextforcing.training.stages.common import (
    OptimizerOptions,
    TextOptions,
    few_step_timesteps,
    frozen_copy,
    guidance_standard,
    load_or_build,
    memory_spec,
    schedule_of,
    text_encoder,
    training_camera,
    video_config,
)
from contextforcing.training.stages.samples import DataOptions, PromptSource, sample_ids

FORMAT = "contextforcing.ode-pairs/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ODEOptions:
    model: str = "tiny"
    init: str | None = None  # student start (random init when unset)
    teacher_init: str | None = None  # the multi-step teacher that makes the pairs
    memory: dict = field(
        default_factory=lambda: {"policy": "slow_fast"}
    )  # the student's (the teacher samples with it too)
    pairs_dir: str = "ode_pairs"  # generated there when it holds no manifest
    num_pairs: int = 16
    pairs_per_shard: int = 8
    generation_batch: int = 1  # trajectories sampled together (one batched stream)
    num_frames: int = 21  # latent frames per trajectory
    euler_num_steps: int = 48  # must put every student step on the Euler grid (48 for [1000, 750, 500, 250])
    guidance_scale: float = 6.0
    guidance_convention: str = "standard"  # standard: uncond + w (cond - uncond) (the SF pair script's 6.0)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # the student's few-step list and shift
    optimizer: OptimizerOptions = field(default_factory=lambda: OptimizerOptions(lr=2e-6))
    text: TextOptions = field(default_factory=TextOptions)
    data: DataOptions = field(default_factory=DataOptions)

    def __post_init__(self):
        chunk = video_config(self.model).chunk_frames
        if self.num_frames % chunk or self.num_frames <= 0:
            raise UserError(f"ode num_frames={self.num_frames} must be a positive multiple of the chunk ({chunk})")
        if min(self.num_pairs, self.pairs_per_shard, self.generation_batch) < 1:
            raise UserError("ode num_pairs, pairs_per_shard and generation_batch must be at least 1")


def state_indices(student_steps: list[float], euler: list[float], tolerance: float = 1e-6) -> list[int]:
    """Index of each student step on the Euler grid; refuses a grid that misses one (the step/shift bug)."""
    grid = torch.tensor(euler, dtype=torch.float64)
    indices = []
    for t in student_steps:
        i = int((grid - t).abs().argmin())
        if abs(float(grid[i]) - t) > tolerance * max(1.0, abs(t)):
            raise UserError(
                f"student step t={t:.4f} is not on the {len(euler)}-step Euler grid of the same shift "
                f"(nearest {float(grid[i]):.4f}); choose euler_num_steps so that it is (e.g. 48 for "
                f"[1000, 750, 500, 250])"
            )
        indices.append(i)
    return indices


class StateRecorder:
    """Forward pre-hook on the teacher: the sampler's state x at each wanted timestep of the current chunk
    (the first call at t; the CFG branch calls again with the same x). Commit passes are ignored."""

    def __init__(self, model: nn.Module, timesteps: list[float]):
        self.timesteps, self.states = timesteps, {}
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if kwargs.get("commit"):
            return
        t = float(args[1].reshape(-1)[0])
        for k, wanted in enumerate(self.timesteps):
            if math.isclose(t, wanted, rel_tol=1e-6, abs_tol=1e-6) and k not in self.states:
                self.states[k] = args[0].detach().clone()

    def take(self) -> torch.Tensor:
        """[B, K, C, F, H, W] of the chunk just sampled; resets for the next chunk."""
        if len(self.states) != len(self.timesteps):
            raise RuntimeError(f"recorded {len(self.states)} of {len(self.timesteps)} ODE states")
        out = torch.stack([self.states[k] for k in range(len(self.timesteps))], dim=1)
        self.states = {}
        return out


@torch.no_grad()
def generate_pairs(
    options: ODEOptions, teacher: CausalWanModel, encoder, rank: int = 0, world_size: int = 1, seed: int = 0
) -> None:
    """Write this rank's shards (shard s belongs to rank s % world_size); rank 0 writes the manifest."""
    sampling = options.sampling
    schedule = schedule_of(sampling)
    student = few_step_timesteps(sampling)
    euler = euler_steps(options.euler_num_steps, schedule)
    indices = state_indices(student, euler)
    guide = guidance_standard(options.guidance_scale, options.guidance_convention)
    run_sampling = dataclasses.replace(sampling, guidance_scale=guide)
    video, out = video_config(options.model), Path(options.pairs_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts, device = PromptSource(options.data), next(teacher.parameters()).device
    camera = training_camera(options.model, options.data)
    uncond = encoder.encode([options.text.negative_prompt]).to(device)
    chunks = options.num_frames // video.chunk_frames
    shards = math.ceil(options.num_pairs / options.pairs_per_shard)
    meta = {
        "format": FORMAT,
        "timesteps": student,
        "euler_indices": indices,
        "shift": schedule.shift,
        "euler_num_steps": options.euler_num_steps,
        "guidance_scale": guide,
        "num_frames": options.num_frames,
        "memory": memory_spec(options.memory).to_dict(),
    }
    for shard in range(rank, shards, world_size):
        ids = range(shard * options.pairs_per_shard, min((shard + 1) * options.pairs_per_shard, options.num_pairs))
        scripts = [prompts.script(i, chunks) for i in ids]
        generator = torch.Generator(device).manual_seed(seed * 1_000_003 + shard)
        parts = [
            _trajectories(
                teacher,
                Timeline.from_scripts(encoder, scripts[i : i + options.generation_batch], camera, video.chunk_frames),
                uncond,
                run_sampling,
                video,
                options,
                student,
                generator,
            )
            for i in range(0, len(scripts), options.generation_batch)
        ]
        tensors = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        save_file(
            tensors,
            str(out / f"shard-{shard:05d}.safetensors"),
            metadata={"prompts": json.dumps(scripts), **_meta_strings(meta)},
        )
    distributed.barrier()  # every shard is on disk before rank 0 writes the manifest
    if rank == 0:
        meta.update(
            count=options.num_pairs,
            pairs_per_shard=options.pairs_per_shard,
            shards=[f"shard-{s:05d}.safetensors" for s in range(shards)],
        )
        (out / MANIFEST).write_text(json.dumps(meta, indent=1))


def _meta_strings(meta: dict) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in meta.items()}


def _trajectories(teacher, timeline: Timeline, uncond, sampling, video, options, student, generator) -> dict:
    """Sample one batch of trajectories chunk by chunk; returns CPU tensors noise, states, final."""
    timeline = timeline.to(uncond.device)
    batch = timeline.texts.shape[0]
    stream = VideoStream(
        teacher,
        timeline.at(0),
        memory_spec(options.memory),
        video,
        sampling,
        uncond_text=uncond.expand(batch, -1, -1),
        euler_num_steps=options.euler_num_steps,
        max_frames=options.num_frames,
    )
    recorder = StateRecorder(teacher, student)
    noise, states, final = [], [], []
    try:
        for c in range(options.num_frames // video.chunk_frames):
            if c in timeline.switches:
                stream.switch_prompt(timeline.at(c))
            n = stream.noise(video.chunk_frames, generator)
            frames = list(range(c * video.chunk_frames, (c + 1) * video.chunk_frames))
            final.append(stream.step(n, generator, headings=timeline.headings_of(frames)))
            noise.append(n)
            states.append(recorder.take())
    finally:
        recorder.handle.remove()
    out = {"noise": torch.cat(noise, 2), "states": torch.cat(states, 3), "final": torch.cat(final, 2)}
    return {k: v.contiguous().cpu() for k, v in out.items()}


class ODEPairs:
    """Reads a pairs directory; validates it against the student's step list and shift."""

    def __init__(self, root: str | Path, student_steps: list[float], shift: float):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise UserError(f"{self.root} holds no ODE pairs ({MANIFEST} missing)")
        self.meta = json.loads(path.read_text())
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{path} is not an ODE pairs manifest")
        stored = self.meta["timesteps"]
        if (
            self.meta["shift"] != shift
            or len(stored) != len(student_steps)
            or any(not math.isclose(a, b, rel_tol=1e-6) for a, b in zip(stored, student_steps))
        ):
            raise UserError(
                f"ODE pairs in {self.root} were stored at t={stored} (shift {self.meta['shift']}), the "
                f"student denoises at t={student_steps} (shift {shift}); regenerate the pairs"
            )
        self._cache: dict[int, dict] = {}  # the one shard last read

    def __len__(self) -> int:
        return int(self.meta["count"])

    def _shard(self, s: int) -> dict:
        if s not in self._cache:
            file = self.root / self.meta["shards"][s]
            if not file.is_file():
                raise UserError(f"ODE pairs shard {file} is missing")
            with safe_open(str(file), "pt") as f:
                self._cache = {
                    s: {k: f.get_tensor(k) for k in f.keys()} | {"prompts": json.loads(f.metadata()["prompts"])}
                }
        return self._cache[s]

    def __getitem__(self, i: int) -> dict:
        i %= len(self)
        shard, row = divmod(i, int(self.meta["pairs_per_shard"]))
        data = self._shard(shard)
        return {"prompts": data["prompts"][row], "states": data["states"][row], "final": data["final"][row]}


class ODEStage:
    name = "ode"

    def __init__(self, options: ODEOptions, device: torch.device, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.options, self.device = options, device
        self.video = video_config(options.model)
        self.sampling = options.sampling
        self.schedule = schedule_of(self.sampling)
        self.steps = few_step_timesteps(self.sampling)
        self.encoder = text_encoder(options.text, options.model)
        if not (Path(options.pairs_dir) / MANIFEST).is_file():
            teacher = frozen_copy(load_or_build(options.model, options.teacher_init, seed + 1, device))
            generate_pairs(options, teacher, self.encoder, rank, world_size, seed)
            del teacher
        self.pairs = ODEPairs(options.pairs_dir, self.steps, self.schedule.shift)
        self.student = load_or_build(options.model, options.init, seed, device)
        self.spec = memory_spec(options.memory)
        self.camera = training_camera(options.model, options.data)

    def trainable(self) -> dict[str, nn.Module]:
        return {"generator": self.student}

    def frozen(self) -> dict[str, nn.Module]:
        return {}

    def optimizer_settings(self, group: str) -> dict:
        return self.options.optimizer.settings()

    def updates(self, step: int) -> list[Update]:
        return [Update("generator", self.loss)]

    def batches(self, rank: int, world_size: int, start: int) -> Iterator[dict]:
        for ids in sample_ids(rank, world_size, start, self.options.data.micro_batch):
            rows = [self.pairs[i] for i in ids]
            scripts = [r["prompts"] for r in rows]
            yield {
                "scripts": scripts,
                "timeline": Timeline.from_scripts(self.encoder, scripts, self.camera, self.video.chunk_frames),
                "states": torch.stack([r["states"] for r in rows]).float(),
                "final": torch.stack([r["final"] for r in rows]).float(),
            }

    def loss(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        states, final = batch["states"].to(ctx.device), batch["final"].to(ctx.device)
        timeline = batch["timeline"].to(ctx.device)
        b, k_states, _, frames = states.shape[:4]
        chunk = self.video.chunk_frames
        # One stored state per chunk per sample (values only, not control flow: per-rank generator).
        k = torch.randint(0, k_states, (b, frames // chunk), generator=ctx.generator, device=ctx.device)
        k = k.repeat_interleave(chunk, dim=1)  # [B, F]
        index = k[:, None, None, :, None, None].expand(b, 1, *states.shape[2:])
        x = states.gather(1, index).squeeze(1)  # [B, C, F, H, W]
        t = torch.tensor(self.steps, device=ctx.device, dtype=torch.float32)[k]
        stream = VideoStream(
            self.student, timeline.at(0), self.spec, self.video, self.sampling, max_frames=frames, trainable=True
        )
        flows = []
        for c, start in enumerate(range(0, frames, chunk)):
            if c in timeline.switches:
                stream.switch_prompt(timeline.at(c))
            part = slice(start, start + chunk)
            headings = timeline.headings_of(list(range(start, start + chunk)))
            flows.append(stream.teacher_forced(x[:, :, part], t[:, part], final[:, :, part], headings))
        x0 = x0_from_flow(x, torch.cat(flows, dim=2), self.schedule.sigma(t))
        loss = losses.ode_regression_loss(x0, final)
        metrics = {"loss": float(loss.detach().mean())}
        for i, step in enumerate(self.steps):  # loss per stored timestep (on frames that drew it)
            chosen = k == i
            if chosen.any():
                per = ((x0.detach() - final) ** 2).mean(dim=(1, 3, 4))[chosen].mean()
                metrics[f"loss_t{int(round(step))}"] = float(per)
        return loss.mean(), metrics


def build(options: ODEOptions, bctx: BuildContext) -> ODEStage:
    return ODEStage(options, bctx.device, bctx.seed, bctx.rank, bctx.world_size)
