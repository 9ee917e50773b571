"""Whether a free-running video of the panorama world moves as its prompt script says: the camera, the balls,
the lights (`panorama_metrics.panorama_scores` gathers them with the revisits).

- camera: the shift between the last pixel frames of consecutive latent frames is found by matching them
  (the best of -16..16 px by mean absolute difference over the overlap); a latent frame obeys the script
  when it moved within half a latent column (4 px) of the script's step. Reported separately where the script
  pans and where it holds, so a still picture cannot pass by holding.
- movers: the balls are found by colour; per 1 s window in which the video shows a ball, its velocity in
  room coordinates (screen motion plus the estimated camera motion, the mean over the window of its
  displacements across one latent frame) must be within 8 px/s of the script's, horizontally and in
  vertical speed (net, unless it is near floor or ceiling, where it may bounce).
- lighting: a latent frame is dark when its mean grey level is under 24; `lighting` is the mean of the
  fraction of lights-off latent frames shown dark and of lights-on ones shown lit.

A number whose event did not happen is None (no pan in the script, no ball shown, no lights-off).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from contextforcing.data.world.panorama.geometry import (
    BALL_NAMES,
    BALL_RADIUS,
    BALL_SPEEDS,
    BALL_Y_RANGE,
    BLACK_BALL_SPEED,
    CHUNK_LATENTS,
    FPS,
    FRAME_SIZE,
    LATENT_STRIDE,
    PAN_PX_PER_LATENT,
    VIEW,
    frame_latent,
    latent_end_frame,
)
from contextforcing.data.world.panorama.script import HEADING_SIGN
from contextforcing.data.world.panorama.simulate import PanoramaTrack

DARK_LEVEL = 24.0  # mean grey level (0-255) under which a frame is dark
MAX_SHIFT = 16  # px searched between consecutive frames (the script moves 2 px per frame)
CAMERA_TOLERANCE = PAN_PX_PER_LATENT / 2  # px per latent frame, and on a revisit's return
BALL_MIN_PIXELS = int(0.4 * np.pi * BALL_RADIUS**2)  # a ball is found when this much of its disc shows (a codec
# blurs its edge into the wall: a whole decoded ball keeps 45-80% of its pixels, a wall never shows 12)
MOVER_TOLERANCE = BALL_SPEEDS["slow"] / 2  # px/s: tells still, slow and fast apart
MOVER_WINDOW = FPS  # frames per mover window (1 s)
BOUNCE_MARGIN = 3.0  # px: a ball this close to floor or ceiling may have bounced within its window
MOVER_MIN_PAIRS = FPS // 2  # displacements (over one latent frame each) with the ball found, per window


def dark_frames(frames: np.ndarray) -> np.ndarray:
    """[T] bool: the frame is (nearly) black."""
    return frames.reshape(len(frames), -1).mean(1) < DARK_LEVEL


# ---------------------------------------------------------------------------------------------- camera
def _best_shifts(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """For frame pairs [N, H, W, 3]: the shift s (px, + = the view moved right, |s| <= MAX_SHIFT) that best maps
    `before` onto `after` (after[:, x] == before[:, x + s]), by mean absolute difference over the overlap.

    Rows are averaged in blocks of 4 first (the wall is vertical panels; horizontal detail is kept whole),
    and ties go to the smaller shift, so a flat or frozen picture reads as no motion."""

    def rows(x):
        return x.reshape(len(x), FRAME_SIZE // 4, 4, VIEW, 3).astype(np.float32).mean(2)

    a, b = rows(before), rows(after)
    shifts = np.arange(-MAX_SHIFT, MAX_SHIFT + 1)
    costs = []
    for s in shifts:
        d = np.abs(b[:, :, : VIEW - s] - a[:, :, s:]) if s >= 0 else np.abs(b[:, :, -s:] - a[:, :, : VIEW + s])
        costs.append(d.mean((1, 2, 3)) + 1e-3 * abs(int(s)))
    return shifts[np.argmin(np.stack(costs, 1), 1)].astype(np.float64)


def frame_shifts(frames: np.ndarray, dark: np.ndarray, lag: int = 1) -> np.ndarray:
    """[T]: the camera shift from frame f - lag to frame f; NaN where either is dark, and for f < lag."""
    out = np.full(len(frames), np.nan)
    if len(frames) > lag:
        out[lag:] = _best_shifts(frames[:-lag], frames[lag:])
        out[lag:][dark[:-lag] | dark[lag:]] = np.nan
    return out


def latent_steps(frames: np.ndarray, dark: np.ndarray, n_latents: int) -> np.ndarray:
    """Camera step of each latent frame: the shift between the last pixel frames of it and of the one before
    (both on the latent grid; matching them directly, a codec's small errors within a latent frame do not add
    up). NaN where either is dark; 0 for latent 0."""
    ends = latent_end_frame(np.arange(n_latents))
    steps = np.zeros(n_latents)
    if n_latents > 1:
        steps[1:] = _best_shifts(frames[ends[:-1]], frames[ends[1:]])
        steps[1:][dark[ends[:-1]] | dark[ends[1:]]] = np.nan
    return steps


@dataclass
class CameraScore:
    pans: float | None  # fraction of the script's panning latent frames the video pans within tolerance
    holds: float | None  # ... of its holding latent frames the video holds
    error_px: float | None  # mean |estimated - script| step over latent frames where both are known
    pan_latents: int
    hold_latents: int
    estimated_x: list[float] = field(default_factory=list)  # per latent, for plots
    script_x: list[int] = field(default_factory=list)


def camera_score(steps: np.ndarray, track: PanoramaTrack) -> tuple[CameraScore, np.ndarray]:
    """The camera metric, and the estimated camera x per latent (script steps where the video is dark)."""
    script_x = track.latent_camera.astype(np.float64)
    script_steps = np.diff(script_x, prepend=script_x[0])
    lit = track.latent_lit
    judged = np.zeros(len(steps), bool)
    judged[1:] = lit[1:] & lit[:-1]  # the script shows the room through the whole latent frame
    ok = np.abs(steps - script_steps) <= CAMERA_TOLERANCE  # False where the video is dark (NaN)
    pans, holds = judged & (script_steps != 0), judged & (script_steps == 0)
    known = judged & ~np.isnan(steps)
    estimated = np.cumsum(np.where(np.isnan(steps), script_steps, steps))
    score = CameraScore(
        pans=float(ok[pans].mean()) if pans.any() else None,
        holds=float(ok[holds].mean()) if holds.any() else None,
        error_px=float(np.abs(steps - script_steps)[known].mean()) if known.any() else None,
        pan_latents=int(pans.sum()),
        hold_latents=int(holds.sum()),
        estimated_x=estimated.tolist(),
        script_x=script_x.astype(int).tolist(),
    )
    return score, estimated


# ---------------------------------------------------------------------------------------------- movers
def ball_centres(classes: np.ndarray, dark: np.ndarray, ball_class: int) -> np.ndarray:
    """[T, 2] centre (x, y) of the ball of one colour, NaN where it is not shown whole enough (or dark)."""
    mask = classes == ball_class
    count = mask.sum((1, 2))
    ys, xs = np.arange(FRAME_SIZE)[None, :, None] + 0.5, np.arange(VIEW)[None, None, :] + 0.5
    with np.errstate(all="ignore"):
        centres = np.stack([(mask * xs).sum((1, 2)) / count, (mask * ys).sum((1, 2)) / count], 1)
    touches_side = mask[:, :, 0].any(1) | mask[:, :, -1].any(1)  # cut by the view's edge: centre biased
    centres[(count < BALL_MIN_PIXELS) | touches_side | dark] = np.nan
    return centres


def script_ball_velocity(track: PanoramaTrack, ball: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the ball's horizontal velocity and vertical speed in the script (px/s)."""
    prompts = track.prompts()
    chunk = frame_latent(track.n_frames) // CHUNK_LATENTS
    if ball == 1:
        return np.zeros(track.n_frames), np.full(track.n_frames, BLACK_BALL_SPEED)
    vx = np.array([HEADING_SIGN[prompts[c].white.heading] * BALL_SPEEDS[prompts[c].white.speed] for c in chunk])
    vy = np.array([BALL_SPEEDS[prompts[c].white.speed] for c in chunk])
    return vx, vy


