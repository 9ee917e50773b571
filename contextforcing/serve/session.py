"""One browser tab's stream: a `Generation` of the Python API driven chunk by chunk in a worker thread.

The tab talks over one WebSocket (see `app.py`): JSON messages in (start, replay, switch, stop, played), JSON
and one binary message per chunk out. The binary message is a little-endian uint32 header length, the header
(JSON: the chunk, its timings, its memory-panel row, new thumbnails, and `frames`: the image type and each
frame's byte size) and the chunk's frames as images back to back (`frames.FrameCodec`: JPEG by default).

Pacing: the page plays at the video's frame rate and reports how many frames it has shown; the next chunk
is generated only while fewer than `lead_chunks` chunks are waiting to be played, so a prompt switch is
seen within about that many chunks, and Pause (the page stops playing) stops the work soon after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np
import torch

from contextforcing.errors import UserError, first_line, quote
from contextforcing.memory.spec import OPTION_CHOICES, POLICY_OPTIONS, RECACHE_MODES, MemorySpec, make_spec
from contextforcing.pipeline import Pipeline
from contextforcing.sampling.generation import DecodedChunk, Generation
from contextforcing.serve.downloads import DownloadStore, KeptStream, download_stem
from contextforcing.serve.frames import FrameCodec
from contextforcing.serve.memory_view import SurprisalRule, ThumbnailStore, chunk_view, shrink
from contextforcing.serve.messages import ServeLimits, StartRequest, integer, parse_message
from contextforcing.serve.replay import MAX_REPLAY_BYTES, ReplayGeneration, ReplayStore
from contextforcing.serve.spool import FrameSpool

log = logging.getLogger("contextforcing.serve")


def slim(chunk: DecodedChunk) -> DecodedChunk:
    """A chunk without its pixels and latents: what `Generation.record` reads (frame count, plan, timings)."""
    return dataclasses.replace(chunk, frames=np.empty((len(chunk.frames), 0, 0, 3), np.uint8), latents=torch.empty(0))


def pack_chunk(header: dict, frames: np.ndarray, codec: FrameCodec) -> bytes:
    """One chunk as the page reads it: uint32 LE header length, JSON header, the frames as images."""
    sizes, images = codec.encode_frames(frames)
    head = json.dumps({**header, "frames": {"type": codec.mime, "sizes": sizes}}).encode()
    return struct.pack("<I", len(head)) + head + images


def page_info(pipe: Pipeline, limits: ServeLimits) -> dict:
    """What the page needs before Start: the model, the video's rates, an example prompt, every memory
    policy with its options (the trained memory's values for its own policy) and the choices of each."""
    video = pipe.preset.video
    trained = pipe.memory.to_dict()
    policies = {}
    for name in POLICY_OPTIONS:
        options = trained if name == trained["policy"] else make_spec(name).to_dict()
        policies[name] = {k: v for k, v in options.items() if k != "policy"}
    return {
        "model": pipe.weights,
        "preset": pipe.preset_name,
        "example_prompt": pipe.example_prompt,
        "fps": video.fps,
        "chunk_frames": video.chunk_frames,
        "stride_t": video.vae_stride_t,
        "height": video.latent_height * video.vae_stride_hw,
        "width": video.latent_width * video.vae_stride_hw,
        "trained_memory": trained,
        "policies": policies,
        "choices": {k: list(v) for k, v in OPTION_CHOICES.items()},
        "recache": list(RECACHE_MODES),
        "max_streams": limits.max_streams,
        "max_seconds": limits.max_seconds,
        "panel_rows": limits.panel_rows,
        "max_replay_bytes": MAX_REPLAY_BYTES,
    }


def _end_stream(generation: Generation, slot: StreamSlot) -> None:
    """A stream is over: its generation closed and its slot given back (each at most once)."""
    generation.close()
    slot.free()


def switched_at(chunk: DecodedChunk) -> dict | None:
    """The prompt switch that took effect at `chunk`, with the frames it re-encoded (None: no switch there)."""
    if chunk.switch is None:
        return None
    return {"prompt": chunk.prompt, "flush": chunk.switch.flush, "recached": list(chunk.switch.recached)}


class StreamSlot:
    """One of the hub's `max_streams` slots, held by one stream and given back once, however the stream ends."""

    def __init__(self, hub: "StreamHub"):
        self.hub, self.held = hub, True

    def free(self) -> None:
        if self.held:
            self.held = False
            self.hub.streams -= 1


class StreamHub:
    """What every tab shares: the pipeline, the worker threads, the stream slots and the open sessions."""

    def __init__(self, pipe: Pipeline, limits: ServeLimits, codec: FrameCodec = FrameCodec(), keep_downloads: int = 4):
        self.pipe, self.limits, self.codec = pipe, limits.check(), codec.check()
        self.downloads = DownloadStore(keep_downloads)  # closed tabs' streams, still downloadable
        self.replays = ReplayStore(keep_downloads)
        # One more worker than streams: a closed tab's last chunk may still be finishing when a new stream starts.
        self.executor = ThreadPoolExecutor(max_workers=limits.max_streams + 1, thread_name_prefix="cf-stream")
        self.sessions: dict[str, "StreamSession"] = {}
        self.streams = 0

    def open(self, send_json: Callable[[dict], Awaitable], send_bytes: Callable[[bytes], Awaitable]) -> "StreamSession":
        session = StreamSession(self, send_json, send_bytes)
        self.sessions[session.id] = session
        return session

    def close(self, session: "StreamSession") -> None:
        session.close()
        self.sessions.pop(session.id, None)

    def acquire(self) -> "StreamSlot | None":
        """One of the stream slots, or None when all are taken."""
        if self.streams >= self.limits.max_streams:
            return None
        self.streams += 1
        return StreamSlot(self)

    def status(self) -> dict:
        return {"streams": self.streams, "sessions": len(self.sessions), "max_streams": self.limits.max_streams}

    def shutdown(self) -> None:
        for session in list(self.sessions.values()):
            self.close(session)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.downloads.close()
        self.replays.close()


class StreamSession:
    """One tab: at most one running stream at a time, its frames so far (for Download) and its thumbnails."""

    def __init__(
        self, hub: StreamHub, send_json: Callable[[dict], Awaitable], send_bytes: Callable[[bytes], Awaitable]
    ):
        self.id = secrets.token_urlsafe(12)
        self.hub, self._send_json, self._send_bytes = hub, send_json, send_bytes
        self.generation: Generation | None = None
        self.task: asyncio.Task | None = None
        self.spool: FrameSpool | None = None
        self.chunks: list[DecodedChunk] = []  # slim: plans and timings, for the sidecar
        self.store: ThumbnailStore | None = None
        self._lock = threading.Lock()  # the worker appends what a download snapshots, and a close frees
        self._switches: list[tuple[str, bool]] = []
        self._played = 0
        self._frames_sent = 0
        self._wake = asyncio.Event()
        self._stop = False
        self.closed = False
        self.stem = "contextforcing-stream"  # the downloads' name (`downloads.download_stem`), set at Start
        self._holds_slot = False  # a live stream holds one of the server's stream slots; a replay does not

    # -- messages from the page ------------------------------------------------------------------------
    async def receive(self, text: str) -> None:
        """One message from the page; bad input is answered with a one-line error, never raised."""
        try:
            message = parse_message(text)
            if not isinstance(message, dict):
                raise UserError("a message must be a JSON object")
            await self._dispatch(message)
        except UserError as err:
            await self.send({"type": "error", "message": str(err)})
        except ValueError as err:
            await self.send({"type": "error", "message": f"unreadable message: {first_line(err)}"})
        except Exception as err:  # a bug: logged with its traceback; the page and the server go on
            log.exception("message %.80r failed", text)
            await self.send({"type": "error", "message": f"internal error: {first_line(err)}"})

    async def _dispatch(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "start":
            await self.start(StartRequest.from_json(message, self.hub.limits))
        elif kind == "switch":
            self.switch(message.get("prompt"), bool(message.get("flush", False)))
            await self.send({"type": "switch_queued", "prompt": message["prompt"].strip()})
        elif kind == "replay":
            await self.start_replay(self.hub.replays.get(message.get("replay")))
        elif kind == "stop":
            self.stop()
        elif kind == "played":
            self._played = max(self._played, integer(message.get("frames", 0), "played frames"))
            self._wake.set()
        else:
            raise UserError(f"unknown message type {quote(str(kind))}")

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def start(self, request: StartRequest) -> None:
        if self.running:
            raise UserError("a stream is already running in this tab: Stop it first")
        pipe = self.hub.pipe
        pipe.check_prompt(request.prompt)
        # Impossible options, or a memory the machine cannot hold, fail here: before a slot is taken.
        memory = pipe.stream_options(request.memory, None, request.seconds).memory
        slot = self.hub.acquire()
        if slot is None:
            await self.send(
                {
                    "type": "busy",
                    "message": f"busy: {self.hub.limits.max_streams} stream(s) already "
                    f"running (the server's --max-streams); try again when one ends",
                }
            )
            return
        task = None
        try:
            task = await self._launch(request, memory, slot)
        finally:
            if task is None:  # no stream task owns the slot: an error, or the tab went away during the set-up
                slot.free()

    async def _launch(self, request: StartRequest, memory: MemorySpec, slot: StreamSlot) -> asyncio.Task | None:
        """Set the stream up (in a worker thread), tell the page, and start the task that runs it; the task frees
        the stream slot when it ends, however it ends (cancelled before its first step included)."""
        pipe, loop = self.hub.pipe, asyncio.get_running_loop()
        generation = await loop.run_in_executor(
            self.hub.executor,
            lambda: pipe.stream(
                request.prompt,
                request.seconds,
                seed=request.seed,
                memory=memory,
                flush_on_switch=request.flush,
                recache=request.recache,
            ),
        )
        if self.closed:  # the tab went away while the stream was being set up
            generation.close()
            return None
        self._reset(generation, download_stem(generation.prompt, request.seed, time.time()))
        self._holds_slot = True
        video = pipe.preset.video
        rule = SurprisalRule.of(memory, video.chunk_frames)
        await self.send(
            {
                "type": "started",
                "session": self.id,
                "download": self.stem,
                "prompt": generation.prompt,
                "seed": request.seed,
                "memory": memory.to_dict(),
                "tau": None if rule is None else rule.tau,
                "flush": request.flush,
                "recache": request.recache,
                "fps": video.fps,
            }
        )
        self.task = loop.create_task(self._run(slot))
        # A task cancelled before its first step never runs `_run`'s `finally`; its done callback always runs.
        self.task.add_done_callback(lambda _: _end_stream(generation, slot))
        return self.task

    async def start_replay(self, replay) -> None:
        """Play a saved video (`replay.Replay`) as a stream: its frames and its sidecar's plans, no model."""
        if self.running:
            raise UserError("a stream is already running in this tab: Stop it first")
        generation = ReplayGeneration(replay)
        self._reset(generation, download_stem(generation.prompts[0].text, replay.saved.seed, time.time(), True))
        memory = replay.saved.memory
        await self.send(
            {
                "type": "started",
                "replay": replay.name,
                "session": self.id,
                "download": self.stem,
                "prompt": generation.prompts[0].text,
                "seed": replay.saved.seed,
                "memory": {"policy": "unknown"} if memory is None else memory.to_dict(),
                "tau": replay.saved.tau,
                "flush": False,
                "recache": None,
                "fps": replay.fps,
            }
        )
        self.task = asyncio.get_running_loop().create_task(self._run())

    def _reset(self, generation: Generation, stem: str) -> None:
        self._free_spool()
        self.generation, self.stem = generation, stem
        self.spool = FrameSpool()
        self.chunks = []
        video, codec = self.hub.pipe.preset.video, self.hub.codec
        self.store = ThumbnailStore(video.vae_stride_t, self.hub.limits.panel_rows, lambda f: codec.data_url(shrink(f)))
        self._switches, self._played, self._frames_sent, self._stop = [], 0, 0, False
        self._holds_slot = False

    def switch(self, prompt, flush: bool) -> None:
        """Queue a prompt switch; it takes effect at the next chunk boundary."""
        if not self.running:
            raise UserError("no stream is running: press Start")
        if getattr(self.generation, "replay", None) is not None:
            self.generation.switch(prompt)  # refused: a replay plays what was saved
        self.hub.pipe.check_prompt(prompt)
        self._switches.append((prompt.strip(), flush))

    def stop(self) -> None:
        """End the stream after the chunk in progress; its frames stay for Download."""
        self._stop = True
        self._wake.set()

    def close(self) -> None:
        """The tab is gone: stop at once (a chunk in progress finishes in its thread, unseen) and free it all.

        The references to the stream's state are dropped here, not left to the garbage collector: the cancelled
        task's traceback holds this session in a reference cycle that only a full collection would free."""
        self.closed = True
        if self.task is not None:
            self.task.cancel()
        if self.generation is not None:
            self.generation.close()
        kept = self._kept()
        if kept is not None:
            self.hub.downloads.keep(self.id, kept)  # the spool now belongs to the kept stream
        else:
            self._free_spool()
        with self._lock:
            self.generation, self.store, self.chunks, self.spool = None, None, [], None

    def _kept(self) -> "KeptStream | None":
        """What stays downloadable after the tab closes: its frames so far and their sidecar (None: no frame)."""
        with self._lock:
            count = 0 if self.spool is None else self.spool.count
        if not count or getattr(self.generation, "replay", None) is not None:  # a replay's files are the user's
            return None
        frames, record = self.snapshot()
        return KeptStream(self.spool, len(frames), record, self.stem)

    def _free_spool(self) -> None:
        with self._lock:
            if self.spool is not None:
                self.spool.close()

    async def send(self, message: dict) -> None:
        await self._deliver(self._send_json, message)

    async def _deliver(self, send, payload) -> None:
        if self.closed:
            return
        try:
            await send(payload)
        except Exception as err:  # the socket went away between our check and the send
            log.debug("send failed: %s", first_line(err))

    # -- the stream ------------------------------------------------------------------------------------
    async def _run(self, slot: StreamSlot | None = None) -> None:
        generation, reason = self.generation, "finished"
        limit = self.hub.limits.max_seconds * self.hub.pipe.preset.video.fps
        try:
            while True:
                await self._room_for_next_chunk()
                if self._stop:
                    reason = "stopped"
                    break
                if self._holds_slot and self._frames_sent >= limit:  # a replay plays its whole video
                    reason = "limit"
                    break
                await self._apply_switches(generation)
                payload = await asyncio.get_running_loop().run_in_executor(
                    self.hub.executor, self._next_chunk, generation, self.store
                )
                if payload is None:
                    break
                await self._deliver(self._send_bytes, payload)
        except asyncio.CancelledError:
            # Only `close()` cancels: the tab is gone. Not re-raised, so that no exception keeps this frame (and
            # the stream it references) alive in a reference cycle until the next full garbage collection.
            reason = "closed"
        except UserError as err:
            reason = "error"
            await self.send({"type": "error", "message": str(err)})
        except Exception as err:  # a bug: logged with its traceback; the page and the server go on
            reason = "error"
            log.exception("stream %s failed", self.id)
            await self.send({"type": "error", "message": f"internal error: {first_line(err)}"})
        finally:
            if slot is not None:
                _end_stream(generation, slot)
            else:  # a replay holds no stream slot
                generation.close()
            if reason != "closed":
                await self.send({"type": "ended", "reason": reason, "frames": self._frames_sent})

    async def _room_for_next_chunk(self) -> None:
        video = self.hub.pipe.preset.video
        lead = self.hub.limits.lead_chunks * video.chunk_frames * video.vae_stride_t
        while not self._stop and self._frames_sent - self._played >= lead:
            self._wake.clear()
            await self._wake.wait()

    async def _apply_switches(self, generation: Generation) -> None:
        while self._switches:
            prompt, flush = self._switches.pop(0)
            try:
                chunk = generation.switch(prompt, flush)
            except UserError as err:
                await self.send({"type": "error", "message": str(err)})
                continue
            await self.send({"type": "switch", "prompt": prompt, "flush": flush, "chunk": chunk})

    def _next_chunk(self, generation: Generation, store: ThumbnailStore) -> bytes | None:
        """In the worker thread: the next chunk, kept (spool, sidecar, thumbnails) and packed for the page."""
        chunk = next(generation, None)
        with self._lock:
            if chunk is None or self.closed:
                return None
            self.spool.append(chunk.frames)
            self.chunks.append(slim(chunk))
        new, dropped = store.add(chunk)
        header = self._header(chunk, store)
        header.update(thumbs={str(t.frame): t.png for t in new}, drop=dropped)
        self._frames_sent += len(chunk.frames)
        return pack_chunk(header, chunk.frames, self.hub.codec)

    def _header(self, chunk: DecodedChunk, store: ThumbnailStore) -> dict:
        video = self.hub.pipe.preset.video
        n, height, width = chunk.frames.shape[:3]
        compute = chunk.seconds + chunk.decode_seconds
        return {
            "type": "chunk",
            "index": chunk.index,
            "start": chunk.start,
            "latent_frames": chunk.plan.frames,
            "first_frame": chunk.first_frame,
            "count": n,
            "height": height,
            "width": width,
            "prompt": chunk.prompt,
            "switched": switched_at(chunk),
            "seconds": chunk.seconds,
            "decode_seconds": chunk.decode_seconds,
            "video_seconds": n / video.fps,
            "rtf": (n / video.fps) / compute if compute > 0 else None,
            "memory": chunk_view(chunk, store, video),
        }

    # -- download ------------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[np.ndarray, dict]:
        """The frames so far and their sidecar, as one consistent pair (the stream may go on meanwhile)."""
        if self.generation is None or self.spool is None:
            raise UserError("nothing streamed yet in this tab")
        replay = getattr(self.generation, "replay", None)
        if replay is not None:  # a replay's download is the saved pair, whole
            return replay.spool.frames(replay.spool.count), self.generation.record([])
        with self._lock:
            count, chunks = self.spool.count, list(self.chunks)
            record = json.loads(json.dumps(self.generation.record(chunks, interrupted=self.running)))
        # The record names every switch the generation has taken; keep those of the chunks in this snapshot.
        latent = record["latent_frames"]
        record["switches"] = [s for s in record["switches"] if s["chunk"] < len(chunks)]
        record["events"] = [e for e in record["events"] if e.get("frame", 0) < latent]
        return self.spool.frames(count), record

    def write_mp4(self, directory: Path) -> Path:
        """Download mp4: the frames so far through the CLI's paired atomic writer (mp4 + sidecar)."""
        from contextforcing.io.video import save_video

        frames, record = self.snapshot()
        if not len(frames):
            raise UserError("no frames yet: wait for the first chunk")
        return save_video(directory / f"{self.stem}.mp4", frames, record["fps"], record)
