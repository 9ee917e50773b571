"""A stream slot is given back however a stream ends (contextforcing/serve/session.py): the tab closing before
the stream's task ran a step, during the set-up, after chunks, Stop, a failed set-up. After `--max-streams` tabs
that did any of these, a new tab still gets a stream."""

from __future__ import annotations

import asyncio
import threading

import pytest

from contextforcing.errors import UserError
from contextforcing.serve.messages import ServeLimits, StartRequest
from contextforcing.serve.session import StreamHub

MAX_STREAMS = 2


class Tab:
    """A page's end of one session, without a socket: what the server sends it."""

    def __init__(self, hub: StreamHub):
        self.messages: list = []
        self.session = hub.open(self._keep, self._keep)

    async def _keep(self, message) -> None:
        self.messages.append(message)

    def kinds(self) -> list[str]:
        return [m["type"] for m in self.messages if isinstance(m, dict)]


async def _closed_before_the_first_step(hub, tab, pipe):
    await tab.session.start(StartRequest(pipe.example_prompt))
    hub.close(tab.session)  # in the same turn of the event loop: the task is cancelled before it ever ran


async def _closed_during_the_set_up(hub, tab, pipe):
    entered, release = threading.Event(), threading.Event()
    stream = pipe.stream

    def slow_stream(*args, **kwargs):
        entered.set()
        release.wait(30)
        return stream(*args, **kwargs)

    pipe.stream = slow_stream
    try:
        start = asyncio.ensure_future(tab.session.start(StartRequest(pipe.example_prompt)))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        hub.close(tab.session)
        release.set()
        await start
    finally:
        del pipe.stream


async def _closed_after_chunks(hub, tab, pipe):
    await tab.session.start(StartRequest(pipe.example_prompt))
    while sum(isinstance(m, bytes) for m in tab.messages) < 2:
        await asyncio.sleep(0.01)
    hub.close(tab.session)


async def _stopped(hub, tab, pipe):
    await tab.session.start(StartRequest(pipe.example_prompt))
    tab.session.stop()
    while "ended" not in tab.kinds():
        await asyncio.sleep(0.01)


async def _failed_set_up(hub, tab, pipe):
    def broken_stream(*args, **kwargs):
        raise UserError("the set-up failed")

    pipe.stream = broken_stream
    try:
        with pytest.raises(UserError):
            await tab.session.start(StartRequest(pipe.example_prompt))
    finally:
        del pipe.stream


@pytest.mark.parametrize(
    "end", [_closed_before_the_first_step, _closed_during_the_set_up, _closed_after_chunks, _stopped, _failed_set_up]
)
def test_every_way_a_stream_ends_gives_its_slot_back(pipe, end):
    async def scenario():
        hub = StreamHub(pipe, ServeLimits(max_streams=MAX_STREAMS, max_seconds=30))
        try:
            for _ in range(MAX_STREAMS + 1):
                await end(hub, Tab(hub), pipe)
                for _ in range(100):  # the done callbacks of cancelled tasks run on the loop's next turns
                    await asyncio.sleep(0.01)
                    if hub.streams == 0:
                        break
                assert hub.streams == 0, end.__name__
            tab = Tab(hub)  # after --max-streams such tabs, a new one still streams
            await tab.session.start(StartRequest(pipe.example_prompt))
            assert tab.kinds() == ["started"] and hub.streams == 1
            hub.close(tab.session)
        finally:
            hub.shutdown()

    asyncio.run(scenario())
