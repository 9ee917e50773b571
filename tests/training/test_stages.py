"""The four stages end-to-end on the tiny preset, driven by a minimal loop (no trainer needed)."""

from pathlib import Path

import pytest
import torch

from contextforcing.errors import UserError
from contextforcing.memory.policies import make_spec
from contextforcing.sampling.stream import VideoStream
from contextforcing.training.config import load_train_config
from contextforcing.training.registry import BuildContext, get_stage
from contextforcing.training.rollout import self_rollout
from contextforcing.training.stages.common import layout_from_plan, plan_after_history
from contextforcing.training.stages.ode import ODEPairs, state_indices

CONFIGS = Path(__file__).parents[2] / "configs" / "toy"
SMALL_MEMORY = "{policy: slow_fast, sink: 3, slow: 4, fast: 6, rule: uniform, interval: 1}"




class Ctx:
    """A single-process StepContext: shared draws from one seeded generator, noise from another."""

    def __init__(self, step: int = 0, seed: int = 0, uniforms: list[float] | None = None):
        self.step, self.micro, self.device = step, 0, torch.device("cpu")
        self.generator = torch.Generator().manual_seed(seed)
        self._shared = torch.Generator().manual_seed(seed + 7)
        self._uniforms = list(uniforms or [])
        self.randints: list[tuple[int, int]] = []

    def shared_randint(self, low: int, high: int) -> int:
        self.randints.append((low, high))
        return int(torch.randint(low, high, (1,), generator=self._shared))

    def shared_uniform(self) -> float:
        return self._uniforms.pop(0) if self._uniforms else float(torch.rand((), generator=self._shared))


def _stage(name: str, tmp_path: Path, *overrides: str):
    cfg = load_train_config(name, CONFIGS / f"{name}.yaml", [f"trainer.run_dir={tmp_path}/run", *overrides])
    spec = get_stage(name)
    return spec.build(cfg.stage, BuildContext(torch.device("cpu"), 0, 1, cfg.trainer.seed, tmp_path / "run"))


def _optimizers(stage):
    return {g: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], **stage.optimizer_settings(g))
            for g, m in stage.trainable().items()}


def _run(stage, steps: int, fixed_batch: bool = False, groups: tuple[str, ...] | None = None):
    """Minimal loop; with `fixed_batch` every step sees the same batch and the same random draws."""
    optimizers, batches = _optimizers(stage), stage.batches(0, 1, 0)
    batch, history = next(batches), []
    for step in range(steps):
        for update in stage.updates(0 if fixed_batch else step):
            if groups and update.group not in groups:
                continue
            if not fixed_batch:
                batch = next(batches)
            optimizers[update.group].zero_grad()
            loss, metrics = update.loss(batch, Ctx(step=step, seed=0 if fixed_batch else step))
            assert torch.isfinite(loss) and metrics
            loss.backward()
            optimizers[update.group].step()
            history.append(float(loss.detach()))
    return history


SHRINK = {
    "teacher": ("stage.history_max=12", "stage.data.micro_batch=1"),
    "ode": ("stage.num_pairs=2", "stage.pairs_per_shard=1", "stage.num_frames=6", "stage.euler_num_steps=8"),
    "dmd": ("stage.num_frames=6",),
    "cdmd": ("stage.min_frames=6", "stage.max_frames=12", "stage.growth_steps=2"),
}


def _shrunk(name, tmp_path, *extra):
    pairs = (f"stage.pairs_dir={tmp_path}/pairs",) if name == "ode" else ()
    return _stage(name, tmp_path, *SHRINK[name], *pairs, *extra)


@pytest.mark.parametrize("name", ["teacher", "ode", "dmd", "cdmd"])
def test_each_stage_runs_from_its_toy_config(name, tmp_path):
    stage = _shrunk(name, tmp_path)
    assert stage.name == name
    assert _run(stage, 3)


OVERFIT = {
    "teacher": ("generator", ("stage.error_recycling.enabled=false", "stage.optimizer.lr=3e-3")),
    "ode": ("generator", ("stage.optimizer.lr=3e-3",)),
    "dmd": ("critic", ("stage.critic_optimizer.lr=3e-3",)),
    "cdmd": ("critic", ("stage.critic_optimizer.lr=3e-3",)),
}


@pytest.mark.parametrize("name", ["teacher", "ode", "dmd", "cdmd"])
def test_loss_falls_when_overfitting_one_batch(name, tmp_path):
    group, overrides = OVERFIT[name]
    stage = _shrunk(name, tmp_path, *overrides)
    losses = _run(stage, 25, fixed_batch=True, groups=(group,))
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


def test_dmd_runs_the_generator_every_fifth_step(tmp_path):
    stage = _shrunk("dmd", tmp_path)
    assert [[u.group for u in stage.updates(s)] for s in range(6)] == [
        ["generator", "critic"], ["critic"], ["critic"], ["critic"], ["critic"], ["generator", "critic"]]


