"""Flow matching as Wan trains it: x_t = (1 - sigma) x0 + sigma * eps, the network predicts eps - x0.

Everything here is a small pure function or an immutable table; conversions run in float64.
The timestep shift lives in `shift_sigma` and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch


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
