"""Retrieval memory (`retrieve`): a bounded bank of keyframes, from which each chunk attends the `top_k` most relevant
beside the sink and the fast window, at bounded positions (retrieved frames placed right before the fast frames, as
WorldPlay re-frames retrieved frames close to the chunk). The field's second family of long memory (MemFlow,
Context-as-Memory, WorldMem) on the same engine as the fixed-role caches.

The bank fills like a uniform slow tier (the chunk's last frame every `interval` chunks, FIFO); what a chunk attends
of it is chosen once per chunk, on the host, when the chunk is planned, by its `Relevance` (which the driver keeps
informed of headings, prompts and written keys):

- `view`: how much of the current view a keyframe saw, from the camera headings of a room-anchored model (the
  overlap of the two views on the room's circle: Context-as-Memory's and MemCam's field-of-view overlap);
- `keys`: cosine of a keyframe's pooled first-layer keys with the last committed chunk's (LongLive-RAG's and
  PackForcing's content affinity, read from what the model wrote);
- `text`: cosine of the pooled text embedding of the prompt a keyframe was made under with the current prompt's
  (MemFlow's prompt-guided retrieval): after a prompt switch, frames made under a prompt like the new one.

Ties go to the more recent keyframe. The plan records the whole bank with each keyframe's relevance
(`ChunkPlan.retrieval`); the picks are its slow tier.
"""

from __future__ import annotations

from typing import Callable

import torch

from contextforcing.errors import UserError
from contextforcing.memory.headings import FrameHeadings
from contextforcing.memory.policies import TieredPolicy


class RetrievePolicy(TieredPolicy):
    def __init__(self, params, chunk_frames: int):
        super().__init__(params, chunk_frames)
        self.relevance: Relevance | None = None  # set by the driver, which keeps it informed
        self.scores: dict[int, float] = {}  # the last plan's bank frames and their relevance

    def _attended_slow(self, candidates: list[int], start: int) -> list[int]:
        scores = [0.0] * len(candidates)
        if self.relevance is not None and candidates:
            scores = self.relevance(candidates, start)
        self.scores = dict(zip(candidates, scores))
        ranked = sorted(range(len(candidates)), key=lambda i: (-scores[i], -candidates[i]))
        picked = sorted(ranked[: self.p.attend_slow])
        return [candidates[i] for i in picked]  # attention order: oldest first


def _circular(d: float, period: int) -> float:
    """|d| on a circle of `period` (a room `period` tokens around); plain |d| without one."""
    return abs((d + period / 2) % period - period / 2) if period else abs(d)


def view_relevance(headings: FrameHeadings, frames: list[int], start: int, room: int, width: int) -> list[float]:
    """score=view: the share of the current view (`width` tokens wide, at the heading of frame `start`) that each
    keyframe's view covers, on a room `room` tokens around."""
    now = headings.latest(start)
    return [max(0.0, width - _circular(headings.first_sample(f) - now, room)) / width for f in frames]


def pooled(x: torch.Tensor) -> torch.Tensor:
    """[B, tokens, ...] -> one float vector, pooled over batch and tokens (a chunk's keys, a prompt's embedding)."""
    return x.float().mean(dim=(0, 1)).flatten()


class FrameVectors:
    """One pooled vector per frame (score=keys: its chunk's layer-0 keys; score=text: its prompt's embedding),
    kept while the frame is stored (a bank keyframe) or is of the chunk just written (the next query)."""

    def __init__(self):
        self.by_frame: dict[int, torch.Tensor] = {}

    def remember(self, vector: torch.Tensor, frames: range, stored: set[int]) -> None:
        """`vector` (`pooled`) for each of `frames`; frames neither stored nor of this chunk are forgotten."""
        for f in frames:
            self.by_frame[f] = vector
        self.by_frame = {f: k for f, k in self.by_frame.items() if f in stored or f >= frames[0]}

    def relevance(self, frames: list[int], query: torch.Tensor | None) -> list[float]:
        """Cosine of each frame's vector with `query` (0 for all without one)."""
        if query is None:
            return [0.0] * len(frames)
        bank = torch.stack([self.by_frame[f] for f in frames])
        return torch.cosine_similarity(bank, query[None], dim=1).tolist()  # one host read, at planning


class Relevance:
    """What a retrieval memory ranks its bank by: (bank frames, first frame of the chunk) -> relevance of each, from
    the stored frames' camera headings (`view`) or one pooled vector per frame (`keys`: its chunk's layer-0 keys;
    `text`: the prompt it was made under). The driver tells it what it needs: the prompt, each chunk as it begins,
    each chunk's written keys."""

    def __init__(self, score: str, headings: FrameHeadings | None, room_tokens: int, view_tokens: int):
        if score == "view" and headings is None:
            raise UserError("memory option score=view reads camera headings: it needs a room-anchored model; use keys")
        self.score, self.headings, self.room_tokens, self.view_tokens = score, headings, room_tokens, view_tokens
        self.vectors = FrameVectors()
        self.prompt: torch.Tensor | None = None  # score=text: the current prompt's pooled embedding [D]

    def __call__(self, frames: list[int], start: int) -> list[float]:
        if self.score == "view":
            return view_relevance(self.headings, frames, start, self.room_tokens, self.view_tokens)
        if self.score == "text":
            return self.vectors.relevance(frames, self.prompt)
        return self.vectors.relevance(frames, self.vectors.by_frame.get(start - 1))

    def set_prompt(self, text: torch.Tensor) -> None:
        """The text embedding [B, L, D] the next chunks are made under."""
        if self.score == "text":
            self.prompt = pooled(text.detach())

    def chunk_begins(self, frames: range, stored: Callable[[], set[int]]) -> None:
        """score=text: the chunk's frames are made under the current prompt (`stored()`: the frames the store holds,
        asked only when needed)."""
        if self.score == "text":
            if self.prompt is None:
                raise ValueError("a retrieval by text needs set_prompt(text) before its first chunk")
            self.vectors.remember(self.prompt, frames, stored())

    def chunk_written(self, keys: torch.Tensor, frames: range, stored: Callable[[], set[int]]) -> None:
        """score=keys: the committed chunk's layer-0 keys [B, L, H, D], pooled: the next plan's query, and a bank
        keyframe's key (`stored()`: the frames the store holds before the commit admits the chunk's keyframe)."""
        if self.score == "keys":
            self.vectors.remember(pooled(keys), frames, stored())