def test_dmd_gradient_vanishes_when_real_equals_fake(tmp_path):
    # The critic starts as a copy of the real score; guidance g = 0 (w = 1) makes the real score plain.
    stage = _shrunk("dmd", tmp_path, "stage.guidance_scale=0.0")
    loss, _ = stage.generator_loss(next(stage.batches(0, 1, 0)), Ctx())
    loss.backward()
    grads = [p.grad for p in stage.generator.parameters() if p.grad is not None]
    assert grads and all(float(g.abs().max()) == 0.0 for g in grads)
    assert all(p.grad is None for p in stage.critic.parameters())
    assert all(not p.requires_grad for p in stage.real_score.parameters())


def test_rollout_gradient_only_through_target_chunks_with_shared_exits(tmp_path):
    stage = _shrunk("dmd", tmp_path)
    text = next(stage.batches(0, 1, 0))["text"]
    ctx = Ctx()
    rollout = self_rollout(stage.generator, text, stage.spec, stage.video, stage.sampling, 12, 6, ctx)
    params = [p for p in stage.generator.parameters()]
    context_grads = torch.autograd.grad(rollout.latents[:, :, :6].sum(), params, allow_unused=True, retain_graph=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in context_grads)  # context: no graph to the weights
    assert ctx.randints == [(0, 4), (0, 4)] and len(rollout.exits) == 2  # one exit per target chunk, shared draws
    rollout.target.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.generator.parameters())
    ctx = Ctx()
    same = self_rollout(stage.generator, text, stage.spec, stage.video, stage.sampling, 12, 6, ctx,
                        same_exit_across_chunks=True)
    assert len(ctx.randints) == 1 and same.exits[0] == same.exits[1]


def _capture(model, calls):
    original = model.forward_with_context

    def wrapped(target, t, text, context, context_positions, target_positions, **kw):
        calls.append({"context": context.detach().clone(), "positions": list(context_positions),
                      "target_positions": list(target_positions), "target": target.detach().clone()})
        return original(target, t, text, context, context_positions, target_positions, **kw)

    model.forward_with_context = wrapped


def test_cdmd_teacher_sees_exactly_the_student_memory_frames_and_positions(tmp_path):
    stage = _shrunk("cdmd", tmp_path, "stage.min_frames=18", "stage.max_frames=18", f"stage.memory={SMALL_MEMORY}")
    real, fake = [], []
    _capture(stage.real_score, real)
    _capture(stage.critic, fake)
    stage.generator_loss(next(stage.batches(0, 1, 0)), Ctx())
    rollout = stage.last_rollout
    assert rollout.target_start == 12
    entry = rollout.chunk_plan(12).to_json()  # read through the JSON trace: independent of layout_from_plan
    cached_fast = [f for f in entry["fast"] if f not in entry["current"]]
    frames = entry["sink"] + entry["slow"] + cached_fast
    assert entry["slow"] and cached_fast  # the layout exercises every tier
    positions = [entry["positions"][str(f)] for f in frames]
    first = entry["positions"][str(entry["current"][0])]
    # real: cond (+ uncond when the config guides; the toy configs use w = 1, no CFG); fake: cond
    assert len(real) == (1 if stage.guidance == 1.0 else 2) and len(fake) == 1
    for call in real + fake:
        assert call["positions"] == positions
        assert call["target_positions"] == list(range(first, first + 6))
        assert torch.equal(call["context"], rollout.latents[:, :, frames])
    # The memory's own tiers after the rollout agree with the trace's view of the frames it kept.
    assert entry["sink"] == [0, 1, 2]


def test_cdmd_contiguous_context_is_the_window_before_the_target(tmp_path):
    stage = _shrunk("cdmd", tmp_path, "stage.min_frames=18", "stage.max_frames=18", "stage.teacher_context=contiguous",
                    "stage.context_window=6")
    calls = []
    _capture(stage.real_score, calls)
    stage.generator_loss(next(stage.batches(0, 1, 0)), Ctx())
    rollout = stage.last_rollout
    assert calls[0]["positions"] == list(range(6)) and calls[0]["target_positions"] == list(range(6, 12))
    assert torch.equal(calls[0]["context"], rollout.latents[:, :, 6:12])


def test_cdmd_rollout_length_curriculum(tmp_path):
    stage = _shrunk("cdmd", tmp_path, "stage.min_frames=6", "stage.max_frames=30", "stage.growth_steps=8")
    assert [stage.max_frames_at(s) for s in (0, 2, 4, 8, 100)] == [6, 12, 18, 30, 30]
    ctx = Ctx(step=4)
    lengths = {stage.rollout_lengths(ctx)[0] for _ in range(200)}
    assert lengths == {6, 9, 12, 15, 18} and ctx.randints[0] == (2, 7)


