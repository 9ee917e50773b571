"""Per-sample training losses of the Context Forcing recipe; every function returns a (B,) tensor.

Conventions (Wan flow matching, see sampling/samplers.py): x_t = (1 - sigma) x0 + sigma eps and the
networks predict the flow v = eps - x0. Latents are [B, C, F, H, W]; a loss is the mean over all
non-batch elements, so a mask over frames only changes which elements enter the mean.
"""

from __future__ import annotations

import torch

from contextforcing.sampling.samplers import FlowMatchSchedule, shift_sigma


def _per_sample_mean(x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (C, F, H, W) per sample; `frame_mask` [F] or [B, F] keeps only the marked frames."""
    if frame_mask is None:
        return x.flatten(1).mean(1)
    mask = frame_mask.to(x.dtype)
    mask = mask.reshape(1, 1, -1, 1, 1) if mask.dim() == 1 else mask[:, None, :, None, None]
    mask = mask.expand_as(x)
    return (x * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


def flow_matching_loss(
    flow_pred: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Rectified-flow loss || v_theta(x_t, t) - (eps - x0) ||^2 (Wan's training objective)."""
    target = noise.double() - x0.double()
    return _per_sample_mean((flow_pred.double() - target) ** 2, frame_mask).to(flow_pred.dtype)


def ode_regression_loss(
    x0_pred: torch.Tensor, x0_target: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """ODE initialisation (CausVid Sec. 3.3 / Self-Forcing): || G(x_{t_k}, t_k) - x_0^{ODE} ||^2."""
    return _per_sample_mean((x0_pred.double() - x0_target.double()) ** 2, frame_mask).to(x0_pred.dtype)


@torch.no_grad()
def dmd_gradient(x: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor) -> torch.Tensor:
    """DMD gradient direction (DMD Eq. 7-8, Context Forcing Eq. 4 / 6), float64:

        g = (x0_fake - x0_real) / mean |x - x0_real|      (normaliser per sample over C, F, H, W)

    x0 predictions stand in for the scores (s ~ -(x_t - alpha x0) / sigma^2, so s_fake - s_real is
    proportional to x0_real - x0_fake); descending along g moves x toward the real distribution.
    """
    x, fake, real = x.double(), x0_fake.double(), x0_real.double()
    normaliser = (x - real).abs().flatten(1).mean(1).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.nan_to_num((fake - real) / normaliser)


def dmd_generator_loss(
    x: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The DMD surrogate 0.5 * || x - sg(x - g) ||^2 in float64, whose gradient w.r.t. x is g / N
    (N elements averaged); only x carries gradient (through the generator)."""
    g = dmd_gradient(x, x0_fake, x0_real)
    target = x.detach().double() - g
    return 0.5 * _per_sample_mean((x.double() - target) ** 2, frame_mask)


def critic_loss(
    fake_flow: torch.Tensor, noise: torch.Tensor, x: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fake-score (critic) loss: flow matching on the student's own samples x (detached)."""
    return flow_matching_loss(fake_flow, noise, x.detach(), frame_mask)


def dmd_timesteps(
    batch: int,
    schedule: FlowMatchSchedule,
    clamp: tuple[float, float],
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """DMD timesteps per sample (Self-Forcing `model/dmd.py`): t ~ U{0..T-1}, shifted with the schedule's
    shift (sigma' = s sigma / (1 + (s - 1) sigma) on t / T), then clamped to [clamp[0], clamp[1]]."""
    T = schedule.num_train_timesteps
    t = torch.randint(0, T, (batch,), generator=generator, device=generator.device if generator else None)
    shifted = shift_sigma(t.double() / T, schedule.shift) * T
    return shifted.clamp(*clamp).to(device=device, dtype=torch.float32)


def training_timesteps(
    batch: int, schedule: FlowMatchSchedule, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Flow-matching training timesteps: a uniform draw from the (shifted) training table, as Wan trains."""
    index = torch.randint(
        0, schedule.num_train_timesteps, (batch,), generator=generator, device=generator.device if generator else None
    )
    return schedule.timesteps[index.cpu()].to(device=device, dtype=torch.float32)
