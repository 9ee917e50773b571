"""A run directory survives its failures: one trainer at a time, Ctrl-C saves, broken checkpoints fall back, a
full disk keeps the last checkpoint, a resume keeps its config, and bad settings stop before RUN is made."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import WORKER, torchrun, train, weights
from omegaconf import OmegaConf

from contextforcing.errors import Interrupted, UserError
from contextforcing.training import checkpoint
from contextforcing.training.checkpoint import list_checkpoints
from contextforcing.training.config import check_resume_config, load_train_config, save_resolved

FAST = ("stage.critic=false",)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _steps(run) -> list[str]:
    return [p.name for p in list_checkpoints(run)]


def test_a_second_trainer_is_refused_naming_the_holder_and_ctrl_c_saves_the_first(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, str(WORKER), "train", "debug", f"trainer.run_dir={run}", "trainer.max_steps=100000", *FAST],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "tb").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # RUN/tb appears when the training loop starts
        with pytest.raises(UserError) as err:
            train(run, "trainer.max_steps=3", *FAST)
        assert str(err.value).startswith(f"run directory {run} is in use by pid {first.pid} on {socket.gethostname()}")
        first.send_signal(signal.SIGINT)  # the first trainer stops after its step, with a checkpoint
        stderr = first.communicate(timeout=120)[1]
    finally:
        first.kill()
    assert first.returncode == 130
    assert "contextforcing: interrupted; saved checkpoint step" in stderr.splitlines()[-1]
    saved = int(_steps(run)[-1].split("_")[1])
    assert saved >= 1 and stderr.splitlines()[-1].endswith("rerun the same command to resume")


def test_ctrl_c_saves_a_checkpoint_and_the_resumed_run_replays_exactly(tmp_path):
    common = (
        "trainer.max_steps=6",
        "trainer.ema_start=1",
        "stage.noise=0.1",
        "trainer.checkpoint_every=0",
    )  # critic too
    full = train(tmp_path / "full", *common)
    with pytest.raises(KeyboardInterrupt) as err:
        train(tmp_path / "cut", *common, "stage.interrupt_at_step=2")  # SIGINT while step 2 runs
    assert isinstance(err.value, Interrupted)
    assert (
        str(err.value)
        == f"saved checkpoint step 3 in {tmp_path / 'cut' / 'checkpoints'}; rerun the same command to resume"
    )
    assert _steps(tmp_path / "cut") == ["step_000003"]
    resumed = train(tmp_path / "cut", *common)
    assert resumed.steps == 3 and resumed.losses == full.losses[3:]
    _same(weights(tmp_path / "full", ema=True), weights(tmp_path / "cut", ema=True))


def test_ctrl_c_under_torchrun_saves_every_ranks_part(tmp_path):
    run = tmp_path / "run"
    proc = torchrun(
        "train", "debug", f"trainer.run_dir={run}", "trainer.max_steps=200", "stage.interrupt_at_step=1", *FAST
    )  # rank 0 sends SIGINT to torchrun, which forwards it to both workers
    assert proc.returncode != 0
    lines = re.findall(r"contextforcing: interrupted; saved checkpoint step \d+ in \S+", proc.stderr)
    assert len(lines) == 2 and lines[0] == lines[1], proc.stderr[-3000:]  # both ranks stopped at the same step
    (step_dir,) = list_checkpoints(run)
    assert {"rank_00000.pt", "rank_00001.pt", "__0_0.distcp", "__1_0.distcp"} <= set(os.listdir(step_dir))
    step = int(step_dir.name.split("_")[1])
    assert 2 <= step < 200 and train(run, f"trainer.max_steps={step + 1}", *FAST).steps == 1


def _truncate_shard(step_dir):
    shard = step_dir / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard


def _scramble_metadata(step_dir):
    path = step_dir / ".metadata"
    path.write_bytes(bytes(255 - b for b in path.read_bytes()))  # same size, not a DCP header any more
    return path


def _break_meta_json(step_dir):
    (step_dir / "meta.json").write_text("{ not json")
    return step_dir / "meta.json"


@pytest.mark.parametrize("damage", [_truncate_shard, _scramble_metadata, _break_meta_json])
def test_a_broken_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys, damage):
    common = ("trainer.max_steps=4", "trainer.checkpoint_every=2", *FAST)
    train(tmp_path / "full", *common)
    run = tmp_path / "run"
    train(run, *common)
    broken = damage(list_checkpoints(run)[-1])
    capsys.readouterr()
    reference, _ = checkpoint.generator_state(tmp_path / "full")
    exported, which = checkpoint.generator_state(run)  # export reads the one before, leaving the broken one
    assert which.endswith("of step_000002") and broken.exists()
    assert f"warning: checkpoint step_000004 is broken: {broken}" in capsys.readouterr().err
    assert not all(torch.equal(exported[k], reference[k]) for k in reference)
    resumed = train(run, *common)  # resume moves it aside and replays steps 3 and 4
    err = capsys.readouterr().err
    assert f"warning: checkpoint step_000004 is broken: {broken}" in err and "moved to" in err
    assert resumed.steps == 2 and (run / "checkpoints" / ".broken_step_000004").is_dir()
    _same(weights(tmp_path / "full"), weights(run))


def test_no_readable_checkpoint_is_one_line_naming_the_broken_file(tmp_path):
    train(tmp_path, "trainer.max_steps=1", *FAST)
    shard = _truncate_shard(list_checkpoints(tmp_path)[-1])
    for action in (lambda: checkpoint.generator_state(tmp_path), lambda: train(tmp_path, "trainer.max_steps=2", *FAST)):
        with pytest.raises(UserError) as err:
            action()
        assert str(err.value).startswith(f"no checkpoint of {tmp_path} can be") and str(shard) in str(err.value)
        assert "\n" not in str(err.value)


def test_a_full_disk_during_a_save_keeps_the_last_checkpoint_and_resume_works(tmp_path, monkeypatch):
    common = ("trainer.max_steps=4", "trainer.checkpoint_every=2", *FAST)
    train(tmp_path / "full", *common)
    real, calls = checkpoint.dcp.save, []

    def save_until_the_disk_fills(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint.dcp, "save", save_until_the_disk_fills)
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        train(run, *common)
    assert str(err.value).startswith(
        f"cannot save checkpoint step 4 in {run / 'checkpoints'}: No space left on device ("
    )
    assert str(err.value).endswith("step_000002 is kept, rerun to resume from it")
    assert sorted(os.listdir(run / "checkpoints")) == ["step_000002"]
    monkeypatch.setattr(checkpoint.dcp, "save", real)
    assert train(run, *common).steps == 2
    _same(weights(tmp_path / "full"), weights(run))


def test_a_real_full_disk_during_a_save_keeps_the_last_checkpoint(tmp_path, small_disk):
    common = ("trainer.checkpoint_every=2", *FAST)  # about 2 MB per checkpoint
    train(tmp_path / "full", "trainer.max_steps=4", *common)
    run = small_disk.path / "run"
    train(run, "trainer.max_steps=2", *common)
    small_disk.fill(leave=256 * 1024)
    with pytest.raises(UserError, match="cannot save checkpoint step 4 .* free\\); step_000002 is kept"):
        train(run, "trainer.max_steps=4", *common)
    assert sorted(os.listdir(run / "checkpoints")) == ["step_000002"]
    (small_disk.path / "filler").unlink()
    assert train(run, "trainer.max_steps=4", *common).steps == 2
    _same(weights(tmp_path / "full"), weights(run))


def test_a_resume_refuses_other_settings_and_logs_the_allowed_ones(tmp_path, capsys):
    train(tmp_path, "trainer.max_steps=2", *FAST)
    saved = (tmp_path / "config.yaml").read_text()
    for change, listed in (
        ("stage.lr=0.01", "stage.lr 0.0001 -> 0.01"),
        ("stage.critic=true", "stage.critic False -> True"),
        ("trainer.accumulation=2", "trainer.accumulation 1 -> 2"),
    ):
        with pytest.raises(UserError) as err:
            train(tmp_path, "trainer.max_steps=3", *FAST, change)
        assert f"run directory {tmp_path} has checkpoints of another config: {listed};" in str(err.value)
        assert "\n" not in str(err.value) and (tmp_path / "config.yaml").read_text() == saved
    capsys.readouterr()
    assert train(tmp_path, "trainer.max_steps=3", "trainer.log_every=5", *FAST).steps == 1
    assert (
        f"contextforcing: resuming {tmp_path} with trainer.log_every 1 -> 5, trainer.max_steps 2 -> 3"
        in capsys.readouterr().err
    )
    assert OmegaConf.load(tmp_path / "config.yaml").trainer.max_steps == 3


@pytest.mark.parametrize("stage", ["teacher", "dmd", "cdmd"])
def test_an_unchanged_config_with_tuples_resumes(tmp_path, stage):
    # the DMD stages' betas and denoising steps are tuples in memory and lists in config.yaml
    cfg = load_train_config(stage, None, [f"trainer.run_dir={tmp_path}"])
    save_resolved(cfg)
    assert check_resume_config(cfg) == []
    changed = load_train_config(stage, None, [f"trainer.run_dir={tmp_path}", "trainer.max_steps=7"])
    assert check_resume_config(changed) == [f"trainer.max_steps {cfg.trainer.max_steps} -> 7"]


@pytest.mark.parametrize("saved, same, other", [(False, "per_chunk", "shared"), (True, "shared", "per_chunk")])
def test_a_run_saved_with_the_old_exit_option_resumes_under_its_new_name(tmp_path, saved, same, other):
    """`same_exit_across_chunks` became `exit_step`: a run directory saved before resumes when the exit rule is
    the same, and is refused when it changed."""
    cfg = load_train_config("dmd", None, [f"trainer.run_dir={tmp_path}", f"stage.exit_step={same}"])
    save_resolved(cfg)
    text = (tmp_path / "config.yaml").read_text().replace(f"exit_step: {same}", f"same_exit_across_chunks: {saved}")
    (tmp_path / "config.yaml").write_text(text)
    assert "exit_step" not in text and check_resume_config(cfg) == []
    changed = load_train_config("dmd", None, [f"trainer.run_dir={tmp_path}", f"stage.exit_step={other}"])
    with pytest.raises(UserError, match=f"stage.exit_step '{same}' -> '{other}'"):
        check_resume_config(changed)


def test_bad_settings_stop_before_the_run_directory_is_made(tmp_path):
    path = tmp_path / "scalar.yaml"
    path.write_text("trainer: 5\n")
    with pytest.raises(UserError, match=f"config file {path}: trainer: must be a mapping of options, got 5"):
        load_train_config("debug", path, ["trainer.max_steps=3"])
    with pytest.raises(UserError, match=r"trainer.seed must be in \[0, 2\*\*64\)"):
        load_train_config("debug", None, [f"trainer.seed={2**64}"])
    with pytest.raises(UserError, match=r"stage \(teacher\).optimizer: lr must be a positive number, got -1.0"):
        load_train_config("teacher", None, ["stage.optimizer.lr=-1"])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="trainer.device=cuda but no CUDA device is available"):
            train(tmp_path / "run", "trainer.device=cuda")
        assert not (tmp_path / "run").exists()


def test_an_optimizer_torch_refuses_is_one_line(tmp_path):
    with pytest.raises(UserError, match="optimizer of group 'generator': Invalid learning rate: -1.0"):
        train(tmp_path, "stage.lr=-1", *FAST)
