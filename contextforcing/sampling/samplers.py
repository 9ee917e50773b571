"""Samplers as stateless functions (k-diffusion style).

`denoise(x, t)` is any callable that returns the flow prediction for latents x at timestep t (a float);
guidance, memories and text live inside it. Each sampler returns the final x0 estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from contextforcing.sampling.scheduler import FlowMatchSchedule, add_noise, shift_sigma, x0_from_flow

Denoise = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class KnownFrames:
    """Frames whose clean latents are given (replacement conditioning, as in video inpainting).

    `latents` [B, C, F, H, W] like the chunk (values where `mask` is False are ignored), `mask` one bool per
    frame, kept on the host so that no decision about it reads the device.
    Samplers keep the known frames on their noising path: at every step their state is the given
    latents noised to that step's level, and the returned x0 holds them exactly. The other frames are
    denoised as usual, attending to the known ones.
    """

    latents: torch.Tensor
    mask: tuple[bool, ...]

    @property
    def all_known(self) -> bool:
        return all(self.mask)

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.mask, device=x.device).view(1, 1, -1, 1, 1)

    def replace(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 with the known frames put back."""
        return torch.where(self._frames(x0), self.latents.to(x0.dtype), x0)

    def noised(self, x: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """x with the known frames replaced by the given latents noised to `sigma` with `noise`."""
        return torch.where(self._frames(x), add_noise(self.latents.to(x.dtype), noise, sigma), x)


def sample_few_step(
    denoise: Denoise,
    noise: torch.Tensor,
    steps: Sequence[float],
    schedule: FlowMatchSchedule,
    generator: torch.Generator | None = None,
    exit_step: int | None = None,
    known: KnownFrames | None = None,
) -> torch.Tensor:
    """Consistency-style few-step sampling (CausVid / Self-Forcing): predict x0 at each step, then
    re-noise it with fresh noise to the next step. `exit_step` stops early, returning that step's x0
    (the random exit of Self-Forcing training); gradients are only kept for the exit step.
    """
    last = len(steps) - 1 if exit_step is None else exit_step
    x = noise if known is None else known.noised(noise, noise, schedule.sigma(steps[0]))
    for i, t in enumerate(steps[: last + 1]):
        with torch.set_grad_enabled(torch.is_grad_enabled() and i == last):
            x0 = x0_from_flow(x, denoise(x, t), schedule.sigma(t))
        if known is not None:
            x0 = known.replace(x0)
        if i < last:
            fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = add_noise(x0.detach(), fresh, schedule.sigma(steps[i + 1]))
    return x0


def sample_euler(
    denoise: Denoise,
    noise: torch.Tensor,
    steps: Sequence[float],
    schedule: FlowMatchSchedule,
    known: KnownFrames | None = None,
) -> torch.Tensor:
    """Multi-step Euler integration of the flow ODE (for non-distilled teachers):
    x <- x + (sigma_next - sigma) * flow, ending at sigma = 0. Here sigma = t / T exactly.
    Known frames follow their own noising path with the initial noise (the ODE's straight line)."""
    x = noise.double()
    sigmas = [t / schedule.num_train_timesteps for t in steps] + [0.0]
    for i, t in enumerate(steps):
        if known is not None:
            x = known.noised(x, noise.double(), sigmas[i])
        flow = denoise(x.to(noise.dtype), t).double()
        x = x + (sigmas[i + 1] - sigmas[i]) * flow
    x = x.to(noise.dtype)
    return x if known is None else known.replace(x)


def euler_steps(num_steps: int, schedule: FlowMatchSchedule) -> list[float]:
    """num_steps timesteps from T down: uniform in sigma before the shift (Wan's sampling grid)."""
    uniform = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    return (shift_sigma(uniform, schedule.shift) * schedule.num_train_timesteps).tolist()


def guided(cond: Denoise, uncond: Denoise, scale: float) -> Denoise:
    """Classifier-free guidance in the standard form: uncond + scale * (cond - uncond)."""

    def denoise(x, t):
        c = cond(x, t)
        if scale == 1.0:
            return c
        u = uncond(x, t)
        return u + scale * (c - u)

    return denoise
