"""The camera heading each stored frame was made at, for a room-anchored model (its width positions follow the
room, not the screen: `model/rope.py`). A stored frame is rotated at its own heading whenever a chunk attends it,
and a prompt switch's recache re-encodes frames at theirs. Host floats, one per frame and sample, bounded like
the store (the driver drops the headings of frames it no longer holds).
"""

from __future__ import annotations

from typing import Callable

import torch


class FrameHeadings:
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
