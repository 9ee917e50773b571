"""The page in a real headless Chromium against a real server: frames play and are the Python API's frames,
the memory panel shows what each chunk's plan says, a switch lands in the event log at a chunk boundary, bad
input is one line in the page, tabs stream independently (and one too many is told busy), a closed tab frees
its stream within a second. A screenshot mid-stream is kept (docs/serve_page.png with CF_UPDATE_DOCS=1)."""

import json
import math
import os
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serve_harness import js, plan_tuples, reference, second_prompt, type_prompt, wait_until

from contextforcing.pipeline import Prompt

DOCS = Path(__file__).resolve().parents[2] / "docs"

READ_FRAME = """
const c = document.getElementById('video');
return [cf.shown, c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];
"""

READ_PANEL = """
return Array.from(document.querySelectorAll('#panel .mrow')).map(row => ({
  chunk: Number(row.dataset.chunk),
  groups: Object.fromEntries(Array.from(row.querySelectorAll('.group')).map(g => [g.dataset.tier,
    Array.from(g.querySelectorAll('.card')).map(c => [Number(c.dataset.frame), Number(c.dataset.position),
                                                      c.dataset.mark || '', c.querySelector('img').src.length > 0])])),
}));
"""


@pytest.fixture
def page(browser, server):
    """The page, freshly loaded in one tab; afterwards every extra tab is closed and every stream freed."""
    browser.get(server.url)
    wait_until(
        lambda: browser.execute_script("return window.cf && cf.info !== null && cf.session !== null"),
        20,
        "the page did not load",
    )
    yield browser
    for handle in browser.window_handles[1:]:
        browser.switch_to.window(handle)
        browser.close()
    browser.switch_to.window(browser.window_handles[0])
    browser.get("about:blank")
    wait_until(lambda: server.hub.status()["sessions"] == 0, 5, "a tab's session outlived it")


def start(driver, prompt: str, seed: int, options: dict | None = None) -> None:
    driver.execute_script("document.getElementById('seed').value = arguments[0];", str(seed))
    for key, value in (options or {}).items():
        driver.execute_script("document.getElementById('opt-' + arguments[0]).value = arguments[1];", key, str(value))
    type_prompt(driver, prompt)


def shown_frame(driver) -> tuple[int, np.ndarray]:
    """The frame on the canvas and its index, read in one go (playback cannot move in between)."""
    index, width, height, rgba = driver.execute_script(READ_FRAME)
    return index, np.array(rgba, np.uint8).reshape(height, width, 4)[..., :3]


def reference_frames(pipe, last_frame: int, **stream) -> np.ndarray:
    video = pipe.preset.video
    chunks = math.ceil((last_frame + 1) / (video.chunk_frames * video.vae_stride_t)) + 1
    return np.concatenate([c.frames for c in reference(pipe, chunks, **stream)])


def wait_shown(driver, frame: int = 0, chunk: int = -1, timeout: float = 40) -> None:
    wait_until(
        lambda: js(driver, f"cf.shown >= {frame} && cf.shownChunk >= {chunk}"),
        timeout,
        f"the page did not play up to frame {frame} / chunk {chunk}",
    )


def test_frames_play_and_are_the_python_api_frames(pipe, page):
    start(page, pipe.example_prompt, seed=11)
    wait_shown(page, frame=4)
    first_index, first = shown_frame(page)
    time.sleep(1.0)
    second_index, second = shown_frame(page)
    assert second_index > first_index and not np.array_equal(first, second)
    expected = reference_frames(pipe, second_index, seed=11)
    assert np.array_equal(first, expected[first_index]) and np.array_equal(second, expected[second_index])
    assert js(page, "document.getElementById('message').textContent") == ""


