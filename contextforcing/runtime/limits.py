"""What one stream may ask for, checked in one place for every door: the CLI (`generate`, `bench`, and the viewer
that `serve` runs), the Python API (`Pipeline.stream`, `Pipeline.__call__`, and a `Memory` given to them) and the
viewer's Start message all call `check_stream` before anything is allocated.

It refuses, with one line naming the option and its limit:
- memory options out of range (`memory.spec.tier_params`: a negative size, a window smaller than a chunk, ...);
- sampling options no sampler can run (`check_sampling`: an empty step list, steps outside the schedule, a
  non-finite guidance scale or shift, ...);
- a context memory whose K/V store and its read buffers (`perf.kv_bytes`) exceed what the device has free: the
  message names the size option (for `full`, the video length) and the largest value of it that would fit.
Weights and activations come on top of the K/V store, so passing is necessary, not sufficient.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Callable

import torch

from contextforcing.config import ModelConfig, SamplingConfig, VideoConfig
from contextforcing.errors import UserError, format_bytes, shorten
from contextforcing.memory.spec import MemorySpec, tier_params
from contextforcing.runtime.perf import kv_bytes

# The options that size each policy's store, and the least value each may take (`tier_params` says why); `None`
# stands for the current chunk's frame count (a window must hold the current chunk).
SIZE_OPTIONS: dict[str, dict[str, int | None]] = {
    "rolling": {"window": None},
    "sink": {"sink": 0, "window": None},
    "relative": {"sink": 0, "window": None},
    "ema_sink": {"sink": 1, "window": None},
    "slow_fast": {"sink": 1, "slow": 0, "fast": None},
}


class MemoryTooLarge(UserError):
    """A context memory that would not fit in the device's free memory (refused before allocating it)."""


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation on `device` can still get: free CUDA memory, or the host's MemAvailable
    (Linux /proc/meminfo; else the free physical pages). None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_stream(
    spec: MemorySpec,
    sampling: SamplingConfig,
    model: ModelConfig,
    video: VideoConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    max_frames: int | None,
) -> int:
    """The one check of a stream's memory and sampling options (see the module docstring); returns the bytes
    its context memory will hold. `max_frames`: the latent frames the stream may reach (None: until closed)."""
    if tier_params(spec, video.chunk_frames).capacity is None and max_frames is None:
        raise UserError(f"memory {spec.name!r} grows with the video: give a length (seconds)")
    check_sampling(sampling)
    return check_memory_fits(spec, model, video, dtype, device, max_frames)


def check_sampling(sampling: SamplingConfig) -> SamplingConfig:
    """Sampling options every sampler can run: a schedule of at least one timestep, steps on it, finite scales."""
    total, steps, euler = sampling.num_train_timesteps, sampling.denoising_steps, sampling.euler_steps
    if not (_whole(total) and total >= 1):
        raise UserError(f"sampling num_train_timesteps must be a whole number >= 1, got {total!r}")
    problems = (
        (_finite(sampling.shift) and sampling.shift > 0, f"shift must be positive and finite, got {sampling.shift!r}"),
        (_finite(sampling.guidance_scale), f"guidance_scale must be finite, got {sampling.guidance_scale!r}"),
        (
            _on_schedule(sampling.commit_timestep, total),
            f"commit_timestep must be in [0, {total}] (num_train_timesteps), got {sampling.commit_timestep!r}",
        ),
        (
            _whole(euler) and 0 <= euler <= total,
            f"euler_steps must be in [0, {total}] (num_train_timesteps), got {euler!r}",
        ),
        (
            euler or len(steps) > 0,
            "denoising_steps must list at least one timestep, e.g. [1000, 750, 500, 250] (or set euler_steps)",
        ),
        (
            euler or all(_on_schedule(t, total) for t in steps),
            f"denoising_steps must be timesteps in [0, {total}] (num_train_timesteps), got {shorten(repr(list(steps)))}",
        ),
    )
    for ok, message in problems:
        if not ok:
            raise UserError(f"sampling {message}")
    return sampling


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _on_schedule(timestep, total: int) -> bool:
    return _finite(timestep) and 0 <= timestep <= total


def resident_bytes(spec: MemorySpec, model: ModelConfig, video: VideoConfig, dtype: torch.dtype, frames: int) -> int:
    """The K/V store and its read buffers (the slots view) a stream of `spec` holds, for `frames` latent frames."""
    return kv_bytes(spec, model, video, dtype, max_frames=frames)["resident_slots"]


def check_memory_fits(
    spec: MemorySpec,
    model: ModelConfig,
    video: VideoConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_frames: int | None,
) -> int:
    """The bytes of a stream's context memory, refused with one line naming the option that sizes it and the
    largest value of it that fits, when they exceed what `device` has free."""
    need, have = resident_bytes(spec, model, video, dtype, max_frames), available_bytes(device)
    if have is None or need <= have:
        return need
    where = f"{format_bytes(need)} of K/V, more than the {format_bytes(have)} available on {device}"
    if tier_params(spec, video.chunk_frames).capacity is None:
        fits = _largest(lambda n: resident_bytes(spec, model, video, dtype, n * video.chunk_frames) <= have, 0)
        longest = fits * video.chunk_frames / video.latent_fps
        raise MemoryTooLarge(
            f"memory {spec.name!r} keeps every latent frame: {max_frames:,} frames need {where}; "
            f"at most {longest:g} seconds fit here (or choose a bounded memory policy)"
        )
    key, least = _biggest_size_option(spec, video.chunk_frames)
    value = getattr(spec.options, key)

    def fits_with(v: int) -> bool:
        smaller = MemorySpec(spec.name, dataclasses.replace(spec.options, **{key: v}))
        return resident_bytes(smaller, model, video, dtype, max_frames) <= have

    largest = _largest(fits_with, least, value)
    hint = f"{key} can be at most {largest:,} here" if largest is not None else "lower the memory sizes"
    raise MemoryTooLarge(f"memory option {key}={value:,} ({spec.name}) needs {where}; {hint}")


def _biggest_size_option(spec: MemorySpec, chunk_frames: int) -> tuple[str, int]:
    """The size option of `spec` with the largest value, and the least value it may take."""
    options = SIZE_OPTIONS[spec.name]
    key = max(options, key=lambda k: getattr(spec.options, k))
    least = options[key]
    return key, chunk_frames if least is None else least


def _largest(fits: Callable[[int], bool], low: int, high: int | None = None) -> int | None:
    """The largest n >= low with fits(n) (fits is monotone: true, then false), or None when fits(low) is false.
    `high`: a value known not to fit (None: found by doubling)."""
    if not fits(low):
        return None
    if high is None:
        high = max(1, low * 2)
        while fits(high):
            low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low
