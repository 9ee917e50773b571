"""A run directory survives its failures: one trainer at a time, Ctrl-C, SIGTERM and SIGHUP save, broken
checkpoints fall back while unreadable ones and ones of another model are refused without renaming anything, a
run whose checkpoints were all set aside starts over only with --restart, a full disk keeps the last checkpoint,
a resume keeps its config, and bad settings stop before RUN is made."""

import json
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
from contextforcing.training import checkpoint, export
from contextforcing.training.checkpoint import list_checkpoints
from contextforcing.training.run_config import check_resume_config, load_train_config, save_resolved

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
    reference, _ = export.generator_state(tmp_path / "full")
    exported, which = export.generator_state(run)  # export reads the one before, leaving the broken one
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
    for action in (lambda: export.generator_state(tmp_path), lambda: train(tmp_path, "trainer.max_steps=2", *FAST)):
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


def _tree(run) -> list[str]:
    return sorted(os.listdir(run / "checkpoints"))


def _strip_config(step_dir) -> None:
    """The checkpoint as an older version saved it: its meta.json without the config."""
    meta = json.loads((step_dir / "meta.json").read_text())
    del meta["config"]
    (step_dir / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("recorded", [True, False], ids=["config in meta.json", "older checkpoint"])
def test_a_checkpoint_of_another_model_is_refused_naming_both_and_nothing_is_renamed(tmp_path, recorded):
    run = tmp_path / "run"
    train(run, "trainer.max_steps=2", "trainer.checkpoint_every=1", *FAST)
    (run / "config.yaml").unlink()  # a run directory of an older version: nothing but the checkpoints to compare
    if not recorded:
        for step_dir in list_checkpoints(run):
            _strip_config(step_dir)
    before = _tree(run)
    with pytest.raises(UserError) as err:
        train(run, "trainer.max_steps=3", "trainer.checkpoint_every=1", "stage.dim=64", *FAST)
    message = str(err.value)
    assert message.startswith(f"checkpoint {run / 'checkpoints' / 'step_000002'} does not fit this run (Size mismatch")
    assert "torch.Size([48, 16, 1, 2, 2]) and current: torch.Size([64, 16, 1, 2, 2])" in message
    assert "\n" not in message
    if recorded:
        assert "it was saved with another config (checkpoint -> this run): stage.dim 48 -> 64;" in message
    else:
        assert "its config is not recorded" in message
    assert message.endswith("give this one a new trainer.run_dir (nothing was renamed)")
    assert _tree(run) == before and not (run / "config.yaml").exists()
    assert train(run, "trainer.max_steps=3", "trainer.checkpoint_every=1", *FAST).steps == 1  # resumes from step 2


def test_a_checkpoint_of_other_groups_is_refused(tmp_path):
    train(tmp_path, "trainer.max_steps=1", *FAST)
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(UserError, match=r"does not fit this run \(it trains groups generator, this run critic, gen"):
        train(tmp_path, "trainer.max_steps=2", "stage.critic=true")
    assert _tree(tmp_path) == ["step_000001"]


def _deny_meta(monkeypatch, step_dir):
    real = checkpoint.read_meta

    def read_meta(path):
        if path == step_dir:
            raise PermissionError(13, "Permission denied", str(path / "meta.json"))
        return real(path)

    monkeypatch.setattr(checkpoint, "read_meta", read_meta)
    return step_dir / "meta.json"


def _deny_shards(monkeypatch, step_dir):
    from torch.distributed.checkpoint.filesystem import FileSystem

    real = FileSystem.create_stream

    def create_stream(self, path, mode):
        if mode == "rb" and str(path).endswith(".distcp") and str(step_dir) in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(self, path, mode)

    monkeypatch.setattr(FileSystem, "create_stream", create_stream)
    return step_dir / "__0_0.distcp"


@pytest.mark.parametrize("deny", [_deny_meta, _deny_shards])
def test_a_checkpoint_the_os_will_not_read_is_not_renamed(tmp_path, monkeypatch, deny):
    common = ("trainer.max_steps=4", "trainer.checkpoint_every=2", *FAST)
    train(tmp_path / "full", *common)
    run = tmp_path / "run"
    train(run, "trainer.max_steps=2", *common[1:])
    path = deny(monkeypatch, list_checkpoints(run)[-1])
    with pytest.raises(UserError) as err:
        train(run, *common)
    assert str(err.value) == (
        f"cannot read checkpoint step_000002: {path}: Permission denied; nothing was renamed: make it readable and rerun"
    )
    assert _tree(run) == ["step_000002"]
    monkeypatch.undo()
    assert train(run, *common).steps == 2  # once readable, the run goes on from where it was
    _same(weights(tmp_path / "full"), weights(run))


def test_a_run_whose_checkpoints_were_all_set_aside_starts_over_only_with_restart(tmp_path, capsys):
    from train_worker import main as cli

    common = ("trainer.checkpoint_every=1", *FAST)
    train(tmp_path, "trainer.max_steps=2", *common)
    saved = (tmp_path / "config.yaml").read_text()
    for step_dir in list_checkpoints(tmp_path):
        _truncate_shard(step_dir)
    with pytest.raises(UserError, match="no checkpoint of .* can be loaded: .*; rerun with --restart to train"):
        train(tmp_path, "trainer.max_steps=3", *common)  # the first run sets them aside...
    assert _tree(tmp_path) == [".broken_step_000001", ".broken_step_000002"]
    capsys.readouterr()
    args = ["train", "debug", f"trainer.run_dir={tmp_path}", "trainer.max_steps=3", *common]
    assert cli(args) == 2  # ... and the next one does not quietly retrain them from step 0
    err = capsys.readouterr().err
    assert err == (
        f"contextforcing: error: run directory {tmp_path} has no checkpoint to resume from: .broken_step_000001, "
        f".broken_step_000002 in {tmp_path / 'checkpoints'} were set aside as broken; rerun with --restart to train "
        "from step 0 (they stay where they are)\n"
    )
    assert (tmp_path / "config.yaml").read_text() == saved
    assert cli([*args, "--restart"]) == 0
    assert "warning: --restart: training" in capsys.readouterr().err
    assert _tree(tmp_path) == [".broken_step_000001", ".broken_step_000002", *(f"step_00000{i}" for i in (1, 2, 3))]
    assert cli([*args[:3], "trainer.max_steps=4", *common, "--restart"]) == 0  # requeued as is: it resumes
    assert "step 4/4 (1 steps" in capsys.readouterr().err


def _signalled_run(run, signal_name: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(WORKER), "train", "debug", f"trainer.run_dir={run}", "trainer.max_steps=6"]
    cmd += ["stage.interrupt_at_step=2", f"stage.interrupt_signal={signal_name}", "trainer.checkpoint_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, *extra, *FAST], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_save_a_checkpoint_like_ctrl_c(tmp_path, name):
    proc = _signalled_run(tmp_path / "cut", name)
    assert proc.returncode == 128 + signal.Signals[name], proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1] == (
        f"contextforcing: interrupted by {name}; saved checkpoint step 3 in {tmp_path / 'cut' / 'checkpoints'}; "
        "rerun the same command to resume"
    )
    full = train(tmp_path / "full", "trainer.max_steps=6", "trainer.checkpoint_every=0", *FAST)
    resumed = train(tmp_path / "cut", "trainer.max_steps=6", "trainer.checkpoint_every=0", *FAST)
    assert resumed.steps == 3 and resumed.losses == full.losses[3:]
    _same(weights(tmp_path / "full"), weights(tmp_path / "cut"))


@pytest.mark.parametrize("name", ["SIGTERM", pytest.param("SIGHUP", marks=pytest.mark.slow)])
def test_sigterm_under_torchrun_saves_every_ranks_part(tmp_path, name):
    run = tmp_path / "run"
    proc = torchrun(
        "train",
        "debug",
        f"trainer.run_dir={run}",
        "trainer.max_steps=200",
        "stage.interrupt_at_step=1",
        f"stage.interrupt_signal={name}",
        *FAST,
    )  # rank 0 sends the signal to torchrun (as a job scheduler would), which forwards it to both workers
    assert proc.returncode != 0
    lines = re.findall(rf"contextforcing: interrupted by {name}; saved checkpoint step \d+ in \S+", proc.stderr)
    assert len(lines) == 2 and lines[0] == lines[1], proc.stderr[-3000:]
    (step_dir,) = list_checkpoints(run)
    assert {"rank_00000.pt", "rank_00001.pt", "__0_0.distcp", "__1_0.distcp"} <= set(os.listdir(step_dir))
    step = int(step_dir.name.split("_")[1])
    assert 2 <= step < 200 and train(run, f"trainer.max_steps={step + 1}", *FAST).steps == 1
