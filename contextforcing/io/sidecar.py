"""A saved video's sidecar read back into typed values: each chunk's `ChunkPlan` and `MemoryUpdate` from its
memory trace (`DecodedChunk.trace`), the prompts and when they took effect, the video's rates. JSON is read
here only; `contextforcing plot` and the live viewer's replay work on what this returns.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from contextforcing.config import VideoConfig, from_dict
from contextforcing.errors import UserError
from contextforcing.memory.plan import TIERS, Attended, ChunkPlan, MemoryUpdate
from contextforcing.memory.spec import MemorySpec, make_spec


@dataclass(frozen=True)
class TracedChunk:
    """One chunk of a saved video: what it attended and what its commit changed, and its prompt."""

    plan: ChunkPlan
    update: MemoryUpdate
    prompt: str


@dataclass(frozen=True)
class SavedVideo:
    """A sidecar's record of how a video was made, typed."""

    path: Path
    video: VideoConfig
    memory: MemorySpec | None  # None: a sidecar without a (readable) memory config
    chunks: tuple[TracedChunk, ...]
    switches: tuple[tuple[int, str], ...]  # (chunk, prompt) of every prompt switch
    seed: int | None
    weights: str

    @property
    def chunk_seconds(self) -> float:
        """Seconds of video per chunk."""
        return self.video.chunk_frames / self.video.latent_fps

    def seconds_of_frame(self, latent_frame: int) -> float:
        return latent_frame / self.video.latent_fps

    @property
    def tau(self) -> float | None:
        """The surprisal threshold of the memory's promotions (None: it takes no surprisal decisions)."""
        if self.memory is None:
            return None
        rule = self.memory.params(self.video.chunk_frames)
        return rule.tau if rule.surprisal else None


def read_plan(entry: dict) -> ChunkPlan:
    """A trace entry's plan. Positions of a frame attended twice are listed in attention order (sink, slow,
    fast); `copies` ([frame, position] pairs) marks the slow tier's own copies (older sidecars without it: every
    slow entry, which is what the tiered layout stores)."""
    current = [int(f) for f in entry["current"]]
    queue = {int(k): list(v) if isinstance(v, list) else [v] for k, v in entry["positions"].items()}
    copies = {tuple(c) for c in entry["copies"]} if "copies" in entry else None
    context = []
    for tier in TIERS:
        frames = [int(f) for f in entry[tier] if not (tier == "fast" and int(f) in current)]
        for frame in frames:
            position = int(queue[frame].pop(0))
            copy = tier == "slow" if copies is None else (frame, position) in copies
            context.append(Attended(tier, frame, position, copy))
    slow_per_layer = entry.get("slow_per_layer")
    return ChunkPlan(
        chunk=int(entry["chunk"]),
        start=current[0],
        frames=len(current),
        context=tuple(context),
        current_positions=tuple(int(queue[f][-1]) for f in current),
        slow_per_layer=None if slow_per_layer is None else tuple(tuple(s) for s in slow_per_layer),
        headings=_frame_values(entry.get("headings")),
        retrieval=_frame_values(entry.get("retrieval")),
    )


def _frame_values(values: dict | None) -> dict[int, float] | None:
    """A {frame: number} map as JSON wrote it (frames as strings)."""
    return None if values is None else {int(f): float(v) for f, v in values.items()}


def read_update(entry: dict) -> MemoryUpdate:
    similarity = entry.get("similarity")
    return MemoryUpdate(
        promoted=tuple(entry["promoted"]),
        slow_evicted=tuple(entry["slow_evicted"]),
        evicted=tuple(entry["evicted"]),
        folded=tuple(tuple(p) for p in entry["folded"]),
        similarity=None if similarity is None else float(similarity),
    )


def read_sidecar(path: str | Path) -> SavedVideo:
    """The sidecar `path` (a video's .json), or a one-line UserError saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sidecar {path} does not exist")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a JSON sidecar ({getattr(err, 'msg', err)})") from None
    return read_record(record, path)


def read_record(record, path: Path) -> SavedVideo:
    """A sidecar already parsed from JSON (`path` names it in errors)."""
    if not isinstance(record, dict) or not record.get("memory_trace"):
        raise UserError(f"{path}: no memory_trace (not the sidecar of a generated video)")
    try:
        return _saved_video(path, record)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"{path}: a memory_trace entry cannot be read ({type(err).__name__}: {err})") from None


def _saved_video(path: Path, record: dict) -> SavedVideo:
    config = record.get("config", {})
    video = from_dict(VideoConfig, config.get("video", {}), where=f"{path} config.video")
    memory = None
    if "memory" in config:
        options = dict(config["memory"])
        memory = make_spec(options.pop("policy"), options)
    switches = tuple((int(s["chunk"]), str(s["prompt"])) for s in record.get("switches", []))
    prompts, chunks = dict(switches), []
    prompt = str(record.get("prompt", ""))
    for entry in record["memory_trace"]:
        plan = read_plan(entry)
        prompt = prompts.get(plan.chunk, prompt)
        chunks.append(TracedChunk(plan, read_update(entry), prompt))
    if any(not math.isfinite(c.update.similarity) for c in chunks if c.update.similarity is not None):
        raise UserError(f"{path}: a similarity in memory_trace is not a finite number")
    return SavedVideo(
        path, video, memory, tuple(chunks), switches, record.get("seed"), str(record.get("weights", "unknown"))
    )
