"""Evaluation protocols that tie a generation to a world's occlusion schedule (docs/results.md).

A model that draws its video from the prompt alone decides by itself whether and when the view is
hidden, so a free-running video says little about memory across occlusions. These protocols make the
world's occlusions happen in the generated video by giving the generator some latent frames
(`Pipeline.stream(known_frames=...)`, replacement conditioning):

- `occlusion`: the fully hidden latent frames of every occlusion are given (uniform black, curtain or
  wall); everything else, including the scene and the transitions in and out, is the model's. After
  each occlusion the model must bring back the scene *it* drew before, from memory alone when the
  occlusion outlasts its recent frames. Every world metric (fidelity, drift, motion) still applies.
  Nothing tells the model when an occlusion ends, so restoration is also judged where its view
  actually comes back (`world_metrics.return_frame`, within RETURN_WINDOW_SECONDS).
- `recall`: the ground truth is given everywhere except from the moment the view starts to return
  until `RECALL_SECONDS` after it is due back. The model must redraw the *true* scene, including the
  events of later visible stretches, which it has only seen through its memory. Only the restoration
  metrics (before = ground truth, after = the model's) are meaningful here.
"""

from __future__ import annotations

import numpy as np
import torch

from contextforcing.data.world.style import FPS, LATENT_STRIDE, latent_start_frame, latents_for_frames
from contextforcing.data.world.track import WorldTrack
from contextforcing.errors import UserError
from contextforcing.eval.world_metrics import RETURN_WINDOW_SECONDS

PROTOCOLS = ("occlusion", "recall")
# How long the model draws alone after each occlusion in `recall`: the whole window in which the
# restoration metrics look for the view's return, so the frame they judge is always the model's own.
RECALL_SECONDS = RETURN_WINDOW_SECONDS


def latent_pixel_frames(latent: int, n_frames: int) -> range:
    """The pixel frames latent frame `latent` decodes to (latent 0 is one frame, later ones LATENT_STRIDE)."""
    first = latent_start_frame(latent)
    last = 0 if latent == 0 else LATENT_STRIDE * latent
    return range(first, min(last, n_frames - 1) + 1)


def hidden_latents(track: WorldTrack) -> list[int]:
    """Latent frames all of whose pixel frames are fully hidden."""
    n = latents_for_frames(track.n_frames)
    return [lat for lat in range(n) if all(track.coverage[f] >= 1 for f in latent_pixel_frames(lat, track.n_frames))]


def recall_latents(track: WorldTrack, seconds: float = RECALL_SECONDS) -> list[int]:
    """Latent frames the model draws in `recall`: per occlusion, those that show any pixel frame from
    just after its last fully hidden frame until `seconds` after the view is fully back."""
    hidden = set(hidden_latents(track))
    drawn: set[int] = set()
    for occ in track.occlusions():
        span = np.flatnonzero(track.coverage[occ.start_frame : occ.end_frame] >= 1)
        resume = occ.start_frame + (int(span[-1]) + 1 if span.size else 0)
        stop = min(track.n_frames, occ.end_frame + int(round(seconds * FPS)))
        for lat in range(latents_for_frames(track.n_frames)):
            frames = latent_pixel_frames(lat, track.n_frames)
            if lat not in hidden and frames.start < stop and frames.stop > resume:
                drawn.add(lat)
    return sorted(drawn)


def given_latents(protocol: str, track: WorldTrack) -> list[int]:
    """Which latent frames of the world the generator is given under `protocol`."""
    if protocol == "occlusion":
        return hidden_latents(track)
    if protocol == "recall":
        drawn = set(recall_latents(track))
        return [lat for lat in range(latents_for_frames(track.n_frames)) if lat not in drawn]
    raise UserError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def known_frames(protocol: str, track: WorldTrack, latents: torch.Tensor) -> dict[int, torch.Tensor]:
    """`Pipeline.stream(known_frames=...)` for `protocol`: the world's latents [B, C, F, H, W] (its frames
    through the model's codec) at the given latent frames."""
    if latents.shape[2] != latents_for_frames(track.n_frames):
        raise UserError(
            f"world latents have {latents.shape[2]} frames, the world needs {latents_for_frames(track.n_frames)}"
        )
    return {lat: latents[:, :, lat : lat + 1] for lat in given_latents(protocol, track)}


def world_latents(codec, track: WorldTrack) -> torch.Tensor:
    """The world's ground-truth frames through `codec`: latents [1, C, F, H, W]."""
    from contextforcing.data.world.render import render

    pixels = torch.from_numpy(render(track)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    return codec.encode(pixels).float()


def generate_world(
    pipe, track: WorldTrack, protocol: str, seed: int, *, memory=None, latents: torch.Tensor | None = None
) -> np.ndarray:
    """A video of the world's length streamed by `pipe` (a `Pipeline`) from the world's prompt under `protocol`;
    uint8 frames [T, H, W, 3]. `latents`: the world's `world_latents` through `pipe.codec`, if already computed."""
    latents = world_latents(pipe.codec, track) if latents is None else latents
    known = known_frames(protocol, track, latents)
    video = pipe.preset.video
    seconds = latents.shape[2] / video.latent_fps  # every latent frame of the world (whole chunks: a few more)
    generated = pipe(track.prompt.canonical, seconds, seed=seed, memory=memory, known_frames=known)
    return generated.frames[: track.n_frames]
