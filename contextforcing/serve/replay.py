"""Replay of a saved video in the viewer: an mp4 and its sidecar, uploaded by the page, played back chunk by
chunk through the same protocol as a live stream, so the memory panel, the surprisal chart and the event log show
what each chunk attended, exactly as the sidecar's trace records it (`io.sidecar.read_record`).

The upload is one POST body: a little-endian uint32 length, the sidecar's JSON, then the mp4's bytes (the same
framing as a chunk message). Frames are decoded once into a `FrameSpool` on disk; `ReplayGeneration` then stands
in for a `Generation` (what `StreamSession` iterates), without a model and without a stream slot.
"""

from __future__ import annotations

import json
import secrets
import struct
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contextforcing.errors import UserError, first_line
from contextforcing.io.sidecar import SavedVideo, read_record
from contextforcing.sampling.generation import DecodedChunk
from contextforcing.sampling.stream import SwitchEvent
from contextforcing.sampling.switches import Prompt
from contextforcing.serve.spool import FrameSpool

# The largest upload taken (sidecar and mp4 together): an mp4 of the toy model is about 0.3 MB a minute.
MAX_REPLAY_BYTES = 512 * 2**20
# Frames decoded and spooled at a time (memory stays flat for a long Wan-sized video).
DECODE_BATCH = 64


@dataclass
class Replay:
    """An uploaded video: its frames on disk, its sidecar typed (plans) and as written (the Download)."""

    id: str
    name: str
    saved: SavedVideo
    record: dict
    spool: FrameSpool
    fps: int

    def frame_ranges(self) -> list[tuple[int, int]]:
        """Each chunk's [first, end) pixel frames: Wan's causal decoder gives the video's first latent frame one
        pixel frame and every other `stride_t` (all of them `stride_t` after an init clip primed the decoder)."""
        video, primed = self.saved.video, self.record.get("init") is not None
        ranges, first = [], 0
        for chunk in self.saved.chunks:
            count = chunk.plan.frames * video.vae_stride_t - (
                0 if primed or chunk.plan.start else video.vae_stride_t - 1
            )
            ranges.append((first, first + count))
            first += count
        return ranges

    def close(self) -> None:
        self.spool.close()


def read_upload(body: bytes) -> Replay:
    """The page's upload (see the module), checked: a readable sidecar and a video whose frame count and rate
    are the sidecar's. Any problem is one UserError line."""
    if len(body) > MAX_REPLAY_BYTES:
        raise UserError(f"the upload is {len(body) / 2**20:.0f} MiB; a replay takes up to {MAX_REPLAY_BYTES >> 20} MiB")
    if len(body) < 4:
        raise UserError("choose a video (.mp4) and its sidecar (.json)")
    (length,) = struct.unpack("<I", body[:4])
    try:
        record = json.loads(body[4 : 4 + length].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"the sidecar is not JSON ({first_line(err)})") from None
    name = str(record.get("name", "the sidecar")) if isinstance(record, dict) else "the sidecar"
    saved = read_record(record.get("record") if isinstance(record, dict) else None, Path(name))
    spool = _spool_video(body[4 + length :])
    try:
        replay = Replay(secrets.token_urlsafe(12), name, saved, record["record"], spool, saved.video.fps)
        ranges = replay.frame_ranges()
        if spool.count != ranges[-1][1]:
            raise UserError(
                f"the video has {spool.count} frames but {name}'s memory trace describes {ranges[-1][1]}: "
                f"choose the video's own sidecar"
            )
    except BaseException:
        spool.close()
        raise
    return replay


