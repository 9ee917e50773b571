import sys
from pathlib import Path

import pytest
import torch

from contextforcing.config import ModelConfig, VideoConfig

# The memory's independent references (policy_reference, gather_reference, ...) serve tests in other folders too.
sys.path.insert(0, str(Path(__file__).parent / "memory"))


# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine extra threads make
# them many times slower; benchmarks (not tests) measure threaded speed.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    # head_dim 24 exercises the uneven RoPE split (t=8, h=8, w=8); 2 layers check layer indexing.
    return ModelConfig(dim=48, ffn_dim=96, num_layers=2, num_heads=2, text_dim=20, text_len=7, freq_dim=32)


@pytest.fixture
def tiny_video_cfg() -> VideoConfig:
    return VideoConfig(latent_height=4, latent_width=6, chunk_frames=3)
