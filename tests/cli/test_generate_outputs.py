"""`generate` never loses or mislabels a video: full disks, an encoder that cannot finish, two runs on one
--out, a second Ctrl-C during the cleanup of the first, and Ctrl-C while starting."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from contextforcing.cli import main
from contextforcing.codecs import preview
from contextforcing.io.video import read_video


def _generate(out, *extra, seconds="3", seed="1"):
    return main(
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
            seed,
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )


def _previous_run(directory):
    """A good earlier video and sidecar at directory/v.mp4, and their bytes."""
    out = directory / "v.mp4"
    assert _generate(out, seed="1") == 0
    return out, out.read_bytes(), out.with_suffix(".json").read_bytes()


def _assert_pair(out, seed: int, interrupted: bool):
    """The mp4 and its sidecar belong to the same run."""
    frames, _ = read_video(out)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert (sidecar["seed"], sidecar["interrupted"], sidecar["pixel_frames"]) == (seed, interrupted, len(frames))
    return sidecar


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_full_disk_keeps_the_previous_video_and_sidecar(small_disk, capsys):
    out, video, sidecar = _previous_run(small_disk.path)
    capsys.readouterr()
    for leave in (0, 8192):  # ffmpeg stops while streaming / frames fit but its trailer does not
        small_disk.fill(leave)
        assert _generate(out, seconds="6", seed="2") == 2
        err = _one_line(capsys)
        assert err.startswith(f"contextforcing: error: cannot write {out}: the encoder")
        assert err.endswith("the previous v.mp4 is untouched") and "free in" in err
        assert out.read_bytes() == video and out.with_suffix(".json").read_bytes() == sidecar
        assert sorted(os.listdir(small_disk.path)) == ["filler", "v.json", "v.mp4"]


def test_an_encoder_that_cannot_write_its_trailer_keeps_the_previous_video(tmp_path, monkeypatch, capsys):
    """The same failure as a full disk, on any machine: ffmpeg ends without error but the file lacks its end."""
    import imageio.v2 as imageio

    out, video, sidecar = _previous_run(tmp_path)
    real = imageio.get_writer

    def get_writer(uri, *args, **kwargs):
        writer = real(uri, *args, **kwargs)
        close = writer.close

        def close_without_trailer():
            close()
            if os.path.exists(uri):
                with open(uri, "r+b") as f:
                    f.truncate(4096)

        writer.close = close_without_trailer
        return writer

    monkeypatch.setattr(imageio, "get_writer", get_writer)
    capsys.readouterr()
    assert _generate(out, seconds="6", seed="2") == 2
    assert "the encoder could not finish the file (0 of 93 frames readable)" in _one_line(capsys)
    assert out.read_bytes() == video and out.with_suffix(".json").read_bytes() == sidecar
    assert sorted(os.listdir(tmp_path)) == ["v.json", "v.mp4"]


def test_a_second_run_on_the_same_out_is_refused_while_the_first_completes(tmp_path, monkeypatch, capsys):
    real, started, release, first = preview.PreviewStreamDecoder.decode, threading.Event(), threading.Event(), {}

    def decode(self, latents):
        if threading.current_thread().name == "first":
            started.set()
            release.wait(60)
        return real(self, latents)

    monkeypatch.setattr(preview.PreviewStreamDecoder, "decode", decode)
    out = tmp_path / "v.mp4"
    thread = threading.Thread(target=lambda: first.update(code=_generate(out, seed="5")), name="first")
    thread.start()
    try:
        assert started.wait(60)
        code = _generate(out, seed="6")
    finally:
        release.set()
        thread.join(60)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"contextforcing: error: output {out} is in use by pid {os.getpid()} on ")
    assert first["code"] == 0
    _assert_pair(out, seed=5, interrupted=False)
    assert sorted(os.listdir(tmp_path)) == ["v.json", "v.mp4"]


@pytest.mark.parametrize("second", ["while ffmpeg finishes", "between the video and its sidecar"])
def test_a_second_ctrl_c_cannot_split_a_video_from_its_sidecar(tmp_path, monkeypatch, capsys, second):
    import imageio.v2 as imageio

    out, _, _ = _previous_run(tmp_path)
    real_decode, calls = preview.PreviewStreamDecoder.decode, {"n": 0}

    def decode_then_ctrl_c(self, latents):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C, a real signal
        return real_decode(self, latents)

    monkeypatch.setattr(preview.PreviewStreamDecoder, "decode", decode_then_ctrl_c)
    if second == "while ffmpeg finishes":
        real_get_writer = imageio.get_writer

        def get_writer(*args, **kwargs):
            writer = real_get_writer(*args, **kwargs)
            close = writer.close

            def ctrl_c_then_close():
                if not writer.closed:
                    os.kill(os.getpid(), signal.SIGINT)
                close()

            writer.close = ctrl_c_then_close
            return writer

        monkeypatch.setattr(imageio, "get_writer", get_writer)
    else:
        real_replace = os.replace

        def replace(src, dst):
            real_replace(src, dst)
            if str(dst) == str(out):
                os.kill(os.getpid(), signal.SIGINT)

        monkeypatch.setattr(os, "replace", replace)
    capsys.readouterr()
    assert _generate(out, seconds="10", seed="2") == 130
    assert _one_line(capsys) == f"contextforcing: interrupted; kept {out} (33 frames) and its sidecar"
    sidecar = _assert_pair(out, seed=2, interrupted=True)
    assert sidecar["latent_frames"] == 9  # three chunks were decoded before the first Ctrl-C
    assert sorted(os.listdir(tmp_path)) == ["v.json", "v.mp4"]


def test_ctrl_c_while_starting_up_is_one_line_and_leaves_nothing(tmp_path):
    proc = subprocess.Popen(
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
            "--out",
            str(tmp_path / "v.mp4"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # torch is being imported (about 2 s), or the model built
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1].strip()
    assert proc.returncode == 130, err
    assert err.startswith("contextforcing: interrupted") and len(err.splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


def _part_files(directory):
    return [p for p in directory.iterdir() if ".part" in p.name]


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_keep_the_chunks_done_and_leave_no_temporary_or_lock_file(tmp_path, name):
    out = tmp_path / "v.mp4"
    cmd = [sys.executable, "-m", "contextforcing.cli", "generate", "--random-init", "--prompt", "a red ball"]
    proc = subprocess.Popen(
        [*cmd, "--seconds", "3600", "--out", str(out), "--quiet"], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size for p in _part_files(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.1)  # chunks are being written into the mp4's temporary file
        proc.send_signal(signal.Signals[name])  # a job scheduler's stop, a closed terminal
        err = proc.communicate(timeout=120)[1].strip()
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.Signals[name], err
    frames = len(read_video(out)[0])
    assert err == f"contextforcing: interrupted by {name}; kept {out} ({frames} frames) and its sidecar"
    _assert_pair(out, seed=0, interrupted=True)
    assert sorted(os.listdir(tmp_path)) == ["v.json", "v.mp4"]  # no .part, no .lock


def test_an_out_name_too_long_for_its_temporary_names_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from contextforcing.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / ("v" * 236 + ".mp4")  # 240 bytes: its sidecar's temporary name would need 256
    assert _generate(out) == 2
    err = _one_line(capsys)
    assert err.startswith(f"contextforcing: error: output name '{'v' * 60}'... (240 characters) is too long"), err
    assert err.endswith("use at most 239 bytes")
    assert os.listdir(tmp_path) == []
