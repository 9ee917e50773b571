"""FSDP2 on 2 gloo CPU processes through torchrun: same result as one process with the same global batch, the
same shared draws on both ranks and each rank's own stream its own."""

import json

import pytest
import torch
from conftest import torchrun, train, weights

from contextforcing.training.checkpoint import list_checkpoints, read_meta


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_fsdp_two_ranks_match_one_process_and_resume(tmp_path):
    fsdp, single = tmp_path / "fsdp", tmp_path / "single"
    common = ["trainer.ema_start=1", "trainer.checkpoint_every=0", "stage.record_draws=true"]
    # 2 ranks x 1 micro-batch, interrupted after 2 steps (sharded checkpoint), then resumed to 4 steps.
    _ok(torchrun("train", "debug", f"trainer.run_dir={fsdp}", "trainer.max_steps=2", *common))
    _ok(torchrun("train", "debug", f"trainer.run_dir={fsdp}", "trainer.max_steps=4", *common))
    train(single, "trainer.max_steps=4", "trainer.accumulation=2", *common)

    assert read_meta(list_checkpoints(fsdp)[-1])["world_size"] == 2
    for ema in (False, True):
        a, b = weights(fsdp, ema), weights(single, ema)  # the sharded checkpoint is read back whole
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    draws = [json.loads((fsdp / f"draws_rank{r}.json").read_text()) for r in (0, 1)]
    shared = [[d[:4] for d in rank] for rank in draws]  # step, micro and the shared draws: the same on every rank
    assert shared[0] == shared[1] and len(shared[0]) == 4  # steps 2, 3 x (generator, critic) after the resume
    assert all(a[4] != b[4] for a, b in zip(*draws))  # each rank's own stream differs


@pytest.mark.slow
def test_fsdp_mixed_precision_with_activation_checkpointing_runs(tmp_path):
    run = tmp_path / "mp"
    _ok(
        torchrun(
            "train",
            "debug",
            f"trainer.run_dir={run}",
            "trainer.max_steps=2",
            "trainer.mixed_precision=true",
            "trainer.activation_checkpointing=true",
        )
    )
    assert all(torch.isfinite(v).all() for v in weights(run).values())
