"""contextforcing: streaming long video generation with a three-tier context memory (Context Forcing).

    import contextforcing as cf
    pipe = cf.Pipeline.from_pretrained()                     # the embedded world model
    video = pipe("warm room, pan left, lights on, black ball", seconds=20)  # frames [T, H, W, 3] uint8
    pipe.save(video, "out.mp4")

Names are imported on first use, so that `import contextforcing` (and the command line's start) does not
pay for torch until something needs it.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "Pipeline": ("contextforcing.pipeline", "Pipeline"),
    "Generation": ("contextforcing.sampling.generation", "Generation"),
    "DecodedChunk": ("contextforcing.sampling.generation", "DecodedChunk"),
    "Video": ("contextforcing.sampling.generation", "Video"),
    "Memory": ("contextforcing.memory.spec", "MemorySpec"),
    "Sampling": ("contextforcing.config", "SamplingConfig"),
    "ChunkPlan": ("contextforcing.memory.plan", "ChunkPlan"),
    "MemoryUpdate": ("contextforcing.memory.plan", "MemoryUpdate"),
    "UserError": ("contextforcing.errors", "UserError"),
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'contextforcing' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
