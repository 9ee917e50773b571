"""scripts/trace_chunk_path.py: what it counts, and the chunk path held at ceilings so that it cannot grow unnoticed
(as tests/test_layout.py holds file and function sizes)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import trace_chunk_path  # noqa: E402

# (files, functions) of `generate` (3 s of the embedded model) and of one chunk, as the CHANGELOG records them.
# A change that lengthens a path on purpose raises its ceiling here and says so in the CHANGELOG.
CLI_CEILING = (31, 262)
CHUNK_CEILING = (13, 94)


def test_the_chunk_path_is_traced_and_stays_within_its_ceilings(tmp_path):
    tracer = trace_chunk_path.trace_generate(3.0, tmp_path / "traced.mp4")
    chunk = trace_chunk_path.union(tracer.chunks)
    assert len(tracer.chunks) == 4  # 3 s of video at 16 fps are 12 latent frames: 4 chunks of 3
    for one in tracer.chunks:  # every chunk steps the engine, reads the memory per layer and commits
        names = {name for _, name in one.functions}
        assert {"VideoStream.step", "MemoryPass.keys_values", "ContextMemory.commit"} <= names
    assert chunk.functions <= tracer.path.functions
    assert not any(name == "load_embedded" for _, name in tracer.path.calls)  # loading is left out
    for label, path, (files, functions) in (("CLI", tracer.path, CLI_CEILING), ("chunk", chunk, CHUNK_CEILING)):
        assert len(path.files) <= files, f"the {label} path enters {len(path.files)} files (ceiling {files})"
        assert len(path.functions) <= functions, (
            f"the {label} path runs {len(path.functions)} functions (ceiling {functions})"
        )
