"""Long-video consistency metrics the field reports, computable on any video.

All feature-based metrics take L2-normalised per-frame features [T, D] (see `features.py`).

- VBench subject/background consistency (`vbench_consistency`):
      S = 1/(T-1) * sum_{t=2..T} 1/2 * [max(0, cos(f_t, f_1)) + max(0, cos(f_t, f_{t-1}))]
  aggregated over videos frame-weighted (sum of per-frame terms / number of frame pairs), as VBench does.
- Context Forcing's windowed first-frame similarity (Table 1): at t = 10, 20, ..., 60 s, the mean of
  cos(f_0, f_i) over frames i with |i/fps - t| <= 0.5 s (not clamped).
- Clip-to-clip consistency (VBench-Long's slow branch): the VBench formula over the first frames of
  consecutive fixed-length clips.
- Temporal flickering (VBench, exact): (255 - mean_t MAE(frame_t, frame_t+1)) / 255.
- Dynamic degree (proxy): VBench's rule with OpenCV Farneback flow instead of RAFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contextforcing.errors import UserError
from contextforcing.runtime.extras import require

FIRST_FRAME_TIMES = (10, 20, 30, 40, 50, 60)  # seconds, Context Forcing Table 1
FIRST_FRAME_HALF_WINDOW = 0.5  # seconds either side of each time
CLIP_SECONDS = 2.0  # clip length for clip-to-clip consistency (our default; VBench-Long's is not pinned here)
# VBench dynamic degree: flow at ~8 fps, top 5% magnitudes, threshold 6 px at 256 px, 4 of 16 pairs
DYNAMIC_TARGET_FPS = 8.0
DYNAMIC_TOP_FRACTION = 0.05
DYNAMIC_THRESHOLD_PX_AT_256 = 6.0
DYNAMIC_PAIRS_PER_16 = 4.0


@dataclass(frozen=True)
class ConsistencyScore:
    """A VBench consistency score with what it takes to aggregate it frame-weighted."""

    score: float  # per-video S (nan for fewer than 2 frames)
    frame_sum: float  # sum over t=2..T of the per-frame term
    pairs: int  # T - 1

    @staticmethod
    def aggregate(scores: list["ConsistencyScore"]) -> float:
        pairs = sum(s.pairs for s in scores)
        return sum(s.frame_sum for s in scores) / pairs if pairs else float("nan")


def vbench_consistency(features: np.ndarray) -> ConsistencyScore:
    if len(features) < 2:
        return ConsistencyScore(float("nan"), 0.0, 0)
    to_first = np.maximum(0.0, features[1:] @ features[0])
    to_previous = np.maximum(0.0, np.sum(features[1:] * features[:-1], axis=1))
    terms = 0.5 * (to_first + to_previous)
    return ConsistencyScore(float(terms.mean()), float(terms.sum()), len(terms))


def first_frame_similarity(
    features: np.ndarray, fps: float, times=FIRST_FRAME_TIMES, half_window: float = FIRST_FRAME_HALF_WINDOW
) -> dict[str, float]:
    """{"10": mean cos to frame 0 over [9.5, 10.5] s, ...}, for the times the video reaches."""
    seconds = np.arange(len(features)) / fps
    cos = features @ features[0]
    out = {}
    for t in times:
        window = np.abs(seconds - t) <= half_window + 1e-9
        if seconds[-1] >= t - half_window and window.any():
            out[str(t)] = float(cos[window].mean())
    return out


def first_frame_curve(features: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-second mean cosine to the first frame: (centre times, values), for plots."""
    cos = features @ features[0]
    second = (np.arange(len(features)) / fps).astype(int)
    bins = np.unique(second)
    return bins + 0.5, np.array([cos[second == b].mean() for b in bins])


def clip_to_clip(features: np.ndarray, fps: float, clip_seconds: float = CLIP_SECONDS) -> ConsistencyScore:
    step = max(1, int(round(clip_seconds * fps)))
    return vbench_consistency(features[::step])


def temporal_flickering(frames: np.ndarray) -> float:
    if len(frames) < 2:
        return float("nan")
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() for a, b in zip(frames[:-1], frames[1:])]
    return float((255.0 - np.mean(diffs)) / 255.0)


def _flow_magnitudes(prev_gray: np.ndarray, next_gray: np.ndarray) -> np.ndarray:
    cv2 = require("cv2", "eval", "the dynamic-degree flow proxy")

    flow = cv2.calcOpticalFlowFarneback(
        prev_gray, next_gray, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
    )
    return np.linalg.norm(flow, axis=-1)


def dynamic_degree_proxy(frames: np.ndarray, fps: float) -> dict:
    """VBench's dynamic-degree rule on Farneback flow (a proxy: VBench uses RAFT)."""
    cv2 = require("cv2", "eval", "the dynamic-degree flow proxy")

    interval = max(1, int(round(fps / DYNAMIC_TARGET_FPS)))
    sampled = frames[::interval]
    if len(sampled) < 2:
        raise UserError("video too short for dynamic degree (needs at least two frames 1/8 s apart)")
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in sampled]
    scores = []
    for a, b in zip(gray[:-1], gray[1:]):
        mags = np.sort(_flow_magnitudes(a, b).ravel())
        top = mags[-max(1, int(len(mags) * DYNAMIC_TOP_FRACTION)) :]
        scores.append(float(top.mean()))
    threshold = DYNAMIC_THRESHOLD_PX_AT_256 * min(frames.shape[1:3]) / 256.0
    needed = round(DYNAMIC_PAIRS_PER_16 * len(sampled) / 16.0)
    above = int(np.sum(np.array(scores) > threshold))
    return {
        "proxy": "OpenCV Farneback flow (VBench uses RAFT)",
        "dynamic": bool(above >= needed),
        "pairs_above_threshold": above,
        "pairs_needed": int(needed),
        "pairs": len(scores),
        "threshold_px": threshold,
        "mean_top5_flow_px": float(np.mean(scores)),
    }
