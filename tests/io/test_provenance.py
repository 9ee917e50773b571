"""Every generated video's sidecar says where it came from: the package version, the checkout's git commit (and
whether it had uncommitted changes), and the command line (the CLI's words, or the Python process's argv)."""

import json
import shlex
import subprocess
import sys

import contextforcing as cf
from contextforcing.cli import main
from contextforcing.io import provenance

PROMPT = "warm room, hold, lights on, black ball"


def test_a_generate_sidecar_records_version_commit_and_command(tmp_path):
    out = tmp_path / "v.mp4"
    argv = ["generate", "--prompt", PROMPT, "--seconds", "1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    record = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert record["version"] == cf.__version__ and record["command"] == shlex.join(["contextforcing", *argv])
    head = subprocess.run(["git", "-C", str(provenance.CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert record["commit"] == head.stdout.strip() and len(record["commit"]) == 40
    assert isinstance(record["dirty"], bool)


def test_the_python_api_records_the_scripts_argv_and_an_install_no_commit(monkeypatch, tmp_path):
    pipe = cf.Pipeline.from_pretrained(device="cpu")
    assert pipe(PROMPT, seconds=1).record["provenance"]["command"] == shlex.join(sys.argv)
    monkeypatch.setattr(provenance, "CHECKOUT", tmp_path)  # a package installed from a wheel: no .git beside it
    provenance.git_commit.cache_clear()
    try:
        record = pipe(PROMPT, seconds=1).record["provenance"]
    finally:
        provenance.git_commit.cache_clear()
    assert record["commit"] is None and record["dirty"] is None and record["version"] == cf.__version__
