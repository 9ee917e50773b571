"""Camera headings of a room-anchored model (`ModelConfig.rope_width = "room"`: its width positions follow the
room, not the screen, `model/rope.py`): where the view points at each latent frame, in tokens, and the heading each
stored frame was made at.

A camera's headings are host floats integrated from a step per chunk (tokens per latent frame, e.g. what a
prompt's camera action says): frame 0 is the first view, every later frame turns by its chunk's step (Wan's first
latent frame is a single pixel frame, so the camera cannot have moved within it; the panorama world moves the
same way, data/world/panorama/simulate.py). The memory keeps each stored frame's heading (`FrameHeadings`): a
stored frame is rotated at its own heading whenever a chunk attends it, and a prompt switch's recache re-encodes
frames at theirs; one float per frame and sample, bounded like the store (the driver drops the headings of
frames it no longer holds).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

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


class FrameHeadings:
    """The heading each frame was made at, per sample, for the frames a memory holds (and the last ones a recache
    may re-encode)."""

    def __init__(self, batch: int, device=None):
        self.batch, self.device = batch, device
        self.by_frame: dict[int, tuple[float, ...]] = {}  # frame -> heading per sample

    def record(self, frames: list[int], headings) -> None:
        """`headings` [B][len(frames)] floats (tokens) for `frames`; None: 0 for all (a camera that never turned)."""
        if headings is None:
            headings = [[0.0] * len(frames)] * self.batch
        if len(headings) != self.batch or any(len(h) != len(frames) for h in headings):
            raise ValueError(f"headings must be [{self.batch}][{len(frames)}] floats, one per sample and frame")
        for i, f in enumerate(frames):
            self.by_frame[f] = tuple(float(h[i]) for h in headings)

    def first_sample(self, frame: int) -> float:
        return self.by_frame[frame][0]

    def of_first_sample(self, frames: list[int]) -> dict[int, float]:
        """Sample 0's heading of each of `frames` (what a plan records)."""
        return {f: self.by_frame[f][0] for f in frames}

    def latest(self, frame: int) -> float:
        """Sample 0's heading at `frame`, or at the frame before it when `frame` has none yet (a recache plans
        the next chunk before its headings are known), else 0."""
        return self.by_frame.get(frame, self.by_frame.get(frame - 1, (0.0,)))[0]

    def tensor(self, frames: list[int]) -> torch.Tensor:
        """[B, len(frames)] float64 headings of recorded frames, for the model's rotation."""
        rows = [[self.by_frame[f][b] for f in frames] for b in range(self.batch)]
        return torch.tensor(rows, dtype=torch.float64, device=self.device)

    def keep(self, wanted: Callable[[int], bool]) -> None:
        self.by_frame = {f: h for f, h in self.by_frame.items() if wanted(f)}
