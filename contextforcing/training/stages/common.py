"""Pieces shared by the stages: nested options, model building, text encoding, memory specs, layouts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import torch

from contextforcing.config import SamplingConfig, VideoConfig, get_preset
from contextforcing.errors import UserError
from contextforcing.memory.context import ContextMemory
from contextforcing.memory.headings import CameraStep
from contextforcing.memory.plan import ChunkPlan
from contextforcing.memory.policies import mean_key, pooled_key
from contextforcing.memory.spec import MemorySpec, make_spec
from contextforcing.model.wan import CausalWanModel, build_model
from contextforcing.sampling.samplers import FlowMatchSchedule

T = TypeVar("T")


@dataclass(frozen=True)
class OptimizerOptions:
    """AdamW settings of one module group (Stage.optimizer_settings)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def settings(self) -> dict:
        return {"lr": self.lr, "betas": tuple(self.betas), "weight_decay": self.weight_decay}

    def validate(self) -> "OptimizerOptions":
        if not 0 < self.lr < math.inf:
            raise UserError(f"lr must be a positive number, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not 0 <= self.weight_decay < math.inf:
            raise UserError(f"weight_decay must be >= 0, got {self.weight_decay}")
        return self


@dataclass(frozen=True)
class TextOptions:
    """Text conditioning: the weight-free hash encoder (tiny presets) or Wan's UMT5 (`wan_dir`)."""

    encoder: str = "hash"  # hash | umt5
    wan_dir: str | None = None
    negative_prompt: str = ""  # the unconditional branch of CFG

    def validate(self) -> "TextOptions":
        if self.encoder not in ("hash", "umt5"):
            raise UserError(f"text.encoder must be hash or umt5, got {self.encoder!r}")
        if self.encoder == "umt5" and not self.wan_dir:
            raise UserError("text.encoder umt5 needs text.wan_dir (a Wan2.1 directory)")
        return self


def text_encoder(options: TextOptions, preset_name: str):
    """An object with .encode(prompts) -> [B, text_len, text_dim] (CPU tensors)."""
    model = get_preset(preset_name).model
    if options.encoder == "hash":
        from contextforcing.codecs.text import HashTextEncoder

        return HashTextEncoder(model.text_dim, model.text_len)
    from pathlib import Path

    from contextforcing.codecs.loading import load_text_encoder

    return load_text_encoder(Path(options.wan_dir), "cpu", text_len=model.text_len)


def load_or_build(preset_name: str, init: str | None, seed: int, device) -> CausalWanModel:
    """The role's initial weights: a checkpoint (any format `load_model` reads), else a seeded random init."""
    cfg = get_preset(preset_name).model
    if init:
        from contextforcing.model.checkpoints import load_model

        return load_model(init, cfg, device=device).train()
    return build_model(cfg, device=device, seed=seed).train()


def training_camera(preset_name: str, data) -> CameraStep | None:
    """What turns a training script's prompts into camera headings for a room-anchored model (None for a model
    whose width positions are screen columns). Only the panorama world's scripts state where the camera goes."""
    preset = get_preset(preset_name)
    if not preset.model.room_anchored:
        return None
    if data.source != "panorama":
        raise UserError(
            f"preset {preset_name!r} anchors width positions to a room (rope_width room): it trains on data whose "
            f"prompts say where the camera goes (data.source panorama), not {data.source!r}"
        )
    from contextforcing.data.world.panorama.camera import PanoramaCamera

    return PanoramaCamera.for_model(preset.model, preset.video)


def headings_tensor(per_sample: list[list[float]] | None, device=None) -> torch.Tensor | None:
    """[B][n] host headings as the float64 tensor the model's forward takes (None stays None)."""
    return None if per_sample is None else torch.tensor(per_sample, dtype=torch.float64, device=device)


def frozen_copy(model: CausalWanModel) -> CausalWanModel:
    """Frozen scores run in eval mode without parameter gradients."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def schedule_of(sampling: SamplingConfig) -> FlowMatchSchedule:
    return FlowMatchSchedule(sampling.shift, sampling.num_train_timesteps)


def video_config(preset_name: str) -> VideoConfig:
    return get_preset(preset_name).video


def memory_spec(values: dict) -> MemorySpec:
    """The student's memory: `{policy: slow_fast, sink: 3, ...}` (policy defaults to slow_fast)."""
    values = dict(values)
    return make_spec(values.pop("policy", "slow_fast"), values)


def plan_after_history(
    spec: MemorySpec,
    chunk_frames: int,
    history: int,
    signals: list[torch.Tensor] | None = None,
    headings: list[float] | None = None,
    model_layout=None,
) -> ChunkPlan:
    """The student memory's plan of the chunk right after `history` committed frames (whole chunks): which sink /
    slow / fast frames it attends, at which positions, replayed by the memory's own driver
    (`ContextMemory.replay`) on `signals`, one surprisal representation per chunk (`chunk_signals`), and for a
    retrieval by view the frames' camera `headings` (the model's `model_layout` gives the view and room)."""
    return ContextMemory.replay(spec, chunk_frames, history, signals, headings, model_layout)


@torch.no_grad()
def chunk_signals(
    model: CausalWanModel, latents: torch.Tensor, sampling: SamplingConfig, chunk_frames: int
) -> list[torch.Tensor]:
    """What the surprisal rule with `key_layers=first` compares, for every whole chunk of clean latents [B, C, F,
    H, W]: the chunk's commit-pass keys of the first block, averaged over its tokens, then over the batch. The
    memory computes the same from the keys its commit passes see; here a whole history is one pass."""
    b, _, f = latents.shape[:3]
    if f < chunk_frames:
        return []
    t = torch.full((b,), float(sampling.commit_timestep), device=latents.device)
    keys = model.first_block_keys(latents, t)  # [B, F*T, H, D]
    per_frame = keys.shape[1] // f
    return [
        pooled_key([mean_key(keys[:, c * per_frame : (c + chunk_frames) * per_frame])])
        for c in range(0, f - f % chunk_frames, chunk_frames)
    ]


@dataclass(frozen=True)
class ContextLayout:
    """A teacher's clean context and target window, laid out as the student's memory places them."""

    frames: list[int]  # context latent frames in memory order: sink, slow, fast
    tiers: list[str]  # tier of each context frame
    positions: list[int]  # RoPE position of each context frame
    target_frames: list[int]  # target window latent frames
    target_positions: list[int]

    def fast_indices(self) -> list[int]:
        return [i for i, tier in enumerate(self.tiers) if tier == "fast"]


def layout_from_plan(plan: ChunkPlan, target_frames: int) -> ContextLayout:
    """The student's memory at the chunk that opens the target window: the frames it attends (sink, slow,
    cached fast) at their positions; the target continues the chunk's positions."""
    first = plan.current_positions[0]
    return ContextLayout(
        [a.frame for a in plan.context],
        [a.tier for a in plan.context],
        plan.positions,
        list(range(plan.start, plan.start + target_frames)),
        list(range(first, first + target_frames)),
    )


def contiguous_layout(target_start: int, context_frames: int, target_frames: int) -> ContextLayout:
    """The released code's variant: the `context_frames` frames right before the target, positions 0.."""
    first = max(0, target_start - context_frames)
    frames = list(range(first, target_start))
    n = len(frames)
    return ContextLayout(
        frames,
        ["fast"] * n,
        list(range(n)),
        list(range(target_start, target_start + target_frames)),
        list(range(n, n + target_frames)),
    )


def gather_frames(latents: torch.Tensor, frames: list[int]) -> torch.Tensor:
    index = torch.tensor(frames, dtype=torch.long, device=latents.device)
    return latents.index_select(2, index)


def few_step_timesteps(sampling: SamplingConfig) -> list[float]:
    """The student's denoising list as VideoStream runs it (warped onto the shifted table when asked)."""
    schedule = schedule_of(sampling)
    steps = sampling.denoising_steps
    return schedule.warp(steps) if sampling.warp_denoising_steps else [float(s) for s in steps]


def guidance_standard(scale: float, convention: str) -> float:
    """CFG scale in the standard form uncond + w (cond - uncond) that `samplers.guided` uses.

    Self-Forcing / Context Forcing configs write `cond + g (cond - uncond)`, i.e. w = g + 1
    (their guidance_scale 3.0 is w = 4)."""
    if convention == "standard":
        return scale
    if convention == "self_forcing":
        return scale + 1.0
    raise UserError(f"guidance_convention must be standard or self_forcing, got {convention!r}")
