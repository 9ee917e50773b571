"""Camera headings: where the view of a room-anchored model points, per latent frame, in tokens.

A room-anchored model (`ModelConfig.rope_width = "room"`) places each token at its column plus the frame's
heading, so the memory needs the heading of every frame it stores. Headings are host floats integrated from a
camera step per chunk (tokens per latent frame, e.g. what a prompt's camera action says): frame 0 is the first
view, every later frame turns by its chunk's step (Wan's first latent frame is a single pixel frame, so the
camera cannot have moved within it; the panorama world moves the same way, data/world/panorama/simulate.py).
"""

from __future__ import annotations

from typing import Callable, Sequence

CameraStep = Callable[[str], float]  # prompt -> heading change per latent frame (tokens)


def chunk_headings(heading: float, step: float, start: int, frames: int) -> list[float]:
    """Headings of latent frames [start, start + frames) for a camera at `heading` on frame start - 1 (the
    first view: 0) that turns `step` tokens per latent frame."""
    out = []
    for frame in range(start, start + frames):
        if frame > 0:
            heading += step
        out.append(heading)
    return out


def script_headings(steps: Sequence[float], chunk_frames: int, n_frames: int) -> list[float]:
    """Headings of the first `n_frames` latent frames of a script whose chunk c turns by `steps[c]`."""
    out: list[float] = []
    for chunk, start in enumerate(range(0, n_frames, chunk_frames)):
        frames = min(chunk_frames, n_frames - start)
        out += chunk_headings(out[-1] if out else 0.0, steps[chunk], start, frames)
    return out


def prompt_headings(camera: CameraStep, chunk_prompts: Sequence[str], chunk_frames: int, n_frames: int) -> list[float]:
    """Headings of a script given as one prompt per chunk, read by `camera`."""
    return script_headings([camera(p) for p in chunk_prompts], chunk_frames, n_frames)
