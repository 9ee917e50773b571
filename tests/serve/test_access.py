"""Who may use the viewer (contextforcing/serve/access.py): only requests for the server's own names, and streams
only for its own page (or an origin the user allowed): a web page elsewhere cannot open streams on it."""

from __future__ import annotations

import base64
import http.client
import os

import pytest
from serve_harness import ServerThread

from contextforcing.cli import main
from contextforcing.serve.access import AccessRules
from contextforcing.serve.messages import ServeLimits


def _request(port: int, path: str, host: str | None = None, origin: str | None = None, upgrade: bool = False) -> int:
    """The status of one request with these Host and Origin headers (a WebSocket handshake when `upgrade`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        if origin is not None:
            conn.putheader("Origin", origin)
        if upgrade:
            conn.putheader("Upgrade", "websocket")
            conn.putheader("Connection", "Upgrade")
            conn.putheader("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode())
            conn.putheader("Sec-WebSocket-Version", "13")
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_page_of_another_origin_cannot_open_a_stream(server):
    port = server.port
    assert _request(port, "/ws", origin="http://evil.example", upgrade=True) == 403
    assert _request(port, "/ws", origin=f"http://evil.example:{port}", upgrade=True) == 403
    assert _request(port, "/ws", origin="null", upgrade=True) == 403  # a file:// page or a sandboxed frame
    assert _request(port, "/ws", origin=f"http://127.0.0.1:{port}", upgrade=True) == 101  # the viewer's own page
    assert _request(port, "/ws", upgrade=True) == 101  # no Origin: not a browser page (a script, a test client)


def test_requests_for_other_host_names_are_refused(server):
    port = server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert _request(port, "/api/info", host=host) == 200, host
    # A name pointed at 127.0.0.1 by its owner (DNS rebinding): same address, another site.
    assert _request(port, "/api/info", host=f"evil.example:{port}") == 403
    assert _request(port, "/", host=f"evil.example:{port}") == 403
    origin = f"http://evil.example:{port}"
    assert _request(port, "/ws", host=f"evil.example:{port}", origin=origin, upgrade=True) == 403


def test_the_allow_lists_widen_for_remote_use(pipe):
    access = AccessRules.for_address("127.0.0.1", ["Lab.Example."], ["http://proxy.example:8080"])
    server = ServerThread(pipe, ServeLimits(max_streams=1, max_seconds=10), access=access)
    try:
        port = server.port
        assert _request(port, "/api/info", host=f"lab.example:{port}") == 200
        assert _request(port, "/api/info", host=f"other.example:{port}") == 403
        assert (
            _request(port, "/ws", host=f"lab.example:{port}", origin=f"http://lab.example:{port}", upgrade=True) == 101
        )
        assert _request(port, "/ws", origin="http://PROXY.example:8080", upgrade=True) == 101
        assert _request(port, "/ws", origin="http://proxy.example:8081", upgrade=True) == 403
    finally:
        server.stop()
    anyone = AccessRules.for_address("0.0.0.0", ["*"], ["*"])
    assert anyone.refusal("anything:1", "http://anywhere") is None


@pytest.mark.parametrize(
    "host, allowed",
    [("127.0.0.1:7860", True), ("[::1]:7860", True), ("LOCALHOST.", True), ("192.0.2.7:7860", False), (None, False)],
)
def test_host_names_are_compared_without_port_case_or_final_dot(host, allowed):
    assert (AccessRules.for_address("127.0.0.1").refusal(host, None) is None) == allowed


def test_the_bound_address_is_one_of_the_servers_names():
    assert AccessRules.for_address("192.0.2.7").refusal("192.0.2.7:7860", None) is None
    assert AccessRules.for_address("0.0.0.0").refusal("192.0.2.7:7860", None) is not None  # every interface: none


def test_a_bad_allowed_origin_is_one_line(capsys):
    assert main(["serve", "--port", "0", "--allow-origin", "lab.example"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "contextforcing: error: --allow-origin 'lab.example' must look like http://HOST[:PORT] (or * for any)\n"
    )
