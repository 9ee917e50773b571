"""The pieces of the DMD stages that reproduce Self-Forcing's or the released Context Forcing code where ours
departs from them (docs/training.md lists every departure, why, and its switch).

  score_shift                 `ScoreTables`: the table the score networks' flows are read on
  teacher_context: released   `released_score`, `ReleasedContext`: the released Stage 2 teacher call
The rollout switches (exit_step, reencode_noise, cross_chunk_grad) live in `training.rollout.RolloutRules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from contextforcing.errors import UserError
from contextforcing.sampling.samplers import FlowMatchSchedule, flow_from_x0, x0_from_flow


@dataclass(frozen=True)
class ScoreTables:
    """Where a DMD step reads sigma: `noise` (the sampling shift) noises the target and labels the critic's
    flow target; `score` turns the score networks' flows into x0. Ours is one table; Self-Forcing's and the
    released code's score wrappers keep their default shift-8 table while the noise comes from shift 5."""

    noise: FlowMatchSchedule
    score: FlowMatchSchedule

    @property
    def one_table(self) -> bool:
        return self.score == self.noise

    def x0(self, x_t: torch.Tensor, flow: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0_from_flow(x_t, flow, self.score.sigma(t))

    def critic_flow(self, x_t: torch.Tensor, flow: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The fake score's flow as Self-Forcing's critic loss reads it: its x0 on the score table, turned back
        into a flow on the noise table (flow * sigma_score / sigma_noise); the flow itself with one table."""
        if self.one_table:
            return flow
        return flow_from_x0(x_t, self.x0(x_t, flow, t), self.noise.sigma(t))


def released_score(
    model, x_t: torch.Tensor, t: torch.Tensor, text, positions: list[int], context: torch.Tensor, **frame_kwargs
):
    """The released Stage 2 score call (`model/dmd.py`, `utils/wan_wrapper.py`): one bidirectional pass over
    [clean context ; noisy target] at contiguous positions, every frame labelled with the target's timestep
    (one scalar per sample, the bidirectional Wan's); returns the target's flow. Ours (`forward_with_context`)
    labels the context t = 0 and lets it attend only itself. `frame_kwargs` go to the model as they are
    (per-frame inputs of the whole [context ; target] sequence)."""
    b, fc = context.shape[0], context.shape[2]
    frames = torch.cat([context, x_t], dim=2)
    out = model(frames, t.reshape(b, 1).expand(b, frames.shape[2]), text, positions=positions, **frame_kwargs)
    return out[:, :, fc:]


class ReleasedContext:
    """The released Stage 2 context: the `window` latents before the target, the first of them replaced by a
    VAE round trip (`model/base.py`): every latent up to it decoded to pixels, the last pixel frame encoded
    alone as an image latent (Self-Forcing's hook for a first latent that Wan's causal VAE makes special)."""

    def __init__(self, codec):
        self.codec = codec

    @torch.no_grad()
    def first_frame(self, latents: torch.Tensor, frame: int) -> torch.Tensor:
        """The image latent [B, C, 1, h, w] that replaces latent `frame` of `latents` [B, C, F, h, w]."""
        pixels = self.codec.stream_decoder().decode(latents[:, :, : frame + 1])
        image = self.codec.encode(pixels[:, :, -1:])
        return image.to(device=latents.device, dtype=latents.dtype)

    def gather(self, latents: torch.Tensor, frames: list[int]) -> torch.Tensor:
        """The context latents of `frames` (contiguous, oldest first), the first one re-encoded."""
        index = torch.tensor(frames[1:], dtype=torch.long, device=latents.device)
        return torch.cat([self.first_frame(latents, frames[0]), latents.index_select(2, index)], dim=2)


def released_codec(data, text, channels: int, video, device):
    """The video codec of the re-encode: the data's codec (world / panorama / preview), else Wan's VAE from
    `text.wan_dir`; one line when there is none."""
    if data.source in ("world", "panorama"):
        from contextforcing.training.stages.samples import world_video_codec

        return world_video_codec(data.codec, channels, video, data.codec_path)
    if text.wan_dir:
        from contextforcing.codecs.loading import load_vae

        return load_vae(Path(text.wan_dir), device)
    raise UserError(
        "teacher_context=released re-encodes the first context frame through the VAE: it needs a video codec "
        "(data.source world or panorama, or text.wan_dir for Wan's VAE)"
    )


def check_released_window(fewest: int, most: int, window: int) -> None:
    """The released context is the `window` frames before the target: a rollout has none before it (Stage 1)
    or at least `window` (the release's slicing breaks in between)."""
    if most and fewest < window:
        raise UserError(
            f"teacher_context=released reads the context_window={window} frames before the target: rollouts "
            f"must have none or at least {window} frames before it (they have {fewest} to {most})"
        )