def test_memory_panel_shows_each_chunks_plan(pipe, page, tmp_path):
    # A tau that promotes at the first decision and at about half of the later ones: all three tiers fill.
    similarities = [c.update.similarity for c in reference(pipe, 10, seed=12) if c.update.similarity is not None]
    tau = math.ceil(max(sorted(similarities)[len(similarities) // 2], math.nextafter(similarities[0], 2.0)) * 1e6) / 1e6
    expected = reference(pipe, 16, seed=12, memory={"tau": tau})
    start(page, pipe.example_prompt, seed=12, options={"tau": repr(tau)})
    wait_shown(page, chunk=9)
    screenshot = tmp_path / "serve_page.png"
    page.save_screenshot(str(screenshot))
    rows = page.execute_script(READ_PANEL)
    assert [r["chunk"] for r in rows] == list(range(rows[0]["chunk"], rows[0]["chunk"] - len(rows), -1))
    assert len(rows) == js(page, "cf.info.panel_rows")
    for row in rows:
        want = expected[row["chunk"]]
        context, current = plan_tuples(want)
        groups = row["groups"]
        for tier in ("sink", "slow", "fast"):
            assert [(f, p) for f, p, _, _ in groups[tier]] == [(f, p) for t, f, p, _ in context if t == tier]
        assert [(f, p) for f, p, _, _ in groups["current"]] == current
        cards = [card for cards in groups.values() for card in cards]
        assert all(has_thumbnail for *_, has_thumbnail in cards), f"chunk {row['chunk']}: a card without a thumbnail"
        promoted = {f for f, _, mark, _ in cards if mark == "promoted"}
        evicted = {f for f, _, mark, _ in cards if mark == "evicted"}
        assert promoted == set(want.update.promoted) and evicted == set(want.update.evicted)
    assert all(rows[0]["groups"][tier] for tier in ("sink", "slow", "fast")), "all three tiers, mid-stream"
    assert any(mark == "entered" for r in rows for cards in r["groups"].values() for _, _, mark, _ in cards)
    stats = js(page, "cf.stats")
    decisions = [s for s in stats if s["similarity"] is not None]
    assert [s["similarity"] for s in decisions] == [
        c.update.similarity for c in expected[: len(stats)] if c.update.similarity is not None
    ]
    assert js(page, "document.querySelectorAll('#surprisal circle').length") == len(decisions)
    assert js(page, "cf.tau") == tau and f"τ = {tau:g}" in js(page, "document.getElementById('surprisal').textContent")
    assert screenshot.stat().st_size > 50_000
    if os.environ.get("CF_UPDATE_DOCS"):
        shutil.copyfile(screenshot, DOCS / "serve_page.png")


def test_a_prompt_switch_lands_in_the_event_log_at_a_chunk_boundary(pipe, page):
    prompt, flush = second_prompt(pipe)
    start(page, pipe.example_prompt, seed=13)
    wait_shown(page, chunk=2)
    if flush:
        page.find_element("css selector", "input[name=switchmode][value=flush]").click()
    type_prompt(page, prompt)
    entry = wait_until(lambda: js(page, "cf.log.find(e => e.kind === 'switch')"), 40, "no switch in the event log")
    at = entry["chunk"]
    assert at == js(page, "cf.metrics.switchChunk") and prompt in entry["text"]
    assert ("flushed" if flush else "kept memory") in entry["text"]
    wait_shown(page, chunk=at)
    index, frame = shown_frame(page)
    video = pipe.preset.video
    first_of_switch = video.pixel_frames_for(at * video.chunk_frames + 1) - 1 - (video.vae_stride_t - 1)
    assert index >= first_of_switch
    expected = reference_frames(pipe, index, seed=13, switches=[Prompt(prompt, at, flush)])
    assert np.array_equal(frame, expected[index]), "the frame after the switch is not the API's with the switch there"
    log = page.find_elements("css selector", "#log li[data-kind=switch]")
    assert len(log) == 1 and log[0].get_attribute("data-chunk") == str(at)


def test_bad_input_shows_one_line_and_a_later_good_prompt_streams(pipe, page):
    bad = {"   ": "empty prompt"}
    unreadable = "not a prompt the model can read at all 123"
    try:
        pipe.check_prompt(unreadable)
    except Exception as err:
        bad[unreadable] = str(err)
    for prompt, message in bad.items():
        type_prompt(page, prompt)
        wait_until(
            lambda: js(page, "document.getElementById('message').textContent") == message,
            10,
            f"the page did not show {message!r}",
        )
        assert js(page, "cf.state") == "idle"
    start(page, pipe.example_prompt, seed=14, options={"slow": -2})
    wait_until(
        lambda: "must not be negative" in js(page, "document.getElementById('message').textContent"),
        10,
        "impossible memory options were not reported",
    )
    start(page, pipe.example_prompt, seed=14, options={"slow": 6})
    wait_shown(page, frame=1)
    assert js(page, "document.getElementById('message').textContent") == ""


def test_two_tabs_stream_independently_and_one_too_many_is_busy(pipe, page, server):
    prompt, _ = second_prompt(pipe)
    tabs = {page.current_window_handle: (pipe.example_prompt, 21)}
    start(page, pipe.example_prompt, seed=21)
    page.switch_to.new_window("tab")
    page.get(server.url)
    wait_until(lambda: js(page, "window.cf && cf.session !== null"), 20, "the second tab did not load")
    tabs[page.current_window_handle] = (prompt, 22)
    start(page, prompt, seed=22)
    frames = {}
    for handle, (text, seed) in tabs.items():
        page.switch_to.window(handle)
        wait_shown(page, frame=14)
        index, frame = shown_frame(page)
        expected = reference_frames(pipe, index, prompt=text, seed=seed)
        assert np.array_equal(frame, expected[index]), f"tab with seed {seed}"
        frames[handle] = index
    assert server.hub.status()["streams"] == 2
    page.switch_to.new_window("tab")
    page.get(server.url)
    wait_until(lambda: js(page, "window.cf && cf.session !== null"), 20, "the third tab did not load")
    type_prompt(page, pipe.example_prompt)
    wait_until(lambda: js(page, "document.getElementById('message').className") == "busy", 10, "no busy message")
    assert "busy" in js(page, "document.getElementById('message').textContent") and js(page, "cf.state") == "idle"
    for handle, index in frames.items():  # both still playing
        page.switch_to.window(handle)
        wait_shown(page, frame=index + 8)


def test_a_closed_tab_frees_its_stream_within_a_second(pipe, page, server):
    page.switch_to.new_window("tab")
    page.get(server.url)
    wait_until(lambda: js(page, "window.cf && cf.session !== null"), 20, "the tab did not load")
    start(page, pipe.example_prompt, seed=31)
    wait_shown(page, frame=1)
    assert status(server) == {"streams": 1, "sessions": 2, "max_streams": 2}
    page.close()
    closed = time.monotonic()
    wait_until(lambda: status(server)["streams"] == 0, 1.0, "the closed tab's stream was not freed within 1 s")
    assert time.monotonic() - closed < 1.0
    page.switch_to.window(page.window_handles[0])


def status(server) -> dict:
    with urllib.request.urlopen(server.url + "api/status", timeout=5) as response:
        return json.load(response)
