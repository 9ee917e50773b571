"""Flow matching as Wan trains it, and the samplers that run it, k-diffusion style.

The schedule: x_t = (1 - sigma) x0 + sigma * eps, the network predicts eps - x0. Everything in it is a small pure
function or an immutable table; conversions run in float64. The timestep shift lives in `shift_sigma` and nowhere
else.

The samplers are stateless functions: `denoise(x, t)` is any callable that returns the flow prediction for latents
x at timestep t (a float); guidance, memories and text live inside it. Each sampler returns the final x0 estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import torch


# -- the flow-matching schedule -------------------------------------------------------------------------------
def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan / SD3 timestep shift: sigma' = s * sigma / (1 + (s - 1) * sigma)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclass(frozen=True)
class FlowMatchSchedule:
    """The training table of (timestep, sigma): num_train_timesteps shifted entries from sigma = 1 down."""

    shift: float = 5.0
    num_train_timesteps: int = 1000

    @cached_property
    def sigmas(self) -> torch.Tensor:
        n = self.num_train_timesteps
        return shift_sigma(torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)[:-1], self.shift)

    @cached_property
    def timesteps(self) -> torch.Tensor:
        return self.sigmas * self.num_train_timesteps

    @cached_property
    def training_weights(self) -> torch.Tensor:
        """The bell-shaped loss weight of each table entry that Wan's flow-matching scheduler keeps
        (`training_weight` of Self-Forcing's FlowMatchScheduler): exp(-2 ((t - T/2) / T)^2), moved to 0 at its
        minimum and scaled to mean 1 over the table. The released Context Forcing Stage 2 weights its critic
        loss with it (docs/training.md)."""
        n = self.num_train_timesteps
        bell = torch.exp(-2 * ((self.timesteps - n / 2) / n) ** 2)
        bell = bell - bell.min()
        return bell * (n / bell.sum())

    def _nearest(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        return t, (t.reshape(-1, 1).cpu() - self.timesteps[None]).abs().argmin(dim=1)

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma of the table entry nearest to each timestep t (as Self-Forcing looks it up), float64."""
        t, index = self._nearest(t)
        return self.sigmas[index].reshape(t.shape).to(t.device)

    def training_weight(self, t: torch.Tensor | float) -> torch.Tensor:
        """`training_weights` of the table entry nearest to each timestep t, float64."""
        t, index = self._nearest(t)
        return self.training_weights[index].reshape(t.shape).to(t.device)

    def warp(self, steps: Sequence[float]) -> list[float]:
        """Map uniformly spaced steps onto the shifted table: t_k = [timesteps, 0][T - step_k]."""
        table = torch.cat([self.timesteps, torch.zeros(1, dtype=torch.float64)])
        return [float(table[self.num_train_timesteps - int(round(s))]) for s in steps]


def _expand(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sigma per sample [B] or per frame [B, F] -> broadcastable against x [B, C, F, H, W]."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    if sigma.dim() == 0:
        return sigma
    if sigma.dim() == 1:
        return sigma.reshape(-1, 1, 1, 1, 1)
    return sigma[:, None, :, None, None]


def x0_from_flow(x_t: torch.Tensor, flow: torch.Tensor, sigma) -> torch.Tensor:
    return (x_t.double() - _expand(sigma, x_t) * flow.double()).to(x_t.dtype)


def flow_from_x0(x_t: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    return ((x_t.double() - x0.double()) / _expand(sigma, x_t)).to(x_t.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    s = _expand(sigma, x0)
    return ((1 - s) * x0.double() + s * noise.double()).to(x0.dtype)


# -- samplers ---------------------------------------------------------------------------------------------------
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
