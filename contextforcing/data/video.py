"""mp4 reading and progressive, atomic writing (imageio-ffmpeg, which bundles its own ffmpeg)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contextforcing.errors import UserError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if `path` cannot be created."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"output path {path} is a directory")
    if not parent.is_dir():
        raise UserError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output directory {parent} is not writable")
    return path


def partial_path(path: Path) -> Path:
    """Where a file is written before it is renamed into place (same directory, so rename is atomic)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


class VideoWriter:
    """Appends uint8 frames [T, H, W, 3] to an mp4 as they come; the file grows on disk while writing.

    Frames go to a hidden partial file that `close()` renames into place, so the final path only ever
    holds a complete, playable file. `close(keep=False)` discards the partial file instead.
    """

    def __init__(self, path: str | os.PathLike, fps: float, quality: int = 8):
        import imageio.v2 as imageio

        self.path = check_writable(path)
        self.tmp = partial_path(self.path)
        self.frames_written = 0
        self._writer = imageio.get_writer(
            self.tmp, format="FFMPEG", fps=fps, codec="libx264", quality=quality, macro_block_size=1,
            pixelformat="yuv420p",
        )

    def write(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
        for frame in frames:
            self._writer.append_data(frame)
        self.frames_written += len(frames)

    def close(self, keep: bool = True) -> None:
        self._writer.close()
        if keep and self.frames_written:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Ctrl-C keeps what was generated (a playable file); any other error leaves nothing behind.
        self.close(keep=exc_type is None or issubclass(exc_type, KeyboardInterrupt))


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a whole video as uint8 [T, H, W, 3] and its frame rate."""
    import imageio.v2 as imageio

    path = Path(path)
    if not path.is_file():
        raise UserError(f"video {path} does not exist")
    try:
        reader = imageio.get_reader(path, format="FFMPEG")
        fps = float(reader.get_meta_data().get("fps", 0.0))
        frames = np.stack([np.asarray(f) for f in reader])
        reader.close()
    except Exception as err:  # imageio raises several types for broken files
        raise UserError(f"cannot read video {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    return frames, fps


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON to a temp file in the same directory, then rename it into place."""
    import json

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
