"""Fixtures of the live viewer's tests: the embedded model, one server and one headless Chromium for them all."""

from __future__ import annotations

import shutil
import tempfile

import pytest

pytest.importorskip("uvicorn", reason="the [serve] extra is not installed: pip install -e '.[serve]'")

from serve_harness import CHROME_FLAGS, PageClient, ServerThread, chromium_paths  # noqa: E402

from contextforcing.pipeline import Pipeline  # noqa: E402
from contextforcing.serve.session import ServeLimits  # noqa: E402


@pytest.fixture(scope="package")
def pipe() -> Pipeline:
    return Pipeline.from_pretrained()


@pytest.fixture(scope="package")
def server(pipe):
    s = ServerThread(pipe, ServeLimits(max_streams=2, max_seconds=60, lead_chunks=2, panel_rows=6))
    yield s
    s.stop()


@pytest.fixture
def client(server):
    c = PageClient(server)
    yield c
    c.close()


@pytest.fixture(scope="package")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the [test] extra)")
    paths = chromium_paths()
    if paths is None:
        pytest.skip("headless Chromium is not installed: apt-get install -y chromium chromium-driver (.ci/run does)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="cf-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = paths[0]
    driver = webdriver.Chrome(options=options, service=Service(paths[1]))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
