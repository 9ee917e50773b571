"""The DCP checkpoint manager in one process (no process group) and `export`."""

import dataclasses
import json

import debug_stage
import pytest
import torch
import torch.nn as nn
from conftest import train, weights
from train_worker import main as cli

from contextforcing.errors import UserError
from contextforcing.model.checkpoints import load_model
from contextforcing.training.checkpoint import CheckpointManager, ModelOptimizer, TrainState, list_checkpoints
from contextforcing.training.ema import EMA


def _trained(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, decay=0.9)
    for step in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        ema.update(step)
    return model, opt, ema


def test_save_load_round_trip_without_process_group(tmp_path):
    model, opt, ema = _trained(0)
    manager = CheckpointManager(tmp_path, "debug", keep_last=2)
    manager.claim()
    for step in (1, 2, 3):
        parts = {"generator": ModelOptimizer(model, opt), "ema": ema, "train": TrainState("debug", step, 10 * step)}
        manager.save(step, parts, {"rng": torch.get_rng_state(), "mine": step}, {"groups": ["generator"]})
    (tmp_path / "checkpoints" / ".tmp_step_000009").mkdir()  # debris of a killed save: never "latest"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002", "step_000003"]

    fresh, fresh_opt, fresh_ema = _trained(1)
    state = TrainState("debug")
    per_rank = manager.load(
        manager.latest(), {"generator": ModelOptimizer(fresh, fresh_opt), "ema": fresh_ema, "train": state}
    )
    assert (state.step, state.data_position, per_rank["mine"]) == (3, 30, 3)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.state.values(), fresh_opt.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert fresh_ema.initialized and all(torch.equal(ema.shadow[k], fresh_ema.shadow[k]) for k in ema.shadow)
    meta = json.loads((manager.latest() / "meta.json").read_text())
    assert (meta["stage"], meta["step"], meta["world_size"]) == ("debug", 3, 1)


def test_checkpoint_of_another_stage_is_refused(tmp_path):
    model, opt, ema = _trained(0)
    CheckpointManager(tmp_path, "dmd").save(1, {"train": TrainState("dmd", 1)}, {}, {})
    with pytest.raises(UserError, match="belongs to stage 'dmd', not 'cdmd'"):
        CheckpointManager(tmp_path, "cdmd").claim()


def test_ema_follows_the_decay_rule():
    model = nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.5, start=1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(0)  # before start: ignored
    assert not ema.initialized
    ema.update(1)  # first update at start: copy
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(2)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 2.0))


def test_export_writes_loadable_ema_safetensors(tmp_path):
    run = tmp_path / "run"
    train(run, "trainer.max_steps=3", "trainer.ema_start=1", "trainer.ema_decay=0.5")
    out = tmp_path / "ema.safetensors"
    assert cli(["export", str(run), str(out)]) == 0
    loaded = load_model(out, debug_stage.TINY).state_dict()
    expected = weights(run, ema=True)
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)
    assert not all(torch.equal(expected[k], weights(run)[k]) for k in expected)  # EMA is not the raw weights


def test_export_before_ema_start_writes_raw_weights(tmp_path, capsys):
    run = tmp_path / "run"
    train(run, "trainer.max_steps=2", "trainer.ema_start=100")
    out = tmp_path / "raw.safetensors"
    assert cli(["export", str(run), str(out)]) == 0
    assert "raw generator" in capsys.readouterr().err
    loaded, raw = load_model(out, debug_stage.TINY).state_dict(), weights(run)
    assert all(torch.equal(raw[k], loaded[k]) for k in raw)


def test_export_to_a_directory_takes_the_head_count_from_the_runs_preset(tmp_path, capsys):
    """The weights do not show the head count: a directory's config.json gets the run's preset's, and a run
    that names none is refused with one line rather than given a guess."""
    run = tmp_path / "run"
    train(run, "trainer.max_steps=1", "stage.critic=false")
    assert cli(["export", str(run), str(tmp_path / "bare")]) == 2
    assert "pass --num-heads" in capsys.readouterr().err and not (tmp_path / "bare").exists()
    preset = tmp_path / "preset.yaml"
    preset.write_text(json.dumps({"model": dataclasses.asdict(debug_stage.TINY)}))
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("stage:\n", f"stage:\n  model: {preset}\n", 1))
    assert cli(["export", str(run), str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_heads"] == debug_stage.TINY.num_heads
    loaded, raw = load_model(tmp_path / "out").state_dict(), weights(run)
    assert all(torch.equal(raw[k], loaded[k]) for k in raw)


def test_export_without_checkpoints_is_one_line(tmp_path, capsys):
    assert cli(["export", str(tmp_path), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contextforcing: error:") and "no checkpoints" in err and "\n" not in err


def test_export_gives_the_same_bytes_every_time(tmp_path):
    """safetensors writes its metadata in hash order, which changes between calls; ours is fixed."""
    run = tmp_path / "run"
    train(run, "trainer.max_steps=1", "stage.critic=false")
    outs = [tmp_path / f"e{i}.safetensors" for i in range(12)]
    for out in outs:
        assert cli(["export", str(run), str(out)]) == 0
    assert len({out.read_bytes() for out in outs}) == 1
    header = json.loads(outs[0].read_bytes()[8 : 8 + int.from_bytes(outs[0].read_bytes()[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])


def test_export_out_is_checked_before_reading_and_a_full_disk_keeps_the_old_file(tmp_path, capsys, monkeypatch):
    import safetensors.torch

    run = tmp_path / "run"
    train(run, "trainer.max_steps=1", "stage.critic=false")
    (tmp_path / "dir.safetensors").mkdir()
    assert cli(["export", str(run), str(tmp_path / "dir.safetensors")]) == 2
    assert "OUT " + str(tmp_path / "dir.safetensors") + " exists and is not a file" in capsys.readouterr().err
    out = tmp_path / "student.safetensors"
    out.write_bytes(b"an earlier export")

    def full_disk(tensors, filename, metadata=None):
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    assert cli(["export", str(run), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"contextforcing: error: cannot write {out}: Error while serializing") and "\n" not in err
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.safetensors", "run", "student.safetensors"]
