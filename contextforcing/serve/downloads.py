"""What a tab's Download gives: an mp4 and its sidecar under one name that says what they are
(`contextforcing-20261206-201533-warm-room-hold-seed11.mp4` / `.json`), and streams kept for download after
their tab closed, while the server runs (the newest `keep` of them; their frames stay on disk, not in memory).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

# Characters of the prompt kept in a download's name (a name, not a record: the sidecar has the whole prompt).
NAME_PROMPT_CHARS = 40


def download_stem(prompt: str, seed: int | None, started: float, replay: bool = False) -> str:
    """`contextforcing-YYYYMMDD-HHMMSS-<prompt words>-seed<seed>` (local time of the stream's start)."""
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:NAME_PROMPT_CHARS].rstrip("-") or "stream"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    kind = "replay-" if replay else ""
    return f"contextforcing-{kind}{stamp}-{words}" + ("" if seed is None else f"-seed{seed}")


@dataclass
class KeptStream:
    """A closed tab's stream: its frames (the spool, on disk) and sidecar, for /download/{id}.mp4 and .json."""

    spool: object  # session.FrameSpool
    count: int
    record: dict
    stem: str

    def frames(self) -> np.ndarray:
        return self.spool.frames(self.count)

    def close(self) -> None:
        self.spool.close()


class DownloadStore:
    """Closed tabs' streams by session id, the newest `keep` of them (older ones are freed as new ones come)."""

    def __init__(self, keep: int):
        self.keep_count = keep
        self._streams: OrderedDict[str, KeptStream] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, session_id: str, stream: KeptStream) -> None:
        if self.keep_count < 1:
            stream.close()
            return
        with self._lock:
            self._streams[session_id] = stream
            while len(self._streams) > self.keep_count:
                self._streams.popitem(last=False)[1].close()

    def get(self, session_id: str) -> KeptStream | None:
        with self._lock:
            return self._streams.get(session_id)

    def close(self) -> None:
        with self._lock:
            for stream in self._streams.values():
                stream.close()
            self._streams.clear()
