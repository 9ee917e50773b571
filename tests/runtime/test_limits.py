"""One check of a stream's memory and sampling options (contextforcing/runtime/limits.py) for every door: the CLI's
`generate` and `bench`, the Python API and the viewer (tests/serve/test_protocol.py) refuse the same options with
the same one line, before anything is allocated; the limit a message states is the largest value that fits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import contextforcing as cf
from contextforcing.cli import main
from contextforcing.config import SamplingConfig
from contextforcing.memory.spec import make_spec
from contextforcing.runtime import limits

PROMPT = "warm room, hold, lights on, black ball"  # the embedded model reads the panorama grammar
HAVE = 2**30  # the free memory the tests pretend the machine has


@pytest.fixture(scope="module")
def pipe():
    return cf.Pipeline.from_pretrained(device="cpu")


@pytest.fixture
def one_gib(monkeypatch):
    monkeypatch.setattr(limits, "available_bytes", lambda device: HAVE)


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status")


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("contextforcing: error: "), err
    return err[len("contextforcing: error: ") : -1]


def test_the_cli_and_the_api_refuse_a_memory_too_big_with_the_same_line(pipe, one_gib, capsys, tmp_path):
    with pytest.raises(limits.MemoryTooLarge) as err:
        pipe.stream(PROMPT, 10, memory={"slow": 30_000_000})
    message = str(err.value)
    assert message.startswith("memory option slow=30,000,000 (slow_fast) needs ") and "\n" not in message
    assert "more than the 1 GiB available on cpu; slow can be at most " in message
    options = ["--seconds", "10", "--memory-opt", "slow=30000000", "--device", "cpu"]
    out = tmp_path / "v.mp4"
    assert _cli_error(capsys, ["generate", "--prompt", PROMPT, "--out", str(out), *options]) == message
    assert _cli_error(capsys, ["bench", *options]) == message
    assert list(tmp_path.iterdir()) == []


def test_a_memory_too_big_is_refused_before_anything_is_allocated(pipe):
    before = _rss()
    for memory in (cf.Memory.slow_fast(slow=1e11), {"slow": 30_000_000}, {"policy": "rolling", "window": 10**9}):
        with pytest.raises(limits.MemoryTooLarge, match="can be at most"):
            pipe.stream(PROMPT, 10, memory=memory)
    with pytest.raises(limits.MemoryTooLarge, match=r"memory 'full' keeps every latent frame: 40,000,002 frames"):
        pipe(PROMPT, 1e7, memory="full")
    assert _rss() - before < 64 * 2**20  # the refused stores were never built (30 M slots took 1.1 GB before)


@pytest.mark.parametrize("policy", ["rolling", "sink", "relative", "ema_sink", "slow_fast"])
def test_the_stated_limit_is_the_largest_value_that_fits(pipe, one_gib, policy):
    model, video, dtype, cpu = pipe.preset.model, pipe.preset.video, pipe.model.dtype, torch.device("cpu")
    key = "fast" if policy == "slow_fast" else "window"

    def check(value: int) -> None:
        spec = make_spec(policy, {key: value})
        limits.check_stream(spec, pipe.sampling, model, video, dtype=dtype, device=cpu, max_frames=120)

    with pytest.raises(limits.MemoryTooLarge) as err:
        check(10**7)
    largest = int(str(err.value).rsplit(f"{key} can be at most ", 1)[1].split()[0].replace(",", ""))
    assert largest >= video.chunk_frames
    check(largest)  # fits
    with pytest.raises(limits.MemoryTooLarge):
        check(largest + 1)


def test_the_longest_full_video_stated_is_the_longest_that_fits(pipe, one_gib):
    model, video, dtype, cpu = pipe.preset.model, pipe.preset.video, pipe.model.dtype, torch.device("cpu")

    def check(seconds: float) -> None:
        frames = video.latent_frames_for(seconds)
        limits.check_stream(cf.Memory.full(), pipe.sampling, model, video, dtype=dtype, device=cpu, max_frames=frames)

    with pytest.raises(limits.MemoryTooLarge) as err:
        check(1e7)
    longest = float(str(err.value).split("at most ", 1)[1].split(" seconds")[0].replace(",", ""))
    check(longest)
    with pytest.raises(limits.MemoryTooLarge):
        check(longest + video.chunk_frames / video.latent_fps)


@pytest.mark.parametrize(
    "sampling, message",
    [
        ({"denoising_steps": []}, "sampling denoising_steps must list at least one timestep"),
        ({"guidance_scale": math.nan}, "sampling guidance_scale must be finite, got nan"),
        ({"guidance_scale": math.inf}, "sampling guidance_scale must be finite, got inf"),
        ({"shift": 0.0}, "sampling shift must be positive and finite, got 0.0"),
        ({"shift": math.nan}, "sampling shift must be positive and finite, got nan"),
        ({"denoising_steps": [1000, 1500]}, "sampling denoising_steps must be timesteps in [0, 1000]"),
        ({"denoising_steps": [1000, math.nan]}, "sampling denoising_steps must be timesteps in [0, 1000]"),
        ({"denoising_steps": ["a"]}, "sampling option 'denoising_steps' must be a number, got 'a'"),
        ({"denoising_steps": 5}, "sampling option 'denoising_steps' must be a list, got 5"),
        ({"commit_timestep": -1.0}, "sampling commit_timestep must be in [0, 1000]"),
        ({"euler_steps": 10**9}, "sampling euler_steps must be in [0, 1000]"),
        ({"num_train_timesteps": 0}, "sampling num_train_timesteps must be a whole number >= 1, got 0"),
        ({"num_train_timesteps": math.nan}, "sampling option 'num_train_timesteps' must be an integer, got nan"),
    ],
)
def test_sampling_options_no_sampler_can_run_are_one_line(pipe, sampling, message):
    with pytest.raises(cf.UserError) as err:
        pipe(PROMPT, 1, sampling=sampling)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_long_step_list_is_not_echoed_whole():
    with pytest.raises(cf.UserError) as err:
        limits.check_sampling(SamplingConfig(denoising_steps=(2000.0,) * 100_000))
    assert len(str(err.value)) < 200 and "characters)" in str(err.value)


def test_the_check_passes_what_the_model_was_trained_with(pipe):
    need = limits.check_stream(
        pipe.memory,
        pipe.sampling,
        pipe.preset.model,
        pipe.preset.video,
        dtype=pipe.model.dtype,
        device=pipe.device,
        max_frames=None,
    )
    generation = pipe.stream(PROMPT, None)
    next(generation)
    footprint = generation.memory_footprint()
    assert need == footprint.kv_bytes + footprint.view_bytes  # what the check counts is what a stream holds
