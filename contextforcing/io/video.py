"""mp4 reading and progressive, atomic writing (imageio-ffmpeg, which bundles its own ffmpeg), and the init clip
(a video or an image) a generation continues, fitted to the model's size."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contextforcing.config import VideoConfig
from contextforcing.errors import UserError, first_line, option
from contextforcing.io import outputs
from contextforcing.io.outputs import (
    InterruptGuard,
    OutputLock,
    StagedFile,
    check_name_fits,
    check_writable,
    json_text,
    publish_with,
    seal,
    temp_beside,
    write_error,
)

if TYPE_CHECKING:
    import torch

# An init video longer than one Wan clip (81 frames = 21 latent frames) is cut to its last 81 frames:
# the memory keeps only a bounded context anyway, and the VAE encode of a long clip would dominate.
MAX_INIT_PIXEL_FRAMES = 81


class VideoWriter:
    """Appends uint8 frames [T, H, W, 3] to an mp4 as they come; the file grows on disk while writing.

    Frames go to a temporary file with a unique name beside `path` (`outputs.temp_beside`). `finish()` ends
    the encoder and reads the file back: ffmpeg does not report a trailer it failed to write (a full disk), so
    only a file that holds every frame is kept, as a `StagedFile` for the caller to publish (alone with
    `commit()`, or with its sidecar through `outputs.publish_pair`). `close()` finishes and renames it into
    place; `close(keep=False)` or `discard()` removes it. A failed write raises a one-line UserError and leaves
    the file that was at `path` untouched.
    """

    def __init__(self, path: str | os.PathLike, fps: float, quality: int = 8):
        import imageio.v2 as imageio

        self.path = check_writable(path)
        self.frames_written = 0
        try:
            self.tmp = temp_beside(self.path)
        except OSError as err:
            raise write_error(self.path, err) from None
        try:
            # quiet: a failure is reported once, by us, as one line (ffmpeg would print its own lines too)
            self._writer = imageio.get_writer(
                self.tmp,
                format="FFMPEG",
                fps=fps,
                codec="libx264",
                quality=quality,
                macro_block_size=1,
                pixelformat="yuv420p",
                ffmpeg_log_level="quiet",
            )
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def write(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
        try:
            for frame in frames:
                self._writer.append_data(frame)
        except OSError as err:  # the encoder stopped (its pipe broke): a full disk, a killed ffmpeg
            self.discard()
            raise write_error(self.path, f"the encoder stopped ({first_line(err)})") from None
        self.frames_written += len(frames)

    def finish(self) -> StagedFile | None:
        """End the file and check it; None when no frame was written (there is nothing to keep)."""
        try:
            self._writer.close()
        except Exception as err:  # imageio raises several types when ffmpeg fails
            self.discard()
            raise write_error(self.path, f"the encoder failed ({first_line(err)})") from None
        if not self.frames_written:
            self.discard()
            return None
        readable = count_frames(self.tmp)
        if readable != self.frames_written:
            self.discard()
            raise write_error(
                self.path,
                f"the encoder could not finish the file ({readable} of {self.frames_written} frames readable)",
            )
        try:
            return seal(self.tmp, self.path)
        except OSError as err:
            self.discard()
            raise write_error(self.path, err) from None

    def discard(self) -> None:
        try:
            self._writer.close()
        except Exception:  # the encoder may already be gone; the file is removed either way
            pass
        self.tmp.unlink(missing_ok=True)

    def close(self, keep: bool = True) -> None:
        if not keep:
            self.discard()
            return
        staged = self.finish()
        if staged is not None:
            staged.commit()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Ctrl-C keeps what was generated (a playable file); any other error leaves nothing behind.
        self.close(keep=exc_type is None or issubclass(exc_type, KeyboardInterrupt))


def _scan(path: str | os.PathLike, stats: bool):
    """ffmpeg reading the first video stream of `path` without decoding it (packets copied to nowhere)."""
    import subprocess

    from imageio_ffmpeg import get_ffmpeg_exe

    cmd = [get_ffmpeg_exe(), "-nostdin", "-v", "error", *(["-stats"] if stats else []), "-i", str(path)]
    cmd += ["-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    # its own session, so a Ctrl-C meant for us does not kill the check and throw away a good file
    return subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)


def count_frames(path: str | os.PathLike) -> int:
    """Video frames a player can read from `path` (0 for a file ffmpeg cannot open, e.g. one without its
    trailer). Counts packets without decoding them, so it costs little even for long videos."""
    import re

    proc = _scan(path, stats=True)
    counts = re.findall(r"frame=\s*(\d+)", proc.stderr)
    return int(counts[-1]) if proc.returncode == 0 and counts else 0


def read_error(path: str | os.PathLike) -> str | None:
    """The first error ffmpeg reports reading the video stream of `path` (e.g. "partial file": its data ends
    before the frames its header lists), or None."""
    import re

    lines = [line.strip() for line in _scan(path, stats=False).stderr.splitlines() if line.strip()]
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", lines[-1]) if lines else None  # without "[mov @ 0x55...] "


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a whole video as uint8 [T, H, W, 3] and its frame rate. A video whose frames end before its header's
    duration says, with ffmpeg reporting the damage (a file cut short), is refused rather than read in part."""
    import imageio.v2 as imageio

    path = Path(path)
    if not path.is_file():
        raise UserError(f"video {path} does not exist")
    try:
        reader = imageio.get_reader(path, format="FFMPEG")
        meta = reader.get_meta_data()
        fps = float(meta.get("fps", 0.0))
        frames = np.stack([np.asarray(f) for f in reader])
        reader.close()
    except Exception as err:  # imageio raises several types for broken files
        raise UserError(f"cannot read video {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    # The header's duration is frames / fps to 10 ms, less than half a frame below 50 fps: rounding recovers it.
    listed = round(float(meta.get("duration") or 0.0) * fps)
    if len(frames) < listed and (damage := read_error(path)) is not None:
        raise UserError(
            f"video {path} is truncated or damaged: {len(frames)} of the {listed} frames its header lists can be "
            f"read (ffmpeg: {damage})"
        )
    return frames, fps


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON whole or not at all (`outputs.write_json_atomic`)."""
    outputs.write_json_atomic(path, obj)


# -- a video and its JSON sidecar, as a pair ------------------------------------------------------------
def sidecar_path(out: Path) -> Path:
    return out.with_suffix(".json")


def check_output(out: str) -> Path:
    """The mp4 and the sidecar beside it can be created; checked before any work."""
    path = check_writable(out)
    if path.suffix.lower() != ".mp4":
        raise UserError(f"--out {out} must end in .mp4 (its sidecar is written beside it as {path.stem}.json)")
    check_name_fits(path, (sidecar_path(path),))  # named as --out, though the sidecar's name is the longer
    check_writable(sidecar_path(path))
    return path


def publish_video(writer: VideoWriter, out: Path, sidecar: dict) -> bool:
    """The finished mp4 and its sidecar into place as a pair; False when no frame was written (nothing kept)."""
    video_file = writer.finish()
    if video_file is None:
        return False
    publish_with(video_file, sidecar_path(out), lambda tmp: tmp.write_text(json_text(sidecar), encoding="utf-8"))
    return True


def save_video(path: str | Path, frames: np.ndarray, fps: int, record: dict) -> Path:
    """Frames and their sidecar into place as a pair (`Pipeline.save`), with the CLI's lock and guards."""
    out = check_output(str(path))
    with OutputLock(out.with_name(f".{out.name}.lock"), f"output {out}", remove=True), InterruptGuard():
        writer = VideoWriter(out, fps=fps)
        try:
            writer.write(frames)
            if not publish_video(writer, out, record):
                raise UserError(f"no frames to write to {out}")
        except BaseException:
            writer.discard()
            raise
    return out


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """A codec's decoded video [3, T, H, W] in [-1, 1] -> uint8 frames [T, H, W, 3] (`read_init_clip` goes the
    other way)."""
    import torch

    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


# -- the init clip a generation continues ---------------------------------------------------------------------
def read_init_clip(
    video: VideoConfig, init_video: str | Path | None = None, init_image: str | Path | None = None
) -> tuple[torch.Tensor | None, dict | None]:
    """The init video or image as [1, 3, T, H, W] in [-1, 1] at the preset's pixel size, and what was used."""
    import torch

    if init_video and init_image:
        raise UserError(f"use either {option('init_video')} or {option('init_image')}, not both")
    if not (init_video or init_image):
        return None, None
    if init_image:
        frames, kind, path = _read_image(init_image), "image", init_image
    else:
        frames, kind, path = read_video(init_video)[0], "video", init_video
        # The end of the clip is what the generation continues; keep 1 + k * stride_t whole frames of it.
        keep = min(len(frames), MAX_INIT_PIXEL_FRAMES)
        frames = frames[-(1 + (keep - 1) // video.vae_stride_t * video.vae_stride_t) :]
    height, width = video.latent_height * video.vae_stride_hw, video.latent_width * video.vae_stride_hw
    pixels = _fit(torch.from_numpy(frames).permute(0, 3, 1, 2), height, width) / 127.5 - 1.0
    info = {"kind": kind, "path": str(path), "source_size": list(frames.shape[1:3]), "pixel_frames": len(frames)}
    return pixels.permute(1, 0, 2, 3)[None], info


def _read_image(path: str):
    import imageio.v3 as iio

    try:
        image = np.asarray(iio.imread(path))
    except Exception as err:  # imageio raises many types for missing or broken files
        raise UserError(f"cannot read image {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)  # greyscale
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise UserError(f"image {path} has shape {list(image.shape)}; expected a single RGB(A) or grey image")
    return image[None, :, :, :3].astype(np.uint8)  # drop alpha


def _fit(frames: torch.Tensor, height: int, width: int, batch: int = 16) -> torch.Tensor:
    """uint8 [T, 3, h, w] -> float [T, 3, height, width]: scale to cover, then centre crop (no distortion).
    A few frames at a time, so a long HD clip never exists as one float tensor."""
    import torch
    import torch.nn.functional as F

    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, math.ceil(h * scale)), max(width, math.ceil(w * scale)))
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    out = []
    for part in frames.split(batch):
        resized = F.interpolate(part.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        out.append(resized[:, :, top : top + height, left : left + width].clamp(0, 255))
    return torch.cat(out)
