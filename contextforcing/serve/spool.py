"""A stream's frames kept on disk (Download mp4, replays) so that the server's memory stays flat."""

from __future__ import annotations

import math
import mmap
import tempfile

import numpy as np


class FrameSpool:
    """The stream's frames so far, in an unnamed temporary file (for Download mp4): the server's memory stays
    flat however long a stream runs. Appended by the stream's worker thread, read through `mmap` (no shared
    file position) by a download."""

    def __init__(self):
        self.file = tempfile.TemporaryFile(prefix="contextforcing-serve-")
        self.count = 0
        self.shape: tuple[int, ...] | None = None

    def append(self, frames: np.ndarray) -> None:
        if self.shape is None:
            self.shape = frames.shape[1:]
        if frames.shape[1:] != self.shape or frames.dtype != np.uint8:
            raise ValueError(f"frames {frames.dtype} {frames.shape[1:]} after {self.shape}")
        self.file.write(np.ascontiguousarray(frames).tobytes())
        self.file.flush()
        self.count += len(frames)

    def frames(self, count: int) -> np.ndarray:
        """The first `count` frames, read-only, mapped from the file (not copied into memory)."""
        if count == 0:
            return np.zeros((0, 0, 0, 3), np.uint8)
        size = count * math.prod(self.shape)
        view = mmap.mmap(self.file.fileno(), size, access=mmap.ACCESS_READ)
        return np.frombuffer(view, np.uint8).reshape(count, *self.shape)

    def close(self) -> None:
        self.file.close()
