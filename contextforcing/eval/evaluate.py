"""Evaluate videos: load them, run the generic metrics with each feature extractor, and the world metrics."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contextforcing.data.world.style import FPS
from contextforcing.data.world.track import WorldTrack
from contextforcing.errors import UserError
from contextforcing.eval import generic
from contextforcing.eval.features import FeatureExtractor
from contextforcing.eval.world_metrics import world_metrics
from contextforcing.io.video import read_video

# which VBench dimension each extractor's consistency score is (VBench's own backbones)
VBENCH_DIMENSION = {"dino": "subject_consistency", "clip": "background_consistency"}


@dataclass
class VideoResult:
    name: str
    path: str
    frames: np.ndarray
    fps: float
    metrics: dict = field(default_factory=dict)
    consistency: dict = field(default_factory=dict)  # extractor -> ConsistencyScore, for aggregation


def load_frames(path: str | os.PathLike, fps: float | None = None) -> tuple[np.ndarray, float]:
    """An mp4 (or anything ffmpeg reads), or a .npy of uint8 [T, H, W, 3] (lossless, assumed 16 fps)."""
    path = Path(path)
    if path.suffix == ".npy":
        if not path.is_file():
            raise UserError(f"video {path} does not exist")
        try:
            frames = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read video {path}: {err}")
        native = float(FPS)
    else:
        frames, native = read_video(path)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise UserError(f"video {path} is not uint8 RGB frames [T, H, W, 3] (got {frames.dtype} {frames.shape})")
    rate = fps or native
    if not rate > 0:
        raise UserError(f"video {path} has no frame rate; pass --fps")
    return frames, float(rate)


def _is_panorama(track) -> bool:
    from contextforcing.data.world.panorama.simulate import PanoramaTrack

    return isinstance(track, PanoramaTrack)


def evaluate_video(
    name: str,
    path: str,
    frames: np.ndarray,
    fps: float,
    extractors: list[FeatureExtractor],
    track: WorldTrack | None = None,
    clip_seconds: float = generic.CLIP_SECONDS,
    progress: bool = False,
) -> VideoResult:
    """Generic metrics, plus the world metrics of `track` (a `WorldTrack`, or a `PanoramaTrack` whose
    metrics go under "panorama")."""
    result = VideoResult(name, str(path), frames, fps)
    if track is not None:  # check first: a mismatch should fail before minutes of feature extraction
        from contextforcing.eval.world_metrics import check_matches

        check_matches(frames, track, str(path))
    m = result.metrics
    m.update(
        {
            "path": str(path),
            "frames": len(frames),
            "fps": fps,
            "seconds": len(frames) / fps,
            "height": int(frames.shape[1]),
            "width": int(frames.shape[2]),
            "temporal_flickering": generic.temporal_flickering(frames),
            "dynamic_degree_proxy": generic.dynamic_degree_proxy(frames, fps) if len(frames) > 1 else None,
            "features": {},
            "vbench": {},
        }
    )
    for extractor in extractors:
        feats = extractor(frames, progress=progress)
        score = generic.vbench_consistency(feats)
        clips = generic.clip_to_clip(feats, fps, clip_seconds)
        curve_t, curve = generic.first_frame_curve(feats, fps)
        result.consistency[extractor.name] = score
        m["features"][extractor.name] = {
            "proxy": extractor.proxy,
            "vbench_consistency": score.score,
            "first_frame_similarity": generic.first_frame_similarity(feats, fps),
            "clip_to_clip": clips.score,
            "clip_seconds": clip_seconds,
            "first_frame_curve_t": curve_t.tolist(),
            "first_frame_curve": curve.tolist(),
        }
        if extractor.name in VBENCH_DIMENSION:
            m["vbench"][VBENCH_DIMENSION[extractor.name]] = score.score
    if track is not None and _is_panorama(track):
        from contextforcing.eval.panorama_metrics import panorama_metrics

        m["panorama"] = panorama_metrics(frames, track, str(path))
    elif track is not None:
        m["world"] = world_metrics(frames, track, str(path))
    return result


def aggregate(results: list[VideoResult]) -> dict:
    """Frame-weighted consistency over all videos, as VBench aggregates a dataset."""
    names = sorted({n for r in results for n in r.consistency})
    return {
        n: generic.ConsistencyScore.aggregate([r.consistency[n] for r in results if n in r.consistency]) for n in names
    }
