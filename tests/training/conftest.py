import os
import subprocess
import sys
from pathlib import Path

import debug_stage  # noqa: F401  (registers the "debug" stage for in-process tests)
import pytest

from contextforcing.training.export import generator_state
from contextforcing.training.run_config import load_train_config
from contextforcing.training.trainer import run_training

WORKER = Path(__file__).with_name("train_worker.py")


def train(run_dir: Path, *overrides: str, stage: str = "debug"):
    """One in-process training run of the debug stage (no process group) into `run_dir`."""
    cfg = load_train_config(stage, None, [f"trainer.run_dir={run_dir}", "trainer.log_every=1", *overrides])
    return run_training(cfg)


def weights(run_dir: Path, ema: bool = False):
    return generator_state(run_dir, use_ema=ema)[0]


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """The worker under `torchrun --standalone` with `nproc` gloo processes on CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(WORKER),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def trainer_args():
    return train
