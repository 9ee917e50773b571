"""What the command line does at its edges (contextforcing/cli/main.py `run_command`): a standard output whose reader
went away or whose device is full, a prompt script that is not UTF-8, a huge prompt in an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from contextforcing.cli import main

PROMPT = "warm room, hold, lights on, black ball"  # the embedded model reads the panorama grammar


def _run(args: list[str], stdout) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "contextforcing.cli", *args]
    return subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, timeout=300)


def _closed_pipe():
    """The write end of a pipe nobody reads any more (`| head -1` after its line, `| true`)."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize(
    "args",
    [["world", "heldout"], ["generate", "--random-init", "--prompt", "p", "--seconds", "1", "--quiet", "--out"]],
    ids=["world heldout | head -1", "generate | true"],
)
def test_a_reader_that_went_away_is_not_an_error(tmp_path, args):
    if args[0] == "generate":
        args = [*args, str(tmp_path / "v.mp4")]
    write = _closed_pipe()
    try:
        proc = _run(args, write)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0, "")  # the job is done; only its report line had no reader
    if args[0] == "generate":
        assert sorted(os.listdir(tmp_path)) == ["v.json", "v.mp4"]


def test_standard_output_on_a_full_device_is_one_line():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        proc = _run(["world", "heldout"], full)
    assert proc.returncode == 2
    assert proc.stderr == "contextforcing: error: cannot write to standard output: No space left on device\n"


def test_a_prompt_script_that_is_not_utf8_is_one_line(tmp_path, capsys):
    script = tmp_path / "p.jsonl"
    script.write_bytes(json.dumps({"at": 0, "prompt": PROMPT}).encode() + b"\n" + b'{"at": 1, "prompt": "caf\xe9"}\n')
    args = ["generate", "--prompts", str(script), "--seconds", "3", "--out", str(tmp_path / "v.mp4")]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"contextforcing: error: prompt script {script} line 2 is not UTF-8 text (byte 0xe9 at offset "
        f"{len(json.dumps({'at': 0, 'prompt': PROMPT})) + 1 + 24}); save it as UTF-8\n"
    )


def test_an_error_does_not_echo_a_huge_prompt(tmp_path, capsys):
    script = tmp_path / "p.jsonl"
    script.write_text(json.dumps({"at": 0, "prompt": "a red ball " * 100_000}) + "\n")  # 1.1 MB
    assert main(["generate", "--prompts", str(script), "--seconds", "3", "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("contextforcing: error: bad panorama prompt 'a red ball") and err.count("\n") == 1
    assert "(1,099,999 characters)" in err and len(err) < 400
