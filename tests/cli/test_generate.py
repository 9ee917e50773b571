import json
import subprocess
import sys

import pytest

from contextforcing.cli import main
from contextforcing.io.video import read_video


def _generate(tmp_path, *extra, name="v.mp4", seconds="3"):
    out = tmp_path / name
    code = main(
        [
            "generate",
            "--preset",
            "tiny",
            "--random-init",
            "--prompt",
            "a red ball",
            "--seconds",
            seconds,
            "--seed",
            "1",
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )
    return code, out


def test_generate_writes_readable_mp4_and_sidecar_within_policy_limits(tmp_path):
    code, out = _generate(tmp_path, "--memory", "slow_fast", "--switch", "3:a blue cube", seconds="12")
    assert code == 0
    frames, fps = read_video(out)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    latent = 48  # 12 s at 4 latent frames per second, whole chunks of 3
    assert sidecar["latent_frames"] == latent
    assert frames.shape == (1 + (latent - 1) * 4, 64, 64, 3) and fps == 16
    assert sidecar["pixel_frames"] == len(frames)
    assert len(sidecar["chunk_seconds"]) == len(sidecar["memory_trace"]) == latent // 3
    assert sidecar["config"]["memory"]["policy"] == "slow_fast"
    for entry in sidecar["memory_trace"]:
        positions = [p for v in entry["positions"].values() for p in (v if isinstance(v, list) else [v])]
        assert max(positions) <= 20 and len(entry["sink"]) <= 3 and len(entry["slow"]) <= 12
        assert len(entry["fast"]) <= 6
    assert sidecar["switches"] == [{"chunk": 4, "frame": 12, "prompt": "a blue cube", "flush": False}]
    assert sidecar["events"][0]["recached"] == [9, 10, 11]
    assert not sidecar["interrupted"]


def test_longlive_recache_on_a_switch(tmp_path):
    code, out = _generate(
        tmp_path, "--memory", "sink", "--recache", "longlive", "--switch", "4.5:a blue cube", seconds="6"
    )
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert code == 0 and sidecar["config"]["switch"] == {"recache": "longlive", "flush": False}
    assert sidecar["events"][0]["recached"] == list(range(9, 18))  # t = 18 > 12: the last 9 frames


def test_same_seed_same_video(tmp_path):
    _, a = _generate(tmp_path, name="a.mp4")
    _, b = _generate(tmp_path, name="b.mp4")
    assert (read_video(a)[0] == read_video(b)[0]).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "nope"], "unknown preset"),
        (["--memory", "nope"], "unknown memory policy"),
        (["--memory", "slow_fast", "--memory-opt", "sink=0"], "needs a sink"),
        (["--memory", "rolling", "--memory-opt", "window=-3"], "window"),
        (["--memory", "sink", "--memory-opt", "sink=-1"], "must not be negative"),
        (["--memory", "rolling", "--memory-opt", "slow=4"], "unknown memory policy 'rolling' option"),
        (["--seconds", "0"], "--seconds must be positive"),
        (["--seconds", "-2"], "--seconds must be positive"),
        (["--switch", "99:late"], "--switch at 99 s is past the end of the video"),
        (["--switch", "0.2:early"], "--switch at 0.2 s lands on chunk 0"),
        (["--switch", "soon:late"], "must look like SECONDS:PROMPT"),
        (["--switch", "0:late"], "must look like SECONDS:PROMPT with SECONDS > 0"),
        (["--memory", "slow_fast", "--recache", "longlive"], "sink policy"),
        (["--memory-opt", "layout=released", "--switch", "1:q", "--flush-on-switch"], "has no flush"),
        (
            ["--memory", "slow_fast", "--memory-opt", "layout=released", "--memory-opt", "interval=2"],
            "layout=released fixes",
        ),
        (["--seconds", "inf"], "--seconds must be positive and finite"),
        (["--device", "tpu"], "unknown --device 'tpu'"),
        (["--seed", str(2**64)], "--seed must be a whole number in [0, 2**64)"),
        (["--memory-opt", "slow=100000000000"], "memory option slow=100,000,000,000 (slow_fast) needs "),
        (["--memory", "rolling", "--memory-opt", "window=1000000000"], "of K/V, more than the"),
        (["--memory-opt", "tau=1.5"], "tau is a cosine similarity threshold in [-1, 1], got 1.5"),
        (["--memory-opt", "tau=-2"], "tau is a cosine similarity threshold in [-1, 1], got -2"),
    ],
)
def test_bad_input_one_line_exit_2_no_output(tmp_path, capsys, args, message):
    out = tmp_path / "bad.mp4"
    base = [
        "generate",
        "--preset",
        "tiny",
        "--random-init",
        "--prompt",
        "p",
        "--seconds",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    code = main(base + args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, message",
    [
        ("o", "--out {out} must end in .mp4 (its sidecar is written beside it as o.json)"),
        ("v.json", "--out {out} must end in .mp4"),
        ("side.mp4", "output path {side} is a directory"),
    ],
)
def test_outputs_that_cannot_be_a_video_and_its_sidecar(tmp_path, capsys, name, message):
    (tmp_path / "side.json").mkdir()  # where side.mp4's sidecar would go
    out = tmp_path / name
    code = main(["generate", "--random-init", "--prompt", "p", "--seconds", "1", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert message.format(out=out, side=tmp_path / "side.json") in err
    assert [p.name for p in tmp_path.iterdir()] == ["side.json"] and not any((tmp_path / "side.json").iterdir())


def test_unwritable_output_path(tmp_path, capsys):
    code = main(
        ["generate", "--random-init", "--prompt", "p", "--seconds", "1", "--out", str(tmp_path / "no" / "v.mp4")]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_interrupt_keeps_a_playable_file_and_says_so(tmp_path, monkeypatch):
    from contextforcing.codecs import preview

    real = preview.PreviewStreamDecoder.decode
    calls = {"n": 0}

    def decode_then_interrupt(self, latents):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, latents)

    monkeypatch.setattr(preview.PreviewStreamDecoder, "decode", decode_then_interrupt)
    code, out = _generate(tmp_path, seconds="10")
    assert code == 130
    frames, _ = read_video(out)
    assert len(frames) == 1 + (9 - 1) * 4  # three chunks (9 latent frames) were decoded before the interrupt
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["interrupted"] and sidecar["latent_frames"] == 9


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "contextforcing.cli",
            "generate",
            "--random-init",
            "--prompt",
            "p",
            "--seconds",
            "1",
            "--memory",
            "bogus",
            "--out",
            str(tmp_path / "x.mp4"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_bench_json(capsys):
    code = main(
        [
            "bench",
            "--preset",
            "tiny",
            "--random-init",
            "--seconds",
            "6",
            "--memory",
            "relative",
            "--windows",
            "1:4",
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["chunks"] == 8 and "1:4" in result["windows"]
    assert result["context_rotations"] == 7 * 2  # one per layer per chunk with context


def test_bench_checks_the_memory_size_before_building_a_model(capsys):
    code = main(["bench", "--random-init", "--seconds", "3", "--memory-opt", "slow=100000000000"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "of K/V, more than the" in err and len(err.splitlines()) == 1


def test_bench_bad_window(capsys):
    code = main(["bench", "--random-init", "--seconds", "3", "--windows", "5:2"])
    assert code == 2 and "START < END" in capsys.readouterr().err


def test_progress_goes_to_stderr_and_the_result_to_stdout(tmp_path, capfd):
    """A slow run can be told from a hung one (a bar on stderr), and stdout stays the result (scripts parse it)."""
    out = tmp_path / "v.mp4"
    argv = ["generate", "--preset", "tiny", "--random-init", "--prompt", "p", "--seconds", "1.5", "--out", str(out)]
    assert main(argv) == 0
    captured = capfd.readouterr()
    assert captured.out.strip() == f"wrote {out} (21 frames, 6 latent) and its sidecar"
    assert "generate v.mp4" in captured.err and "2/2" in captured.err
    assert main(["bench", "--preset", "tiny", "--random-init", "--seconds", "1.5", "--json", "--peak-tflops", "1"]) == 0
    captured = capfd.readouterr()
    assert json.loads(captured.out)["chunks"] == 2 and "bench slow_fast" in captured.err and "2/2" in captured.err