def test_teacher_layout_replays_the_student_policy(tmp_path):
    """Host-only replay of the policy == the real ContextMemory's trace after streaming the same history."""
    stage = _shrunk("teacher", tmp_path, "stage.slow_rule=stride", "stage.slow_stride_chunks=1",
                    f"stage.memory={SMALL_MEMORY}", "stage.history_max=21")
    batch = next(stage.batches(0, 1, 0))
    spec = make_spec("slow_fast", {"sink": 3, "slow": 4, "fast": 6, "rule": "uniform", "interval": 1})
    for history in (3, 6, 12, 21):
        replay = layout_from_plan(plan_after_history(spec, 3, history, decide=lambda _: False), 6)
        stream = VideoStream(stage.teacher, batch["text"], spec, stage.video, max_frames=history + 3)
        stream.prefill(batch["latents"][:, :, :history])
        assert replay == layout_from_plan(stream.memory.begin_chunk(history, 3), 6)
        assert stage.layout(history, batch["text"], batch["latents"]) == replay


def test_teacher_error_recycling_fills_and_injects_only_into_fast_context(tmp_path):
    stage = _shrunk("teacher", tmp_path, "stage.history_min=12", "stage.history_max=12", f"stage.memory={SMALL_MEMORY}",
                    "stage.slow_rule=stride", "stage.slow_stride_chunks=1")
    batch = next(stage.batches(0, 1, 0))
    for step in range(6):  # uniforms: not clean, no injection; buffer update allowed
        stage.loss(batch, Ctx(step=step, uniforms=[0.9, 0.95, 0.95, 0.95, 0.0]))
    assert len(stage.latent_errors) == 6 and len(stage.noise_errors) == 6
    calls = []
    _capture(stage.teacher, calls)
    stage.loss(batch, Ctx(uniforms=[0.9, 0.95, 0.0, 0.95, 1.0]))  # context injection only
    layout = stage.layout(12, batch["text"], batch["latents"])
    clean = batch["latents"][:, :, layout.frames]
    fast = torch.tensor(layout.fast_indices())
    rest = torch.tensor([i for i in range(len(layout.frames)) if i not in layout.fast_indices()])
    assert torch.equal(calls[0]["context"][:, :, rest], clean[:, :, rest])
    assert not torch.allclose(calls[0]["context"][:, :, fast], clean[:, :, fast])


def test_teacher_error_buffers_survive_a_checkpoint_round_trip(tmp_path):
    """The trainer saves a stage's own state per rank; the teacher's recycled errors must come back."""
    stage = _shrunk("teacher", tmp_path, "stage.history_min=12", "stage.history_max=12", f"stage.memory={SMALL_MEMORY}",
                    "stage.slow_rule=stride", "stage.slow_stride_chunks=1")
    batch = next(stage.batches(0, 1, 0))
    for step in range(3):
        stage.loss(batch, Ctx(step=step, uniforms=[0.9, 0.95, 0.95, 0.95, 0.0]))
    fresh = _shrunk("teacher", tmp_path / "fresh", "stage.history_min=12", "stage.history_max=12",
                    f"stage.memory={SMALL_MEMORY}", "stage.slow_rule=stride", "stage.slow_stride_chunks=1")
    assert len(fresh.latent_errors) == 0
    fresh.load_state_dict(stage.state_dict())
    assert len(fresh.latent_errors) == len(stage.latent_errors) == 3
    saved, restored = stage.state_dict(), fresh.state_dict()
    for bank in ("latent_errors", "noise_errors"):
        for a, b in zip(torch.utils._pytree.tree_leaves(saved[bank]), torch.utils._pytree.tree_leaves(restored[bank])):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_ode_pairs_agree_with_the_student_step_list(tmp_path):
    stage = _shrunk("ode", tmp_path)
    meta = stage.pairs.meta
    assert meta["timesteps"] == stage.steps and meta["euler_indices"] == [0, 2, 4, 6]
    row = stage.pairs[0]
    assert row["states"].shape[0] == 4 and row["final"].shape == row["states"].shape[1:]
    from safetensors.torch import load_file

    shard = load_file(str(tmp_path / "pairs" / meta["shards"][0]))
    assert torch.equal(shard["states"][:, 0], shard["noise"])  # the state at t = 1000 is the noise
    with pytest.raises(UserError, match="not on the"):
        state_indices(stage.steps, [1000.0, 900.0, 800.0])
    with pytest.raises(UserError, match="regenerate"):
        ODEPairs(tmp_path / "pairs", stage.steps, shift=8.0)
    with pytest.raises(UserError, match="not on the"):
        _stage("ode", tmp_path, *SHRINK["ode"][:-1], "stage.euler_num_steps=10", f"stage.pairs_dir={tmp_path}/other")
