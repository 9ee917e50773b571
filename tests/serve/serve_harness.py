"""The live viewer's test harness: a real server on a free local port (uvicorn in a thread, the app
`contextforcing serve` runs), a protocol client that plays a tab's part, and headless Chromium's flags."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import uvicorn

from contextforcing.cli.viewer import bind
from contextforcing.pipeline import Pipeline
from contextforcing.serve.access import AccessRules
from contextforcing.serve.app import build_app
from contextforcing.serve.frames import FrameCodec, decode_frames
from contextforcing.serve.messages import ServeLimits

CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Several test windows play at once: none may be throttled as a background tab.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--window-size=1280,1500",
)


class ServerThread:
    """The app on a free 127.0.0.1 port, served by uvicorn in a daemon thread."""

    def __init__(
        self,
        pipe: Pipeline,
        limits: ServeLimits,
        codec: FrameCodec = FrameCodec("png"),
        access: AccessRules = AccessRules(),
    ):
        self.app = build_app(pipe, limits, codec, access=access)
        self.hub = self.app.state.hub
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 20, "the server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def wait_until(condition, timeout: float, message: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (waited {timeout:g} s)")
        time.sleep(interval)


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_chromium(paths: tuple[str, str]):
    """Headless Chromium driven by selenium, with a fresh profile; returns (driver, profile directory)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="cf-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = paths[0]
    return webdriver.Chrome(options=options, service=Service(paths[1])), profile


def js(driver, expression: str):
    return driver.execute_script(f"return {expression}")


def type_prompt(driver, prompt: str) -> None:
    """Type into the page's prompt box and press Enter (Start, or a switch while streaming)."""
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("id", "prompt")
    box.clear()
    box.send_keys(prompt, Keys.ENTER)


@dataclass
class Chunk:
    header: dict
    frames: np.ndarray  # uint8 [n, H, W, 3]
    payload: bytes = b""  # the frames as sent (images back to back)


def unpack_chunk(data: bytes) -> Chunk:
    """A chunk message: its header and its frames decoded from the images they travel as."""
    (length,) = struct.unpack("<I", data[:4])
    header = json.loads(data[4 : 4 + length])
    payload = data[4 + length :]
    assert len(payload) == sum(header["frames"]["sizes"]), "the images are exactly the payload"
    frames = decode_frames(header["frames"]["sizes"], payload)
    assert frames.shape == (header["count"], header["height"], header["width"], 3)
    return Chunk(header, frames, payload)


class PageClient:
    """Speaks the page's protocol over a WebSocket: what a tab sends, without a browser. `chunks` reports each
    chunk played as soon as it arrives (`played=True`), or never (to see the server hold back)."""

    def __init__(self, server: ServerThread):
        from websockets.sync.client import connect

        self.url = server.url
        self._connection = connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None)
        self.ws = self._connection.__enter__()
        hello = self.json()
        assert hello["type"] == "hello"
        self.session = hello["session"]

    def send(self, **message) -> None:
        self.ws.send(json.dumps(message))

    def next(self, timeout: float = 30) -> dict | Chunk:
        message = self.ws.recv(timeout=timeout)
        return json.loads(message) if isinstance(message, str) else unpack_chunk(message)

    def json(self, timeout: float = 30) -> dict:
        message = self.next(timeout)
        assert isinstance(message, dict), "expected a JSON message, got a chunk"
        return message

    def chunks(self, count: int, played: bool = True) -> tuple[list[Chunk], list[dict]]:
        """The next `count` chunks, and the JSON messages that came between them."""
        chunks, messages = [], []
        while len(chunks) < count:
            item = self.next()
            if isinstance(item, Chunk):
                chunks.append(item)
                if played:
                    self.send(type="played", frames=item.header["first_frame"] + item.header["count"])
            else:
                assert item["type"] not in ("error", "ended"), item
                messages.append(item)
        return chunks, messages

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def second_prompt(pipe: Pipeline) -> tuple[str, bool]:
    """A prompt to switch to, and whether to flush: another prompt of the grammar a synthetic-world model reads
    (the panorama world's: the camera pans; the occlusion world's: a blackout); for any other model its example
    prompt again with a flush (a switch that still changes what the memory holds)."""
    from contextforcing.data.world.panorama import parse_panorama_prompt
    from contextforcing.data.world.prompts import parse_prompt

    if pipe.prompt_check is parse_panorama_prompt:
        return pipe.example_prompt.replace("hold", "pan left", 1), False
    if pipe.prompt_check is parse_prompt:
        return "plain warm room, blackout occlusions", False
    return pipe.example_prompt, True


def reference(pipe: Pipeline, count: int, prompt: str | None = None, **stream) -> list:
    """The first `count` chunks of the same stream from the Python API."""
    generation = pipe.stream(prompt or pipe.example_prompt, None, **stream)
    return [next(generation) for _ in range(count)]


def plan_tuples(chunk) -> tuple[list, list]:
    """A chunk's plan as (tier, frame, position, copy) and (frame, position) lists, as the page's rows carry it."""
    context = [(a.tier, a.frame, a.position, a.copy) for a in chunk.plan.context]
    return context, list(zip(chunk.plan.current_frames, chunk.plan.current_positions))