def _spool_video(data: bytes) -> FrameSpool:
    import imageio.v2 as imageio

    if not data:
        raise UserError("choose a video (.mp4) together with its sidecar (.json)")
    spool = FrameSpool()
    with tempfile.NamedTemporaryFile(suffix=".mp4", prefix="contextforcing-replay-") as file:
        file.write(data)
        file.flush()
        try:
            reader = imageio.get_reader(file.name, format="FFMPEG")
            batch = []
            for frame in reader:
                batch.append(np.asarray(frame))
                if len(batch) == DECODE_BATCH:
                    spool.append(np.stack(batch))
                    batch = []
            if batch:
                spool.append(np.stack(batch))
            reader.close()
        except Exception as err:  # imageio raises several types for a file that is not a video
            spool.close()
            raise UserError(f"the video cannot be read ({first_line(err)})") from None
    return spool


class ReplayStore:
    """Uploaded replays by id, the newest `keep` of them (older ones' frames are freed)."""

    def __init__(self, keep: int):
        self.keep = keep
        self._replays: OrderedDict[str, Replay] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, replay: Replay) -> None:
        with self._lock:
            self._replays[replay.id] = replay
            while len(self._replays) > self.keep:
                self._replays.popitem(last=False)[1].close()

    def get(self, replay_id) -> Replay:
        with self._lock:
            replay = self._replays.get(replay_id) if isinstance(replay_id, str) else None
        if replay is None:
            raise UserError("no such replay on this server (upload the video and its sidecar again)")
        return replay

    def close(self) -> None:
        with self._lock:
            for replay in self._replays.values():
                replay.close()
            self._replays.clear()


def switch_events(record: dict) -> dict[int, SwitchEvent]:
    """The switches a sidecar's `events` record, by the frame they took effect at (an unreadable one is left out:
    the replay then shows the switch without its re-encoded frames)."""
    events = {}
    for entry in record.get("events", []) if isinstance(record.get("events"), list) else []:
        if isinstance(entry, dict) and entry.get("event") == "switch":
            try:
                event = SwitchEvent.from_json(entry)
            except (KeyError, TypeError, ValueError):
                continue
            events[event.frame] = event
    return events


class ReplayGeneration:
    """A saved video played as a `Generation` (what the viewer's session iterates): its chunks with their plans,
    updates and prompts from the sidecar, its frames from the upload; no model, no prompt switches."""

    def __init__(self, replay: Replay):
        saved = replay.saved
        self.replay, self.seed = replay, saved.seed
        self.prompts = [Prompt(saved.chunks[0].prompt, 0)] + [Prompt(p, c) for c, p in saved.switches]
        self._switches = switch_events(replay.record)
        self.chunks_total = len(saved.chunks)
        self._ranges = replay.frame_ranges()
        self._seconds = list(replay.record.get("chunk_seconds", [])) + [0.0] * len(saved.chunks)
        self._decode = list(replay.record.get("decode_seconds", [])) + [0.0] * len(saved.chunks)
        self.index, self.closed = 0, False

    @property
    def prompt(self) -> str:
        return self.replay.saved.chunks[max(0, self.index - 1)].prompt

    def switch(self, prompt, flush=None) -> int:
        raise UserError("a replay plays a saved video: it takes no prompt switches")

    def close(self) -> None:
        self.closed = True

    def __iter__(self):
        return self

    def __next__(self) -> DecodedChunk:
        if self.closed or self.index >= self.chunks_total:
            raise StopIteration
        traced, (first, end) = self.replay.saved.chunks[self.index], self._ranges[self.index]
        frames = np.array(self.replay.spool.frames(end)[first:end])  # a copy: the mapping is not kept
        switched = any(p.chunk == self.index for p in self.prompts[1:])
        start = traced.plan.start
        chunk = DecodedChunk(
            self.index,
            start,
            traced.prompt,
            frames,
            first,
            torch.empty(0),
            traced.plan,
            traced.update,
            float(self._seconds[self.index]),
            float(self._decode[self.index]),
            switch=self._switches.get(start, SwitchEvent(start, (), False, "window")) if switched else None,
        )
        self.index += 1
        return chunk

    def record(self, chunks, interrupted: bool = False) -> dict:
        """The sidecar as uploaded (a replay's Download is the saved pair again)."""
        return json.loads(json.dumps(self.replay.record))
