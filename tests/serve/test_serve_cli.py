"""`contextforcing serve`'s own input: bad flags are one line and exit code 2, before any model is loaded; the
real command serves the page and stops on Ctrl-C."""

import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from contextforcing.cli import main


@pytest.fixture
def taken_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-streams", "0"], "--max-streams must be at least 1"),
        (["--lead-chunks", "0"], "--lead-chunks must be at least 1"),
        (["--max-seconds", "0"], "--max-seconds must be positive"),
        (["--max-seconds", "inf"], "--max-seconds must be positive"),
        (["--port", "70000"], "--port must be in 0..65535"),
        (["--host", "192.0.2.1"], "cannot listen on 192.0.2.1"),  # TEST-NET: no interface of this machine has it
        (["--port", "0", "--lora", "x.safetensors"], "--lora"),
        (["--port", "0", "--preset", "tiny"], "preset 'tiny' needs --random-init"),
        (["--port", "0", "--device", "tpu"], "unknown --device"),
        (["--quality", "0"], "--quality must be in 1..100, got 0"),
        (["--keep-downloads", "-1"], "--keep-downloads must be >= 0"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(capsys, args, message):
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("contextforcing: error: ") and message in err, err


def test_a_taken_port_is_one_line(capsys, taken_port):
    assert main(["serve", "--port", str(taken_port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{taken_port}" in err


def test_a_missing_extra_names_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the [serve] extra were not installed
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[serve] extra" in err and "pip install" in err


def test_the_command_serves_the_page_and_stops_on_ctrl_c():
    # As from a terminal: Ctrl-C's default handler, even when this test run was started with SIGINT ignored (a
    # background job of a script), which the command would inherit.
    as_from_a_terminal = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = ['contextforcing', 'serve', '--port', '0']; runpy.run_module('contextforcing.cli', run_name='__main__')"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", as_from_a_terminal],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "serving embedded:" in line and "http://127.0.0.1:" in line, line + process.stderr.read()
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert "<canvas" in response.read().decode()
        with urllib.request.urlopen(url + "api/info", timeout=10) as response:
            assert b'"example_prompt"' in response.read()
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=20)
    finally:
        process.kill()
    assert code == 130 and process.stderr.read().strip().splitlines()[-1] == "contextforcing: interrupted"
