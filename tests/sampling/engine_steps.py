"""The streaming engine driven by hand, one `VideoStream.step` per chunk as `Generation` drives it (without the
codec): the engine's tests compare memories and latents at this level."""

from dataclasses import dataclass

import torch

from contextforcing.memory.plan import ChunkPlan, MemoryUpdate
from contextforcing.sampling.stream import known_in_chunk


@dataclass
class Stepped:
    """One chunk the engine generated."""

    start: int
    latents: torch.Tensor
    plan: ChunkPlan
    update: MemoryUpdate

    def trace(self) -> dict:
        return {**self.plan.to_json(), **self.update.to_json()}


def steps(stream, frames, switches=None, flush=False, known=None, seed=0) -> list[Stepped]:
    """`frames` latent frames, chunk by chunk: the switch due at a chunk (chunk index -> text), the chunk's noise
    and known frames (counted from the stream's first frame), one `step`."""
    generator, first, chunks = torch.Generator().manual_seed(seed), stream.frame, []
    for index in range(-(-frames // stream.chunk_frames)):
        if switches and index in switches:
            stream.switch_prompt(switches[index], flush=flush)
        noise = stream.noise(min(stream.chunk_frames, frames - index * stream.chunk_frames), generator)
        start = stream.frame
        given = known_in_chunk(known, start - first, noise) if known else None
        with torch.no_grad():
            latents = stream.step(noise, generator, known=given)
        chunks.append(Stepped(start, latents, stream.last_plan, stream.last_update))
    return chunks
