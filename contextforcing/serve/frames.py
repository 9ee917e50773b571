"""How the viewer sends pixels: every frame and thumbnail compressed as an image the browser decodes natively.

Raw RGB is 12 KiB per 64x64 frame (1.2 MiB at Wan's 832x480): 16 fps of it needs about 200 KB/s for the toy
model, so a 100 KB/s link played at a third of real time. JPEG at quality 90 without chroma subsampling (the
toy model's saturated colours blur under 4:2:0) measured 2.9 KB per toy frame, a mean error of 3 of 255 levels
(docs/serve.md); `png` sends the exact pixels (lossless, about 7 KB per toy frame), `webp` the smallest.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

from contextforcing.errors import UserError

# format -> (Pillow's name, the browser's MIME type, whether `quality` applies)
FORMATS = {
    "jpeg": ("JPEG", "image/jpeg", True),
    "webp": ("WEBP", "image/webp", True),
    "png": ("PNG", "image/png", False),
}


@dataclass(frozen=True)
class FrameCodec:
    """The image format frames travel in (`contextforcing serve --frames`, `--quality`)."""

    format: str = "jpeg"
    quality: int = 90

    def check(self) -> "FrameCodec":
        if self.format not in FORMATS:
            raise UserError(f"--frames must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"--quality must be in 1..100, got {self.quality}")
        return self

    @property
    def mime(self) -> str:
        return FORMATS[self.format][1]

    def encode(self, frame: np.ndarray) -> bytes:
        """uint8 [H, W, 3] -> the image file's bytes."""
        from PIL import Image

        name, _, lossy = FORMATS[self.format]
        options = {"quality": self.quality} if lossy else {}
        if self.format == "jpeg":
            options["subsampling"] = 0  # 4:4:4: full-resolution colour
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format=name, **options)
        return buffer.getvalue()

    def encode_frames(self, frames: np.ndarray) -> tuple[list[int], bytes]:
        """Frames [n, H, W, 3] -> each image's byte size and the images back to back."""
        images = [self.encode(frame) for frame in frames]
        return [len(image) for image in images], b"".join(images)

    def data_url(self, frame: np.ndarray) -> str:
        """One frame as a data URL (the memory panel's thumbnails)."""
        return f"data:{self.mime};base64," + base64.b64encode(self.encode(frame)).decode("ascii")


def decode_frames(sizes: list[int], payload: bytes) -> np.ndarray:
    """The inverse of `FrameCodec.encode_frames` (tests, the measurement script): uint8 [n, H, W, 3]."""
    from PIL import Image

    frames, offset = [], 0
    for size in sizes:
        frames.append(np.asarray(Image.open(io.BytesIO(payload[offset : offset + size])).convert("RGB")))
        offset += size
    return np.stack(frames)
