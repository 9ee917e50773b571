"""Losses of the recipe: DMD gradient, surrogate, timesteps, flow matching; DMD on an analytic 2-D case."""

import torch

from contextforcing.sampling.samplers import FlowMatchSchedule, add_noise, shift_sigma
from contextforcing.training import losses

SCHEDULE = FlowMatchSchedule(shift=5.0)
CLAMP = (20.0, 980.0)


def _latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_dmd_gradient_is_the_normalised_score_difference_per_sample():
    x, fake, real = _latents(2, 4, 3, 2, 2, seed=1), _latents(2, 4, 3, 2, 2, seed=2), _latents(2, 4, 3, 2, 2, seed=3)
    x[1] *= 10  # per-sample normaliser: sample 1's mean |x - x0_real| is far larger
    g = losses.dmd_gradient(x, fake, real)
    for b in range(2):
        expected = (fake[b] - real[b]).double() / (x[b] - real[b]).double().abs().mean()
        assert torch.allclose(g[b], expected)
    assert g.dtype == torch.float64


def test_surrogate_gradient_is_g_over_n_and_zero_when_real_equals_fake():
    x = _latents(2, 4, 3, 2, 2, seed=1).requires_grad_()
    fake, real = _latents(2, 4, 3, 2, 2, seed=2), _latents(2, 4, 3, 2, 2, seed=3)
    loss = losses.dmd_generator_loss(x, fake, real)
    assert loss.shape == (2,) and loss.dtype == torch.float64
    loss.sum().backward()
    n = x[0].numel()
    assert torch.allclose(x.grad.double(), losses.dmd_gradient(x, fake, real) / n, atol=1e-7)

    x.grad = None
    zero = losses.dmd_generator_loss(x, real, real)
    zero.sum().backward()
    assert float(zero.detach().abs().max()) == 0.0 and float(x.grad.abs().max()) == 0.0


def test_dmd_timesteps_are_shifted_and_clamped():
    t = losses.dmd_timesteps(20000, SCHEDULE, CLAMP, torch.Generator().manual_seed(0))
    assert float(t.min()) >= CLAMP[0] and float(t.max()) <= CLAMP[1]
    # Uniform u on [0, 1) through the shift: the median is 1000 * shift(0.5) (= 833.3 at shift 5).
    expected_median = float(shift_sigma(torch.tensor(0.5), 5.0)) * 1000
    assert abs(float(t.median()) - expected_median) < 5.0
    # The top of the shifted range piles at the clamp: u > inverse_shift(0.98) = 0.98 / (5 - 4 * 0.98).
    y = CLAMP[1] / 1000
    assert abs(float((t == CLAMP[1]).float().mean()) - (1 - y / (5.0 - 4.0 * y))) < 0.01


def test_flow_matching_and_regression_losses():
    x0, noise = _latents(2, 4, 3, 2, 2, seed=1), _latents(2, 4, 3, 2, 2, seed=2)
    assert torch.allclose(losses.flow_matching_loss(noise - x0, noise, x0), torch.zeros(2), atol=1e-12)
    pred = noise - x0
    pred[:, :, 1] += 1.0  # only frame 1 is wrong
    keep = torch.tensor([True, False, True])
    assert torch.allclose(losses.flow_matching_loss(pred, noise, x0, keep), torch.zeros(2), atol=1e-12)
    assert torch.allclose(losses.flow_matching_loss(pred, noise, x0), torch.full((2,), 1 / 3))
    assert torch.allclose(losses.ode_regression_loss(x0 + 2, x0), torch.full((2,), 4.0))
    critic = losses.critic_loss(pred, noise, x0.requires_grad_())
    assert torch.allclose(critic, losses.flow_matching_loss(pred, noise, x0))


def _gaussian_x0(x_t, sigma, mean, std):
    """E[x0 | x_t] for x0 ~ N(mean, std^2 I) and x_t = (1 - sigma) x0 + sigma eps (closed form)."""
    a = (1 - sigma).reshape(-1, 1, 1, 1, 1)
    s = sigma.reshape(-1, 1, 1, 1, 1)
    gain = a * std**2 / (a**2 * std**2 + s**2)
    return mean + gain * (x_t - a * mean)


def test_dmd_moves_an_affine_generator_toward_the_target_gaussian():
    """Real N(mu, s^2), generator x = a z + b; the fake score is the generator's own Gaussian (closed form)."""
    mu, s = torch.tensor([2.0, -1.0]).reshape(1, 2, 1, 1, 1), 1.5
    scale, shift = torch.tensor(0.3, requires_grad=True), torch.zeros(1, 2, 1, 1, 1, requires_grad=True)
    opt = torch.optim.Adam([scale, shift], lr=0.03)
    gen = torch.Generator().manual_seed(0)
    start_mean_error, start_scale_error = float((shift.detach() - mu).norm()), abs(scale.item() - s)
    for _ in range(300):
        z = torch.randn(256, 2, 1, 1, 1, generator=gen)
        x = scale * z + shift
        t = losses.dmd_timesteps(256, SCHEDULE, CLAMP, gen)
        sigma = SCHEDULE.sigma(t).float()
        x_t = add_noise(x.detach(), torch.randn(x.shape, generator=gen), sigma)
        x0_real = _gaussian_x0(x_t, sigma, mu, s)
        x0_fake = _gaussian_x0(x_t, sigma, shift.detach(), scale.detach().abs())
        opt.zero_grad()
        losses.dmd_generator_loss(x, x0_fake, x0_real).mean().backward()
        opt.step()
    assert float((shift.detach() - mu).norm()) < 0.1 * start_mean_error
    assert abs(abs(scale.item()) - s) < 0.2 * start_scale_error
