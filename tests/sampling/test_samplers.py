import pytest
import torch

from contextforcing.sampling.samplers import (
    FlowMatchSchedule,
    KnownFrames,
    add_noise,
    euler_steps,
    flow_from_x0,
    guided,
    sample_euler,
    sample_few_step,
    shift_sigma,
    x0_from_flow,
)


def test_warped_default_steps_match_self_forcing():
    warped = FlowMatchSchedule(shift=5.0).warp([1000, 750, 500, 250])
    assert warped == pytest.approx([1000.0, 937.5, 833.333333, 625.0], abs=1e-4)


def test_shift_formula_closed_form():
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert shift_sigma(sigma, 5.0).tolist() == pytest.approx([0.0, 1.25 / 2.0, 2.5 / 3.0, 1.0])
    assert torch.equal(shift_sigma(sigma, 1.0), sigma)


def test_table_and_nearest_lookup():
    schedule = FlowMatchSchedule(shift=5.0)
    assert schedule.sigmas.shape == (1000,)
    assert schedule.timesteps[0].item() == 1000.0
    assert float(schedule.sigma(937.5)) == pytest.approx(0.9375)
    # t = 0 is not in the table: the nearest entry is the smallest shifted sigma (about 0.005), as in Self-Forcing.
    assert float(schedule.sigma(0.0)) == pytest.approx(
        shift_sigma(torch.tensor(0.001, dtype=torch.float64), 5.0).item()
    )


def test_sigmas_match_diffusers_flow_match_scheduler():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    ours = FlowMatchSchedule(shift=5.0)
    assert torch.allclose(ours.sigmas.float(), ref.sigmas.float(), atol=1e-6)
    assert torch.allclose(ours.timesteps.float(), ref.timesteps.float(), atol=1e-3)


def test_x0_flow_round_trip_in_float64():
    x0, noise = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4, 3, 5, 5)
    sigma = torch.tensor([0.9375, 0.3])
    x_t = add_noise(x0, noise, sigma)
    flow = flow_from_x0(x_t, x0, sigma)
    assert torch.allclose(flow, noise - x0, atol=1e-5)
    assert torch.allclose(x0_from_flow(x_t, flow, sigma), x0, atol=1e-6)


def test_per_frame_sigma_broadcasts_over_frames():
    x0, noise = torch.zeros(1, 2, 3, 2, 2), torch.ones(1, 2, 3, 2, 2)
    x_t = add_noise(x0, noise, torch.tensor([[0.0, 0.5, 1.0]]))
    assert x_t[0, 0, :, 0, 0].tolist() == [0.0, 0.5, 1.0]


def test_few_step_sampler_with_exact_denoiser_returns_target():
    target = torch.randn(1, 2, 3, 4, 4)
    schedule = FlowMatchSchedule()
    steps = schedule.warp([1000, 750, 500, 250])

    def oracle(x, t):  # the flow that points exactly at `target`
        return flow_from_x0(x, target, schedule.sigma(t))

    out = sample_few_step(oracle, torch.randn_like(target), steps, schedule, torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=1e-5)
    early = sample_few_step(oracle, torch.randn_like(target), steps, schedule, exit_step=1)
    assert torch.allclose(early, target, atol=1e-5)


def test_euler_sampler_integrates_straight_flow_exactly():
    target, noise = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4)
    schedule = FlowMatchSchedule()
    steps = euler_steps(8, schedule)
    assert steps[0] == 1000.0 and all(a > b for a, b in zip(steps, steps[1:]))
    out = sample_euler(lambda x, t: noise - target, noise, steps, schedule)
    assert torch.allclose(out, target, atol=1e-5)


def test_guidance_standard_form():
    cond = lambda x, t: torch.full_like(x, 2.0)  # noqa: E731
    uncond = lambda x, t: torch.full_like(x, 1.0)  # noqa: E731
    x = torch.zeros(3)
    assert guided(cond, uncond, 5.0)(x, 0).tolist() == [6.0, 6.0, 6.0]
    assert guided(cond, uncond, 1.0)(x, 0).tolist() == [2.0, 2.0, 2.0]


def _known(frames=3, mask=(True, False, True)):
    latents = torch.randn(1, 2, frames, 4, 4, generator=torch.Generator().manual_seed(5))
    return KnownFrames(latents, mask)


def test_few_step_sampler_keeps_known_frames_on_their_noising_path():
    target, known = torch.randn(1, 2, 3, 4, 4), _known()
    schedule = FlowMatchSchedule()
    steps = schedule.warp([1000, 750, 500, 250])
    seen = []

    def oracle(x, t):
        seen.append(x.clone())
        return flow_from_x0(x, target, schedule.sigma(t))

    noise = torch.randn_like(target)
    out = sample_few_step(oracle, noise, steps, schedule, torch.Generator().manual_seed(0), known=known)
    m = torch.tensor(known.mask)
    assert torch.equal(out[:, :, m], known.latents[:, :, m])  # exactly, not approximately
    assert torch.allclose(out[:, :, ~m], target[:, :, ~m], atol=1e-5)
    replay = torch.Generator().manual_seed(0)  # the sampler's re-noising draws, one per later step
    for i, t in enumerate(steps[1:], start=1):
        fresh = torch.randn(target.shape, generator=replay)
        expected = add_noise(known.latents, fresh, schedule.sigma(t))
        assert torch.allclose(seen[i][:, :, m], expected[:, :, m], atol=1e-6)
        assert torch.allclose(seen[i][:, :, ~m], add_noise(target, fresh, schedule.sigma(t))[:, :, ~m], atol=1e-5)


def test_euler_sampler_keeps_known_frames_on_the_straight_path():
    target, noise, known = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4), _known()
    schedule = FlowMatchSchedule()
    steps = euler_steps(8, schedule)
    seen = []

    def flow(x, t):
        seen.append(x.clone())
        return noise - target

    out = sample_euler(flow, noise, steps, schedule, known=known)
    m = torch.tensor(known.mask)
    assert torch.equal(out[:, :, m], known.latents[:, :, m])
    assert torch.allclose(out[:, :, ~m], target[:, :, ~m], atol=1e-5)
    for x, t in zip(seen, steps):
        s = t / schedule.num_train_timesteps
        assert torch.allclose(x[:, :, m], ((1 - s) * known.latents + s * noise)[:, :, m], atol=1e-5)
