"""Error-recycling buffer: fills by timestep bucket, samples from the right bucket, injects with the
configured probabilities (decisions through the shared draws)."""

import torch

from contextforcing.sampling.samplers import FlowMatchSchedule, euler_steps
from contextforcing.training.error_buffer import ErrorBuffer, ErrorRecyclingOptions, draw_injection, fit_frames

SCHEDULE = FlowMatchSchedule(shift=5.0)


class SharedDraws:
    """The part of StepContext the buffer uses: seeded shared draws."""

    def __init__(self, seed: int, step: int = 0):
        self._gen = torch.Generator().manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.uniforms, self.step = 0, step

    def shared_uniform(self) -> float:
        self.uniforms += 1
        return float(torch.rand((), generator=self._gen))

    def shared_randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=self._gen))


def _const(value: float) -> torch.Tensor:
    return torch.full((1, 2, 3, 2, 2), value)


def test_buffer_fills_buckets_by_nearest_inference_timestep():
    buffer = ErrorBuffer(SCHEDULE, num_buckets=10, capacity=3)
    grid = euler_steps(10, SCHEDULE)
    for i, t in enumerate(grid):
        for _ in range(i % 4):  # bucket i gets i % 4 entries (capped at 3)
            buffer.add(torch.tensor([t + 0.1]), _const(float(i)))
    assert buffer.sizes() == [min(i % 4, 3) for i in range(10)]
    assert buffer.bucket(grid[4] - 0.2) == 4


def test_full_bucket_replaces_its_nearest_entry():
    buffer = ErrorBuffer(SCHEDULE, num_buckets=5, capacity=2)
    t = torch.tensor([1000.0])
    buffer.add(t, _const(0.0))
    buffer.add(t, _const(10.0))
    buffer.add(t, _const(9.0))  # nearest to 10 -> replaces it
    values = sorted(float(e.mean()) for e in buffer.entries[buffer.bucket(1000.0)])
    assert values == [0.0, 9.0] and len(buffer) == 2


def test_samples_come_from_the_timestep_bucket():
    buffer = ErrorBuffer(SCHEDULE, num_buckets=10, capacity=4)
    grid = euler_steps(10, SCHEDULE)
    for i in (2, 7):
        for _ in range(4):
            buffer.add(torch.tensor([grid[i]]), _const(float(i)))
    gen = torch.Generator().manual_seed(0)
    assert all(float(buffer.sample(grid[2], gen).mean()) == 2.0 for _ in range(20))
    assert all(float(buffer.sample(grid[7] + 0.5, gen).mean()) == 7.0 for _ in range(20))
    assert buffer.sample(grid[5], gen) is None  # empty bucket: nothing to inject
    pooled = {float(buffer.sample(None, gen).mean()) for _ in range(50)}
    assert pooled == {2.0, 7.0}


def test_injection_frequencies_match_the_configured_probabilities():
    options = ErrorRecyclingOptions(enabled=True)  # 0.9 / 0.9 / 0.01, clean 0.5
    ctx, n = SharedDraws(0), 20000
    draws = [draw_injection(options, ctx) for _ in range(n)]
    assert ctx.uniforms == 4 * n  # a fixed number of shared draws per step (exact replay)

    def freq(pred):
        return sum(map(pred, draws)) / n

    def close(p, expected):  # 4 standard deviations
        return abs(p - expected) < 4 * (expected * (1 - expected) / n) ** 0.5 + 1e-9

    assert close(freq(lambda d: d.latent), 0.5 * 0.9)
    assert close(freq(lambda d: d.context), 0.5 * 0.9)
    assert close(freq(lambda d: d.noise), 0.5 * 0.01)
    assert close(freq(lambda d: d.clean), 0.5 + 0.5 * 0.1 * 0.1 * 0.99)
    assert close(freq(lambda d: d.latent and d.context), 0.5 * 0.81)
    disabled = [draw_injection(ErrorRecyclingOptions(enabled=False), ctx) for _ in range(100)]
    assert all(d.clean for d in disabled)
    # before start_step nothing is injected, from it on as configured; the draws are made either way
    late = ErrorRecyclingOptions(enabled=True, start_step=10)
    early = SharedDraws(1, step=9)
    assert all(draw_injection(late, early).clean for _ in range(200)) and early.uniforms == 800
    assert not all(draw_injection(late, SharedDraws(1, step=10)).clean for _ in range(200))


def test_oldest_replacement_keeps_the_most_recent_errors():
    schedule = FlowMatchSchedule(5.0)
    buffer = ErrorBuffer(schedule, num_buckets=4, capacity=3, replace="oldest")
    t = torch.tensor([float(buffer.grid[1])])
    for value in range(6):
        buffer.add(t, torch.full((1, 2, 1, 1, 1), float(value)))
    assert [float(e.mean()) for e in buffer.entries[1]] == [3.0, 4.0, 5.0]


def test_fit_frames_cuts_or_tiles():
    error = torch.arange(3.0).reshape(1, 3, 1, 1).expand(2, 3, 1, 1)
    assert fit_frames(error, 2)[0, :, 0, 0].tolist() == [0, 1]
    assert fit_frames(error, 7)[0, :, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
