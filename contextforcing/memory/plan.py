"""What a memory decides for one chunk, as typed values: the plan (what the chunk attends, where) and the
update (what its commit changed). Everything downstream reads these; JSON exists only at the edge
(`to_json`, for sidecars, reports and the live viewer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TIERS = ("sink", "slow", "fast")  # in attention order


@dataclass(frozen=True)
class Attended:
    """One stored latent frame a chunk attends."""

    tier: str  # sink | slow | fast
    frame: int  # absolute latent frame index
    position: int  # the temporal RoPE position this chunk gives it
    copy: bool = False  # a promoted keyframe's own stored copy (slow tier), not the frame's main entry


@dataclass(frozen=True)
class ChunkPlan:
    """What chunk `chunk` (latent frames [start, start + frames)) attends besides itself, in attention order
    (sink, slow, cached fast), and the positions of its own frames.

    With promotion decided per layer, layers may hold different slow frames: `slow_per_layer` lists them
    (None when every layer shares this plan). A memory of a room-anchored model adds each frame's camera
    heading (`headings`)."""

    chunk: int
    start: int
    frames: int
    context: tuple[Attended, ...]
    current_positions: tuple[int, ...]
    slow_per_layer: tuple[tuple[int, ...], ...] | None = None
    headings: dict[int, float] | None = None  # room-anchored model: each frame's camera heading (tokens, sample 0)
    retrieval: dict[int, float] | None = None  # retrieval memory: every bank keyframe and its relevance (picks: slow)

    @property
    def current_frames(self) -> list[int]:
        return list(range(self.start, self.start + self.frames))

    def tier(self, name: str) -> list[int]:
        """Stored frames attended in tier `name` (the chunk's own frames are not stored yet)."""
        return [a.frame for a in self.context if a.tier == name]

    @property
    def positions(self) -> list[int]:
        return [a.position for a in self.context]

    @property
    def context_frames(self) -> list[int]:
        """The stored frames attended, in attention order (a promoted frame's copy lists its frame)."""
        return [a.frame for a in self.context]

    @property
    def attended_frames(self) -> int:
        """Latent frames attended, the chunk itself included."""
        return len(self.context) + self.frames

    def to_json(self) -> dict:
        """The trace entry written to sidecars: tiers as frame lists (`fast` includes the current chunk),
        and every frame's position (a frame attended twice lists both)."""
        positions: dict[str, object] = {}
        for a in self.context:
            key = str(a.frame)
            positions[key] = [positions[key], a.position] if key in positions else a.position
        for frame, p in zip(self.current_frames, self.current_positions):
            positions[str(frame)] = p
        out = {
            "chunk": self.chunk,
            "sink": self.tier("sink"),
            "slow": self.tier("slow"),
            "fast": self.tier("fast") + self.current_frames,
            "current": self.current_frames,
            "positions": positions,
        }
        if self.slow_per_layer is not None:
            out["slow_per_layer"] = [list(s) for s in self.slow_per_layer]
        if self.headings is not None:
            out["headings"] = {str(f): h for f, h in self.headings.items()}
        if self.retrieval is not None:
            out["retrieval"] = {str(f): r for f, r in self.retrieval.items()}
        return out


@dataclass(frozen=True)
class MemoryUpdate:
    """What committing a chunk changed (layer group 0; with per-layer promotion other layers may differ).

    `similarity` is the surprisal signal of the decision, when one was taken (cosine of the mean keys)."""

    promoted: tuple[int, ...] = ()  # frames copied into the slow tier
    slow_evicted: tuple[int, ...] = ()  # slow copies dropped
    evicted: tuple[int, ...] = ()  # frames no longer stored (left the fast window, or overwritten)
    folded: tuple[tuple[int, int], ...] = ()  # (sink frame, evicted frame) EMA pairs
    similarity: float | None = None

    def to_json(self) -> dict:
        return {
            "promoted": list(self.promoted),
            "slow_evicted": list(self.slow_evicted),
            "evicted": list(self.evicted),
            "folded": [list(p) for p in self.folded],
            "similarity": self.similarity,
        }


@dataclass
class CommitChanges:
    """Storage work a commit asks for; frames are absolute latent frame indices."""

    evicted: list[int] = field(default_factory=list)  # stored frames (sink/fast) no longer needed
    promoted: list[int] = field(default_factory=list)  # frames copied into the slow tier
    slow_evicted: list[int] = field(default_factory=list)  # slow copies dropped
    folded: list[tuple[int, int]] = field(default_factory=list)  # (sink frame, evicted frame) EMA pairs


@dataclass(frozen=True)
class RecachePlan:
    """What a prompt switch re-encodes under the new prompt, in one commit pass without a causal mask.

    `frames` (contiguous, oldest first) at `positions` attend each other and `context`; the pass rewrites the
    stored K/V of `kept`, and computes the others (`scratch`: frames no longer stored) only as context."""

    frames: list[int]
    positions: list[int]
    context: tuple[Attended, ...]
    kept: list[int]
    new_sink: list[int] | None = None  # LongLive `global_sink: false`: the recached frames that become the sink

    @property
    def scratch(self) -> list[int]:
        return [f for f in self.frames if f not in self.kept]
