"""Retrieval memory (`retrieve`): a bounded bank of keyframes, from which each chunk attends the `top_k` most relevant
beside the sink and the fast window, at bounded positions (retrieved frames placed right before the fast frames, as
WorldPlay re-frames retrieved frames close to the chunk). The field's second family of long memory (MemFlow,
Context-as-Memory, WorldMem) on the same engine as the fixed-role caches.

The bank fills like a uniform slow tier (the chunk's last frame every `interval` chunks, FIFO); what a chunk attends
of it is chosen once per chunk, on the host, when the chunk is planned, by a relevance the driver computes
(`ContextMemory._relevance`):

- `view`: how much of the current view a keyframe saw, from the camera headings of a room-anchored model (the
  overlap of the two views on the room's circle: Context-as-Memory's and MemCam's field-of-view overlap);
- `keys`: cosine of a keyframe's pooled first-layer keys with the last committed chunk's (LongLive-RAG's and
  PackForcing's content affinity, read from what the model wrote).

Ties go to the more recent keyframe. The plan records the whole bank with each keyframe's relevance
(`ChunkPlan.retrieval`); the picks are its slow tier.
"""

from __future__ import annotations

from typing import Callable

from contextforcing.memory.policies import TieredPolicy

Relevance = Callable[[list[int], int], list[float]]  # (bank frames, first frame of the chunk) -> relevance of each


class RetrievePolicy(TieredPolicy):
    def __init__(self, params, chunk_frames: int):
        super().__init__(params, chunk_frames)
        self.relevance: Relevance | None = None  # set by the driver
        self.scores: dict[int, float] = {}  # the last plan's bank frames and their relevance

    def _attended_slow(self, candidates: list[int], start: int) -> list[int]:
        scores = [0.0] * len(candidates)
        if self.relevance is not None and candidates:
            scores = self.relevance(candidates, start)
        self.scores = dict(zip(candidates, scores))
        ranked = sorted(range(len(candidates)), key=lambda i: (-scores[i], -candidates[i]))
        picked = sorted(ranked[: self.p.attend_slow])
        return [candidates[i] for i in picked]  # attention order: oldest first
