"""Hand-computed cases for the VBench formulas and the other generic long-video metrics."""

import math

import numpy as np
import pytest

from contextforcing.eval.generic import (
    ConsistencyScore,
    clip_to_clip,
    dynamic_degree_proxy,
    first_frame_similarity,
    temporal_flickering,
    vbench_consistency,
)

SQ = 1 / math.sqrt(2)


def unit(*v):
    v = np.array(v, np.float64)
    return v / np.linalg.norm(v)


def test_identical_frames_score_one():
    feats = np.repeat(unit(3, 4, 0)[None], 10, axis=0)
    s = vbench_consistency(feats)
    assert s.score == pytest.approx(1.0) and s.pairs == 9 and s.frame_sum == pytest.approx(9.0)


def test_known_feature_vectors():
    # f1=e1, f2=e2, f3=(e1+e2)/sqrt2:
    #   t=2: 1/2 [max(0,cos(f2,f1)) + max(0,cos(f2,f1))] = 0
    #   t=3: 1/2 [cos(f3,f1) + cos(f3,f2)] = 1/sqrt2
    feats = np.stack([unit(1, 0), unit(0, 1), unit(1, 1)])
    s = vbench_consistency(feats)
    assert s.frame_sum == pytest.approx(SQ) and s.score == pytest.approx(SQ / 2)


def test_negative_similarity_is_clamped():
    # f2 = -f1: both cosines are -1 and clamp to 0; f3 = f1: cos to first 1, to previous -1 -> 0
    feats = np.stack([unit(1, 0), unit(-1, 0), unit(1, 0)])
    assert vbench_consistency(feats).score == pytest.approx((0 + 0.5) / 2)


def test_frame_weighted_aggregation():
    a = vbench_consistency(np.stack([unit(1, 0), unit(1, 0)]))  # 1 pair, sum 1
    b = vbench_consistency(np.stack([unit(1, 0), unit(0, 1), unit(1, 1)]))  # 2 pairs, sum 1/sqrt2
    assert ConsistencyScore.aggregate([a, b]) == pytest.approx((1 + SQ) / 3)
    assert ConsistencyScore.aggregate([a, b]) != pytest.approx((a.score + b.score) / 2)
    assert math.isnan(vbench_consistency(np.ones((1, 2))).score)


def test_windowed_first_frame_similarity():
    fps = 16
    feats = np.repeat(unit(1, 0)[None], 13 * fps, axis=0)
    # window for t=10 s is frames 152..168 (|i/16 - 10| <= 0.5): 8 orthogonal frames and 9 identical ones
    feats[152:160] = unit(0, 1)
    feats[151] = feats[169] = unit(-1, 0)  # just outside: must not count
    out = first_frame_similarity(feats, fps)
    assert out == {"10": pytest.approx(9 / 17)}  # a 13 s video reaches only the 10 s window


def test_clip_to_clip_uses_first_frames_of_clips():
    fps, clip = 4, 2.0  # clips of 8 frames: first frames 0, 8, 16
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(20, 3))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    feats[0], feats[8], feats[16] = unit(1, 0, 0), unit(0, 1, 0), unit(1, 1, 0)
    assert clip_to_clip(feats, fps, clip).score == pytest.approx(SQ / 2)


def test_temporal_flickering_exact():
    frames = np.zeros((6, 8, 8, 3), np.uint8)
    frames[1::2] = 10  # every neighbouring pair differs by 10 everywhere
    assert temporal_flickering(frames) == pytest.approx((255 - 10) / 255)
    assert temporal_flickering(np.full((4, 8, 8, 3), 7, np.uint8)) == 1.0


def test_dynamic_degree_proxy_separates_motion_from_stillness():
    frames = np.zeros((33, 64, 64, 3), np.uint8)
    still = frames.copy()
    still[:, 20:40, 20:40] = 200
    moving = frames.copy()
    for t in range(33):  # a textured block moving 1 px per frame, 2 px per sampled pair
        x = 5 + t
        moving[t, 20:40, x : x + 20] = 120
        moving[t, 20:40:4, x : x + 20] = 250
    fast, calm = dynamic_degree_proxy(moving, 16), dynamic_degree_proxy(still, 16)
    assert fast["dynamic"] and not calm["dynamic"]
    assert calm["mean_top5_flow_px"] < 0.1 < 1.5 < fast["mean_top5_flow_px"]
    assert fast["threshold_px"] == pytest.approx(6 * 64 / 256) and fast["pairs"] == 16
    assert "RAFT" in fast["proxy"]
