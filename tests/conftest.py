import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from contextforcing.config import ModelConfig, VideoConfig

# The memory's independent references (policy_reference, gather_reference, ...) and the engine driven by hand
# (engine_steps) serve tests in other folders too.
sys.path.insert(0, str(Path(__file__).parent / "memory"))
sys.path.insert(0, str(Path(__file__).parent / "sampling"))


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


class SmallDisk:
    """A directory on its own small tmpfs, to run writes into a full disk for real."""

    def __init__(self, path):
        self.path = path

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        """Fill the disk with a filler file until `leave` bytes (rounded to tmpfs pages) are free."""
        filler = self.path / "filler"
        size = (filler.stat().st_size if filler.exists() else 0) + self.free() - leave
        with open(filler, "wb") as f:
            f.truncate(0)
            f.write(b"\0" * max(size, 0))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs at tmp_path/disk. Mounting needs root (and a kernel that lets it mount here), so the
    test skips elsewhere; each full-disk case also has a fake-writer twin that runs everywhere."""
    path = tmp_path / "disk"
    path.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root); the fake-writer twin of this test covers the same path")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
