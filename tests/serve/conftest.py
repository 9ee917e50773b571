"""Fixtures of the live viewer's tests: the embedded model, one server and one headless Chromium for them all."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("uvicorn", reason="the [serve] extra is not installed: pip install -e '.[serve]'")

from serve_harness import PageClient, ServerThread, chromium_paths, start_chromium  # noqa: E402

from contextforcing.pipeline import Pipeline  # noqa: E402
from contextforcing.serve.frames import FrameCodec  # noqa: E402
from contextforcing.serve.messages import ServeLimits  # noqa: E402


@pytest.fixture(scope="package")
def pipe() -> Pipeline:
    return Pipeline.from_pretrained()


@pytest.fixture(scope="package")
def server(pipe):
    s = ServerThread(pipe, ServeLimits(max_streams=2, max_seconds=60, lead_chunks=2, panel_rows=6))
    yield s
    s.stop()


@pytest.fixture(scope="package")
def jpeg_server(pipe):
    """The server as `contextforcing serve` starts it by default: frames as JPEG (the `server` fixture sends PNG,
    so that the page's pixels can be compared with the Python API's exactly)."""
    s = ServerThread(pipe, ServeLimits(max_streams=2, max_seconds=60, lead_chunks=2, panel_rows=6), FrameCodec())
    yield s
    s.stop()


@pytest.fixture
def client(server):
    c = PageClient(server)
    yield c
    c.close()


@pytest.fixture(scope="package")
def browser():
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the [test] extra)")
    paths = chromium_paths()
    if paths is None:
        pytest.skip("headless Chromium is not installed: apt-get install -y chromium chromium-driver (.ci/run does)")
    driver, profile = start_chromium(paths)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
