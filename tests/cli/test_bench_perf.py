"""`bench`: analytic FLOPs, achieved rate and % of floor; --all-policies; --floor-only; --peak-tflops."""

import json

import pytest

from contextforcing.cli import main
from contextforcing.config import PRESETS
from contextforcing.runtime import perf

BASE = ["bench", "--preset", "tiny", "--random-init", "--seconds", "3", "--json"]


def test_bench_reports_flops_from_what_was_attended_and_an_honest_floor(capsys):
    assert main(BASE + ["--peak-tflops", "0.5"]) == 0
    r = json.loads(capsys.readouterr().out)
    tiny = PRESETS["tiny"]
    assert (
        r["chunks"] == 4 and r["attended_frames_first"] == 3 and r["attended_frames_last"] == 9
    )  # sink 3 + fast 6 (slow still empty)
    assert r["flops_first_chunk"] == perf.chunk_cost(tiny.model, tiny.video, 3).total + perf.prompt_flops(tiny.model)
    assert r["flops_last_chunk"] == perf.chunk_cost(tiny.model, tiny.video, 9).total
    assert r["peak_tflops"] == 0.5 and r["peak_source"] == "given by --peak-tflops"
    assert r["floor_percent"] == pytest.approx(100 * r["achieved_tflops"] / 0.5)
    assert r["floor_median_chunk_s"] == pytest.approx(r["flops_median_chunk"] / 0.5e12)
    assert 0 < r["median_transformer_s"] <= r["median_chunk_s"]


def test_bench_measures_a_peak_when_none_is_given(capsys):
    assert main(["bench", "--preset", "tiny", "--random-init", "--seconds", "1.5"]) == 0
    table = capsys.readouterr().out
    assert "measured: best of" in table and "matmuls on cpu" in table
    assert "% of floor" in table and "analytic FLOPs per chunk" in table and "first chunk latency" in table


def test_all_policies_one_row_each(capsys):
    assert (
        main(
            [
                "bench",
                "--preset",
                "tiny",
                "--random-init",
                "--seconds",
                "1.5",
                "--all-policies",
                "--peak-tflops",
                "1",
                "--windows",
                "0:2",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    rows = [line.split()[0] for line in table.splitlines()[3 : 3 + len(perf.POLICIES)]]
    assert rows == list(perf.POLICIES)
    assert "% floor" in table and "KV MiB" in table and "first ms" in table and "given by --peak-tflops" in table
    assert (
        main(
            [
                "bench",
                "--preset",
                "tiny",
                "--random-init",
                "--seconds",
                "1.5",
                "--all-policies",
                "--peak-tflops",
                "1",
                "--json",
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [r["memory"]["policy"] for r in results] == list(perf.POLICIES)
    kv = {r["memory"]["policy"]: r["kv_memory_bytes"] for r in results}
    frame = 2 * 16 * 64 * 4 * 2  # K+V, 16 tokens x 64 dims x fp32, 2 layers
    assert kv["slow_fast"] == 21 * frame and kv["rolling"] == 12 * frame and kv["full"] == 6 * frame


def test_floor_only_prints_the_wan_arithmetic_without_a_model(capsys):
    assert (
        main(["bench", "--preset", "wan2.1-t2v-1.3b", "--seconds", "120", "--floor-only", "--peak-tflops", "790"]) == 0
    )
    out = capsys.readouterr().out
    assert "32760" in out and "200.8 TFLOP" in out and "47.22 pixel frames per second" in out
    assert main(["bench", "--preset", "wan2.1-t2v-1.3b", "--seconds", "120", "--floor-only", "--all-policies"]) == 0
    out = capsys.readouterr().out
    assert out.count("policy ") == len(perf.POLICIES) and "748800" in out  # full at chunk 159: 480 frames


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--peak-tflops", "0"], "--peak-tflops must be positive"),
        (["--all-policies", "--memory-opt", "sink=2"], "--all-policies"),
        (["--windows", "1:9"], "reaches past"),
        (["--threads", "0"], "--threads must be a whole number >= 1, got 0"),
    ],
)
def test_bench_bad_input(capsys, extra, message):
    assert main(["bench", "--preset", "tiny", "--random-init", "--seconds", "1.5", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_threads_and_per_chunk_latencies(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(BASE + ["--threads", "1", "--peak-tflops", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    r = json.loads(capsys.readouterr().out)
    assert r["threads"] == 1 and len(r["chunk_seconds"]) == r["chunks"] == 4
    assert r["first_chunk_s"] == r["chunk_seconds"][0]


def test_all_policies_reports_a_policy_that_runs_out_of_memory(capsys, monkeypatch):
    import torch

    from contextforcing.cli import bench

    real = bench.run_bench

    def run(preset, seconds, memory, options, **kw):
        if memory == "full":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 128.54 GiB")
        return real(preset, seconds, memory, options, **kw)

    monkeypatch.setattr(bench, "run_bench", run)
    assert (
        main(["bench", "--preset", "tiny", "--random-init", "--seconds", "1.5", "--all-policies", "--peak-tflops", "1"])
        == 0
    )
    table = capsys.readouterr().out
    assert "full: out of memory: CUDA out of memory" in table and "slow_fast" in table