@dataclass
class MoverScore:
    obeyed: float | None  # fraction of windows whose ball moved as the script says
    windows: int
    per_ball: dict[str, dict] = field(default_factory=dict)


def window_velocity(dx: np.ndarray, dy: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """A ball's room velocity (px per frame) and vertical speed over one window, from its displacements across
    one latent frame (`dx`, signed `dy`) and its heights `y` there. Away from floor and ceiling it cannot
    turn, so its vertical speed is the *net* rate (a ball that jitters or a looping video goes nowhere);
    where it may have bounced, the mean absolute rate."""
    lo, hi = BALL_Y_RANGE
    near_bound = (y.min() <= lo + BOUNCE_MARGIN) or (y.max() >= hi - BOUNCE_MARGIN)
    return float(dx.mean()), float(np.abs(dy).mean() if near_bound else abs(dy.mean()))


def mover_score(classes, dark, frames, track: PanoramaTrack, ball_classes: np.ndarray) -> MoverScore:
    """Per 1 s window where a ball is found often enough: its room velocity from displacements across one
    latent frame (LATENT_STRIDE pixel frames), against the script's."""
    obeyed = windows = 0
    per_ball = {}
    lag = LATENT_STRIDE
    camera = frame_shifts(frames, dark, lag)[lag:]  # camera motion from frame f to f + lag
    for ball, name in enumerate(BALL_NAMES):
        if not track.spec.script.balls[ball]:
            continue
        centres = ball_centres(classes, dark, ball_classes[ball])
        dx = (centres[lag:, 0] - centres[:-lag, 0] + camera) / lag  # room motion = screen motion + camera motion
        dy = (centres[lag:, 1] - centres[:-lag, 1]) / lag
        vx_true, vy_true = script_ball_velocity(track, ball)
        ball_windows = ball_ok = 0
        speeds = []
        for start in range(0, len(dx), MOVER_WINDOW):
            pairs = slice(start, min(len(dx), start + MOVER_WINDOW))
            valid = ~np.isnan(dx[pairs]) & ~np.isnan(dy[pairs])
            if valid.sum() < MOVER_MIN_PAIRS:
                continue
            heights = np.concatenate([centres[:-lag, 1][pairs][valid], centres[lag:, 1][pairs][valid]])
            vx, vy = (v * FPS for v in window_velocity(dx[pairs][valid], dy[pairs][valid], heights))
            want_x = float(vx_true[lag:][pairs][valid].mean())
            want_y = float(vy_true[lag:][pairs][valid].mean())
            good = abs(vx - want_x) <= MOVER_TOLERANCE and abs(vy - want_y) <= MOVER_TOLERANCE
            ball_windows += 1
            ball_ok += good
            speeds.append(
                {
                    "t": (start + MOVER_WINDOW / 2) / FPS,
                    "vx": vx,
                    "vy": vy,
                    "want_vx": want_x,
                    "want_vy": want_y,
                    "obeyed": bool(good),
                }
            )
        per_ball[name] = {
            "windows": ball_windows,
            "obeyed": ball_ok / ball_windows if ball_windows else None,
            "shown_fraction": float(np.mean(~np.isnan(centres[:, 0]))),
            "curve": speeds,
        }
        windows += ball_windows
        obeyed += ball_ok
    return MoverScore(obeyed / windows if windows else None, windows, per_ball)


# -------------------------------------------------------------------------------------------- lighting
@dataclass
class LightingScore:
    lighting: float | None  # mean of the two below; None without a lights-off in the script
    dark_when_off: float | None
    lit_when_on: float | None


def lighting_score(dark_latent: np.ndarray, track: PanoramaTrack) -> LightingScore:
    lit = track.latent_lit
    off = float(dark_latent[~lit].mean()) if (~lit).any() else None
    on = float((~dark_latent[lit]).mean()) if lit.any() else None
    return LightingScore(None if off is None or on is None else (off + on) / 2, off, on)
