"""The one training loop on the debug stage: exact resume, NaN guard, config errors, hooks and logs."""

import debug_stage
import pytest
import torch
from conftest import train, weights

from contextforcing.errors import UserError
from contextforcing.training.checkpoint import list_checkpoints
from contextforcing.training.registry import register_stage
from contextforcing.training.run_config import load_train_config, save_resolved
from contextforcing.training.trainer import NonFiniteError

# Accumulation, per-rank noise, two groups and an EMA starting mid-run: every piece of state resume must restore.
RUN = (
    "trainer.max_steps=5",
    "trainer.accumulation=2",
    "trainer.ema_start=2",
    "stage.noise=0.1",
    "trainer.checkpoint_every=3",
)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_after_crash_replays_exactly(tmp_path):
    full = train(tmp_path / "full", *RUN)
    with pytest.raises(RuntimeError, match="simulated crash at step 4"):
        train(tmp_path / "cut", *RUN, "stage.crash_at_step=4")
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step_000003"]
    resumed = train(tmp_path / "cut", *RUN)  # rerunning the same command resumes
    assert resumed.steps == 2 and resumed.final_step == 5
    assert resumed.losses == full.losses[3:]
    _same(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    _same(weights(tmp_path / "full", ema=True), weights(tmp_path / "cut", ema=True))
    assert train(tmp_path / "cut", *RUN).steps == 0  # complete: nothing left to do


def test_extending_max_steps_continues(tmp_path):
    full = train(tmp_path / "full", "trainer.max_steps=4")
    train(tmp_path / "part", "trainer.max_steps=2")
    rest = train(tmp_path / "part", "trainer.max_steps=4")
    assert rest.losses == full.losses[2:]
    _same(weights(tmp_path / "full"), weights(tmp_path / "part"))


@pytest.mark.parametrize(
    "option, message",
    [
        ("stage.nan_loss_at_step=5", "non-finite generator loss at step 5"),
        ("stage.nan_grad_at_step=5", "non-finite generator gradient norm at step 5"),
    ],
)
def test_non_finite_stops_and_keeps_last_good_checkpoint(tmp_path, option, message):
    with pytest.raises(NonFiniteError) as err:
        train(tmp_path, "trainer.max_steps=8", "trainer.checkpoint_every=2", "stage.critic=false", option)
    assert str(err.value) == message
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002", "step_000004"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_unknown_keys_are_one_line_errors(tmp_path):
    cases = {
        "trainer.max_stepz=3": "max_stepz",
        "stage.lrr=0.1": "lrr",
        "optimizer.lr=0.1": "optimizer",
    }
    for override, key in cases.items():
        with pytest.raises(UserError, match=key) as err:
            load_train_config("debug", None, [override])
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not of the form key=value"):
        load_train_config("debug", None, ["trainer.max_steps"])
    with pytest.raises(UserError, match="unknown training stage 'nope'"):
        load_train_config("nope", None, [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: 3\n  colour: red\n")
    with pytest.raises(UserError, match="colour"):
        load_train_config("debug", bad, [])


def test_config_file_overrides_and_resolved_copy(tmp_path):
    path = tmp_path / "debug.yaml"
    path.write_text(f"trainer:\n  run_dir: {tmp_path / 'run'}\n  max_steps: 7\nstage:\n  lr: 0.001\n")
    cfg = load_train_config("debug", path, ["trainer.max_steps=9", "stage.critic=false"])
    assert (cfg.trainer.max_steps, cfg.stage.lr, cfg.stage.critic) == (9, 0.001, False)
    again = load_train_config("debug", save_resolved(cfg), [])
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(UserError, match="must be a number"):
        load_train_config("debug", None, ["trainer.max_steps=lots"])
    with pytest.raises(UserError, match="max_steps must be >= 1"):
        load_train_config("debug", None, ["trainer.max_steps=0"])


class OtherStage(debug_stage.DebugStage):
    name = "other"


register_stage("other", debug_stage.DebugOptions, lambda options, build: OtherStage(options, build))


def test_a_stage_refuses_another_stages_run_dir(tmp_path):
    train(tmp_path, "trainer.max_steps=1")
    with pytest.raises(UserError) as err:
        train(tmp_path, "trainer.max_steps=2", stage="other")
    assert str(err.value).startswith(f"run directory {tmp_path} belongs to stage 'debug', not 'other'")
    assert "\n" not in str(err.value)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000001"]


def test_logs_samples_and_mixed_precision(tmp_path):
    result = train(
        tmp_path,
        "trainer.max_steps=2",
        "trainer.sample_every=1",
        "trainer.mixed_precision=true",
        "trainer.activation_checkpointing=true",
    )
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in result.losses)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000001.txt", "step_000002.txt"]
    assert (tmp_path / "config.yaml").is_file()


def test_wandb_asked_but_missing_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail even where it is installed
    with pytest.raises(UserError, match="wandb is not installed"):
        train(tmp_path, "trainer.max_steps=1", "trainer.wandb=true")


def test_loss_falls_when_overfitting(tmp_path):
    result = train(
        tmp_path,
        "trainer.max_steps=12",
        "stage.samples=1",
        "stage.lr=0.01",
        "stage.critic=false",
        "trainer.checkpoint_every=0",
    )
    assert result.losses[-1]["generator"] < 0.5 * result.losses[0]["generator"]


def test_cli_train_with_config_then_overrides(tmp_path, capsys):
    from train_worker import main as cli

    path = tmp_path / "debug.yaml"
    path.write_text("trainer:\n  max_steps: 5\nstage:\n  critic: false\n")
    run = tmp_path / "run"
    assert cli(["train", "debug", "--config", str(path), f"trainer.run_dir={run}", "trainer.max_steps=1"]) == 0
    assert "debug: step 1/1" in capsys.readouterr().err
    assert cli(["train", "debug", "--config", str(path), f"trainer.run_dir={run}", "trainer.max_stepz=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contextforcing: error: unknown trainer option(s) max_stepz") and "\n" not in err


def test_lr_schedule_warmup_then_cosine_values():
    from contextforcing.training.run_config import TrainerConfig

    cfg = TrainerConfig(lr_warmup=4, lr_schedule="cosine", lr_decay_steps=10, lr_min_ratio=0.2).validate()
    assert [cfg.lr_factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cfg.lr_factor(4) == pytest.approx(1.0)  # the decay starts where the warm-up ends
    assert cfg.lr_factor(9) == pytest.approx(0.2 + 0.8 * 0.5)  # half way down the cosine
    assert cfg.lr_factor(14) == pytest.approx(0.2) and cfg.lr_factor(1000) == pytest.approx(0.2)
    assert TrainerConfig().lr_factor(123) == 1.0  # constant, no warm-up: the configured lr
    with pytest.raises(UserError, match="lr_decay_steps"):
        TrainerConfig(lr_schedule="cosine").validate()


SCHEDULE = ("trainer.lr_warmup=2", "trainer.lr_schedule=cosine", "trainer.lr_decay_steps=3", "trainer.lr_min_ratio=0.5")


def test_trainer_uses_the_schedule_and_resume_continues_it_exactly(tmp_path):
    full = train(tmp_path / "full", *RUN, *SCHEDULE)
    base = 1e-4  # debug stage lr
    expected = [base * f for f in (0.5, 1.0, 1.0, 0.875, 0.625)]  # cos(pi/3), cos(2 pi/3)
    assert [r["generator"] for r in full.lrs] == pytest.approx(expected)
    with pytest.raises(RuntimeError, match="simulated crash at step 4"):
        train(tmp_path / "cut", *RUN, *SCHEDULE, "stage.crash_at_step=4")
    resumed = train(tmp_path / "cut", *RUN, *SCHEDULE)
    assert [r["generator"] for r in resumed.lrs] == pytest.approx(expected[3:])
    _same(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    flat = train(tmp_path / "flat", *RUN)
    assert not torch.equal(
        weights(tmp_path / "flat")["blocks.0.ffn.0.weight"], weights(tmp_path / "full")["blocks.0.ffn.0.weight"]
    )
    assert [r["generator"] for r in flat.lrs] == pytest.approx([base] * 5)
