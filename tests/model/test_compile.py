"""The cached chunk forward compiles once per kind of pass and never recompiles along a stream.

With the slots view (tests/model/test_view_modes.py) a bounded policy's step has the same shapes from the
first chunk on, and everything that changes from chunk to chunk (positions, slot indices, key mask) is a
tensor. torch.compile(fullgraph=True) then traces one graph per kind of pass (the pass that fills the
text cache, the other denoising passes, the commit pass) and per mask state (some slot masked, or none),
and reuses them for every later chunk. `fullgraph=True` also means no graph break: no host read inside
the forward.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from contextforcing.config import ModelConfig
from contextforcing.memory.spec import make_spec, tier_params
from contextforcing.model.wan import build_model
from contextforcing.sampling.stream import VideoStream

# slow_fast with a promotion every second chunk: masked while it fills (until about chunk 26), then
# unmasked, except on the chunk after each promotion (the promoted frame is still in the fast window).
POLICY, OPTIONS = "slow_fast", {"rule": "uniform", "interval": 2}
WARMUP, CHECKED = 30, 10
# the first pass of the stream (fills the text cache; masked), then (denoising pass, commit pass) x (masked, not)
GRAPHS = 5


def compiled_stream_matches_eager(video, backend: str, tol: float) -> None:
    cfg = ModelConfig(dim=48, ffn_dim=96, num_layers=2, num_heads=2, text_len=7, text_dim=20, freq_dim=32)
    model = build_model(cfg, seed=0)
    text = torch.randn(1, cfg.text_len, cfg.text_dim)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=backend, dynamic=False, fullgraph=True)
    spec = make_spec(POLICY, OPTIONS)
    frames = (WARMUP + CHECKED) * video.chunk_frames
    streams = [VideoStream(m, text, spec, video, max_frames=frames, fixed_shapes=True) for m in (model, compiled)]
    generators = [torch.Generator().manual_seed(0) for _ in streams]
    key_frames, masked, plans = set(), [], []
    with torch.no_grad():
        for chunk in range(WARMUP + CHECKED):
            if chunk == WARMUP:
                assert counters["stats"]["unique_graphs"] == GRAPHS, dict(counters["stats"])
                torch._dynamo.config.error_on_recompile = True  # from here on any recompile raises
            eager, got = (s.step(s.noise(3, g), g) for s, g in zip(streams, generators))
            assert (eager - got).abs().max().item() <= tol, f"chunk {chunk}: compiled output differs from eager"
            key_frames.add(streams[1].memory.key_frames())
            plans.append((streams[0].last_plan, streams[1].last_plan))
            masked.append(streams[1].memory.groups[0].read_frames < streams[1].memory.key_frames())
    assert counters["stats"]["unique_graphs"] == GRAPHS
    assert key_frames == {tier_params(spec, video.chunk_frames).capacity}  # the same shapes from chunk 0 on
    assert all(masked[:20]) and True in masked[WARMUP:] and False in masked[WARMUP:]  # both states checked
    assert all(a == b for a, b in plans)


@pytest.fixture(autouse=True)
def _restore_dynamo():
    yield
    torch._dynamo.config.error_on_recompile = False
    torch._dynamo.reset()


def test_cached_forward_compiles_once(tiny_video_cfg):
    """aot_eager: dynamo plus AOT autograd's functionalization (what inductor sees), no C++ toolchain."""
    compiled_stream_matches_eager(tiny_video_cfg, "aot_eager", tol=1e-6)


@pytest.mark.slow
def test_cached_forward_compiles_once_with_inductor(tiny_video_cfg):
    """Inductor (needs a C++ compiler; a few minutes of compilation on a small CPU)."""
    compiled_stream_matches_eager(tiny_video_cfg, "inductor", tol=1e-5)
