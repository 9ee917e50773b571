"""The four stages end-to-end from their toy configs (the panorama world, shrunk), driven by a minimal loop (no
trainer needed)."""

from pathlib import Path

import pytest
import torch

from contextforcing.errors import UserError
from contextforcing.memory.spec import make_spec
from contextforcing.sampling.stream import VideoStream
from contextforcing.training.registry import BuildContext, get_stage
from contextforcing.training.rollout import RolloutRules, Timeline, self_rollout
from contextforcing.training.run_config import load_train_config
from contextforcing.training.stages.common import chunk_signals, layout_from_plan, plan_after_history
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
    return {
        g: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], **stage.optimizer_settings(g))
        for g, m in stage.trainable().items()
    }


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
    "teacher": ("stage.history_max=21", "stage.data.micro_batch=1", "stage.data.seconds=6", "stage.data.pool=2"),
    "ode": (
        "stage.num_pairs=2",
        "stage.pairs_per_shard=1",
        "stage.num_frames=6",
        "stage.euler_num_steps=8",
        "stage.generation_batch=1",
    ),
    "dmd": ("stage.num_frames=6",),
    "cdmd": ("stage.min_frames=6", "stage.max_frames=12", "stage.growth_steps=2"),
}


def _shrunk(name, tmp_path, *extra):
    pairs = (f"stage.pairs_dir={tmp_path}/pairs",) if name == "ode" else ()
    cache = (f"stage.data.cache_dir={tmp_path.parent / 'panorama_cache'}",) if name == "teacher" else ()
    return _stage(name, tmp_path, *SHRINK[name], *pairs, *cache, *extra)


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
        ["generator", "critic"],
        ["critic"],
        ["critic"],
        ["critic"],
        ["critic"],
        ["generator", "critic"],
    ]


def test_dmd_gradient_vanishes_when_real_equals_fake(tmp_path):
    # The critic starts as a copy of the real score; guidance w = 1 makes the real score plain.
    stage = _shrunk("dmd", tmp_path, "stage.guidance_scale=1.0", "stage.guidance_convention=standard")
    loss, _ = stage.generator_loss(next(stage.batches(0, 1, 0)), Ctx())
    loss.backward()
    grads = [p.grad for p in stage.generator.parameters() if p.grad is not None]
    assert grads and all(float(g.abs().max()) == 0.0 for g in grads)
    assert all(p.grad is None for p in stage.critic.parameters())
    assert all(not p.requires_grad for p in stage.real_score.parameters())


def test_rollout_gradient_only_through_target_chunks_with_shared_exits(tmp_path):
    stage = _shrunk("dmd", tmp_path, "stage.num_frames=12")
    text = next(stage.batches(0, 1, 0))["timeline"]
    ctx = Ctx()
    rollout = self_rollout(stage.generator, text, stage.spec, stage.video, stage.sampling, 12, 6, ctx)
    params = [p for p in stage.generator.parameters()]
    context_grads = torch.autograd.grad(rollout.latents[:, :, :6].sum(), params, allow_unused=True, retain_graph=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in context_grads)  # context: no graph to the weights
    assert ctx.randints == [(0, 4), (0, 4)] and len(rollout.exits) == 2  # one exit per target chunk, shared draws
    rollout.target.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.generator.parameters())
    ctx = Ctx()
    same = self_rollout(
        stage.generator, text, stage.spec, stage.video, stage.sampling, 12, 6, ctx, rules=RolloutRules("shared")
    )
    assert len(ctx.randints) == 1 and same.exits[0] == same.exits[1]


def _capture(model, calls):
    original = model.forward_with_context

    def wrapped(target, t, text, context, context_positions, target_positions, **kw):
        calls.append(
            {
                "context": context.detach().clone(),
                "positions": list(context_positions),
                "target_positions": list(target_positions),
                "target": target.detach().clone(),
                "text": text.detach().clone(),
            }
        )
        return original(target, t, text, context, context_positions, target_positions, **kw)

    model.forward_with_context = wrapped


@pytest.mark.parametrize("window", ["chunk", "target"])
def test_cdmd_teacher_sees_exactly_the_student_memory_frames_and_positions(tmp_path, window):
    """Each scored window (every target chunk, or the whole target) is read with the frames and positions the
    student's memory attended at its first chunk, under the prompt of that chunk."""
    stage = _shrunk(
        "cdmd",
        tmp_path,
        "stage.min_frames=18",
        "stage.max_frames=18",
        f"stage.memory={SMALL_MEMORY}",
        f"stage.score_window={window}",
    )
    real, fake = [], []
    _capture(stage.real_score, real)
    _capture(stage.critic, fake)
    batch = next(stage.batches(0, 1, 0))
    stage.generator_loss(batch, Ctx())
    rollout = stage.last_rollout
    assert rollout.target_start == 12
    starts = [12, 15] if window == "chunk" else [12]
    calls = 2 if stage.guidance != 1.0 else 1  # real: cond (+ uncond under CFG); fake: cond
    assert len(real) == calls * len(starts) and len(fake) == len(starts)
    for i, start in enumerate(starts):
        entry = rollout.chunk_plan(start).to_json()  # read through the JSON trace: independent of layout_from_plan
        cached_fast = [f for f in entry["fast"] if f not in entry["current"]]
        frames = entry["sink"] + entry["slow"] + cached_fast
        assert entry["slow"] and cached_fast and entry["sink"] == [0, 1, 2]  # the layout exercises every tier
        positions = [entry["positions"][str(f)] for f in frames]
        first = entry["positions"][str(entry["current"][0])]
        size = 3 if window == "chunk" else 6
        for call in real[calls * i : calls * (i + 1)] + fake[i : i + 1]:
            assert call["positions"] == positions
            assert call["target_positions"] == list(range(first, first + size))
            assert torch.equal(call["context"], rollout.latents[:, :, frames])
        assert torch.equal(real[calls * i]["text"], batch["timeline"].at(start // 3))  # the chunk's own prompt


def test_cdmd_contiguous_context_is_the_window_before_each_scored_chunk(tmp_path):
    stage = _shrunk(
        "cdmd",
        tmp_path,
        "stage.min_frames=18",
        "stage.max_frames=18",
        "stage.teacher_context=contiguous",
        "stage.context_window=6",
    )
    calls = []
    _capture(stage.critic, calls)
    stage.generator_loss(next(stage.batches(0, 1, 0)), Ctx())
    rollout = stage.last_rollout
    for call, start in zip(calls, (12, 15)):
        assert call["positions"] == list(range(6)) and call["target_positions"] == list(range(6, 9))
        assert torch.equal(call["context"], rollout.latents[:, :, start - 6 : start])


def test_cdmd_rollout_length_curriculum(tmp_path):
    stage = _shrunk("cdmd", tmp_path, "stage.min_frames=6", "stage.max_frames=30", "stage.growth_steps=8")
    assert [stage.max_frames_at(s) for s in (0, 2, 4, 8, 100)] == [6, 12, 18, 30, 30]
    ctx = Ctx(step=4)
    lengths = {stage.rollout_lengths(ctx)[0] for _ in range(200)}
    assert lengths == {6, 9, 12, 15, 18} and ctx.randints[0] == (2, 7)


def test_teacher_layout_replays_the_student_policy(tmp_path):
    """Host-only replay of the policy == the real ContextMemory's trace after streaming the same history."""
    stage = _shrunk(
        "teacher", tmp_path, "stage.slow_rule=stride", "stage.slow_stride_chunks=1", f"stage.memory={SMALL_MEMORY}"
    )
    batch = next(stage.batches(0, 1, 0))
    text = stage.encoder.encode(batch["clips"][0].prompts[:1])
    spec = stage.spec  # the config's memory (keep=last) with the stride rule: uniform promotion every chunk
    assert (spec.options.rule, spec.options.interval, spec.options.keep) == ("uniform", 1, "last")
    for history in (0, 3, 6, 12, 21):
        replay = layout_from_plan(plan_after_history(spec, 3, history), 3)
        stream = VideoStream(stage.teacher, text, spec, stage.video, max_frames=history + 3)
        stream.prefill(batch["latents"][:, :, :history])
        assert replay == layout_from_plan(stream.memory.begin_chunk(history, 3), 3)
        assert stage.layout(history, text, batch["latents"]) == replay


SURPRISAL = (
    "{policy: slow_fast, sink: 3, slow: 4, fast: 6, rule: surprisal, tau: 0.999, interval: 1, "
    "compare: checked, keep: last, key_layers: first}"
)
RETRIEVE = {"sink": 3, "bank": 6, "top_k": 2, "fast": 6, "interval": 1, "score": "keys"}


def test_teacher_retrieval_layout_is_the_memorys(tmp_path):
    """A retrieval memory by keys: the teacher's layout (the driver replayed on the first-block keys of the whole
    history) is the plan the real memory reaches by streaming that history through the teacher."""
    stage = _shrunk("teacher", tmp_path)
    stage.spec = make_spec("retrieve", RETRIEVE)  # the config's memory is a slow_fast dict: set the spec itself
    batch = next(stage.batches(0, 1, 0))
    text = stage.encoder.encode(batch["clips"][0].prompts[:1])
    picked = 0
    frames = batch["latents"].shape[2]
    for history in [h for h in range(0, frames - 2, 6)]:
        stream = VideoStream(stage.teacher, text, stage.spec, stage.video, max_frames=history + 3)
        stream.prefill(batch["latents"][:, :, :history])
        plan = stream.memory.begin_chunk(history, 3)
        assert stage.layout(history, text, batch["latents"]) == layout_from_plan(plan, 3), history
        picked += len(plan.tier("slow"))
    assert picked > 0


def test_teacher_surprisal_layout_is_the_memorys_on_the_first_block_keys(tmp_path):
    """key_layers=first: the surprisal signals of a whole history computed at once (`chunk_signals`) and replayed
    host-side give the layout the real memory reaches by streaming that history through the teacher."""
    stage = _shrunk("teacher", tmp_path, f"stage.memory={SURPRISAL}")
    batch = next(stage.batches(0, 1, 0))
    text = stage.encoder.encode(batch["clips"][0].prompts[:1])
    promoted = 0
    for history in (0, 9, 21):
        stream = VideoStream(stage.teacher, text, stage.spec, stage.video, max_frames=history + 3)
        stream.prefill(batch["latents"][:, :, :history])
        expected = layout_from_plan(stream.memory.begin_chunk(history, 3), 3)
        assert stage.layout(history, text, batch["latents"]) == expected
        promoted = max(promoted, expected.tiers.count("slow"))
    assert promoted >= 2  # the rule did promote: the comparison is not of two empty tiers
    # the signal is the commit pass's first-block keys, averaged over the chunk's tokens: what the memory compares
    signals = chunk_signals(stage.teacher, batch["latents"][:, :, :21], stage.sampling, 3)
    assert len(signals) == 7 and signals[0].shape == (stage.teacher.config.dim,)


def test_teacher_reads_the_target_chunks_prompt_or_the_negative_prompt(tmp_path):
    stage = _shrunk("teacher", tmp_path, "stage.text_dropout=0.0")
    batch = next(stage.batches(0, 1, 0))
    calls = []
    _capture(stage.teacher, calls)
    ctx = Ctx(seed=3)
    stage.loss(batch, ctx)
    history = calls[0]["target_positions"]  # the target chunk's positions; its prompt is the clip's at that chunk
    clip = batch["clips"][0]
    drawn = [d for d in ctx.randints if d[0] == 0 and d[1] > 1][0]
    assert drawn  # a history was drawn
    prompts = {p for p in clip.prompts}
    assert any(torch.equal(calls[0]["text"][0], stage.encoder.encode([p])[0]) for p in prompts)
    dropped = _shrunk("teacher", tmp_path / "drop", "stage.text_dropout=1.0")
    calls = []
    _capture(dropped.teacher, calls)
    dropped.loss(batch, Ctx(seed=3))
    assert torch.equal(calls[0]["text"], dropped.uncond) and float(dropped.uncond.abs().sum()) == 0.0
    assert history


def test_teacher_memory_windows_draw_targets_that_need_memory(tmp_path):
    stage = _shrunk("teacher", tmp_path, "stage.memory_windows=1.0", "stage.history_max=105", "stage.data.seconds=30")
    batch = next(stage.batches(0, 1, 0))
    clip = batch["clips"][0]
    assert clip.memory_starts  # 30 s of a training script revisit something
    histories = {stage.draw_history(Ctx(seed=s), clip, batch["latents"].shape[2]) for s in range(20)}
    assert histories <= set(clip.memory_starts) and len(histories) > 1
    uniform = _shrunk(
        "teacher", tmp_path / "u", "stage.memory_windows=0.0", "stage.history_max=105", "stage.data.seconds=30"
    )
    drawn = {uniform.draw_history(Ctx(seed=s), clip, batch["latents"].shape[2]) for s in range(40)}
    assert not drawn <= set(clip.memory_starts)


ER = (
    "stage.history_min=12",
    "stage.history_max=12",
    f"stage.memory={SMALL_MEMORY}",
    "stage.slow_rule=stride",
    "stage.slow_stride_chunks=1",
    "stage.error_recycling.start_step=0",
)
NOT_CLEAN, BANK = [0.9, 0.95, 0.95, 0.95], [0.0]  # injection draws (clean, latent, context, noise); bank update


def test_teacher_error_recycling_fills_and_injects_only_into_fast_context(tmp_path):
    stage = _shrunk("teacher", tmp_path, *ER)
    batch = next(stage.batches(0, 1, 0))
    for step in range(6):  # uniforms: history window draw, not clean, no injection; buffer update allowed
        stage.loss(batch, Ctx(step=step, uniforms=[1.0, *NOT_CLEAN, *BANK]))
    assert len(stage.latent_errors) == 6 and len(stage.noise_errors) == 6
    calls = []
    _capture(stage.teacher, calls)
    stage.loss(batch, Ctx(uniforms=[1.0, 0.9, 0.95, 0.0, 0.95, 1.0]))  # context injection only
    text = stage.encoder.encode(batch["clips"][0].prompts[:1])
    layout = stage.layout(12, text, batch["latents"])
    clean = batch["latents"][:, :, layout.frames]
    fast = torch.tensor(layout.fast_indices())
    rest = torch.tensor([i for i in range(len(layout.frames)) if i not in layout.fast_indices()])
    assert torch.equal(calls[0]["context"][:, :, rest], clean[:, :, rest])
    assert not torch.allclose(calls[0]["context"][:, :, fast], clean[:, :, fast])


def test_teacher_error_recycling_into_every_context_tier(tmp_path):
    stage = _shrunk("teacher", tmp_path, *ER, "stage.error_recycling.context_tiers=all")
    batch = next(stage.batches(0, 1, 0))
    for step in range(6):
        stage.loss(batch, Ctx(step=step, uniforms=[1.0, *NOT_CLEAN, *BANK]))
    calls = []
    _capture(stage.teacher, calls)
    stage.loss(batch, Ctx(uniforms=[1.0, 0.9, 0.95, 0.0, 0.95, 1.0]))  # context injection only
    layout = stage.layout(12, stage.encoder.encode(batch["clips"][0].prompts[:1]), batch["latents"])
    assert {"sink", "slow", "fast"} <= set(layout.tiers)
    clean = batch["latents"][:, :, layout.frames]
    for i in range(len(layout.frames)):  # every frame drifts, the memory's as well as the recent ones
        assert not torch.allclose(calls[0]["context"][:, :, i], clean[:, :, i]), layout.tiers[i]


def test_teacher_error_recycling_context_tiers_is_checked(tmp_path):
    with pytest.raises(UserError, match="context_tiers must be fast or all"):
        _shrunk("teacher", tmp_path, *ER, "stage.error_recycling.context_tiers=slow")


def test_teacher_error_recycling_starts_at_its_start_step(tmp_path):
    stage = _shrunk("teacher", tmp_path, *ER[:-1], "stage.error_recycling.start_step=3")
    batch = next(stage.batches(0, 1, 0))
    for step in range(5):
        stage.loss(batch, Ctx(step=step, uniforms=[1.0, *NOT_CLEAN, *BANK]))
    assert len(stage.latent_errors) == 2  # steps 3 and 4 only: nothing banked while warming up


def test_teacher_error_buffers_survive_a_checkpoint_round_trip(tmp_path):
    """The trainer saves a stage's own state per rank; the teacher's recycled errors must come back."""
    stage = _shrunk("teacher", tmp_path, *ER)
    batch = next(stage.batches(0, 1, 0))
    for step in range(3):
        stage.loss(batch, Ctx(step=step, uniforms=[1.0, *NOT_CLEAN, *BANK]))
    fresh = _shrunk("teacher", tmp_path / "fresh", *ER)
    assert len(fresh.latent_errors) == 0
    fresh.load_state_dict(stage.state_dict())
    assert len(fresh.latent_errors) == len(stage.latent_errors) == 3
    saved, restored = stage.state_dict(), fresh.state_dict()
    for bank in ("latent_errors", "noise_errors"):
        for a, b in zip(torch.utils._pytree.tree_leaves(saved[bank]), torch.utils._pytree.tree_leaves(restored[bank])):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_rollout_switches_prompts_where_the_timeline_does_as_inference_does(tmp_path):
    """A training rollout's context chunks are exactly what a VideoStream gives with the same noise and the
    same `switch_prompt` calls (what Pipeline.stream makes of a script's switches)."""
    stage = _shrunk("dmd", tmp_path)
    scripts = [["warm room, hold, lights on, black ball"] * 2 + ["warm room, pan left, lights on, black ball"] * 2]
    timeline = Timeline.from_scripts(stage.encoder, scripts)
    assert timeline.switches == (2,)
    ctx = Ctx(seed=5)
    with torch.no_grad():
        rollout = self_rollout(stage.generator, timeline, stage.spec, stage.video, stage.sampling, 12, 3, ctx)
    stream = VideoStream(stage.generator.eval(), timeline.at(0), stage.spec, stage.video, stage.sampling, max_frames=12)
    generator = torch.Generator().manual_seed(5)
    chunks = []
    with torch.no_grad():
        for c in range(3):
            if c == 2:
                stream.switch_prompt(timeline.at(2))
            chunks.append(stream.step(stream.noise(3, generator), generator))
    assert torch.allclose(rollout.latents[:, :, :9], torch.cat(chunks, 2), atol=1e-5)
    assert not torch.allclose(timeline.at(1), timeline.at(2))


def test_teacher_forced_chunk_reads_the_clean_past_like_a_prefilled_stream(tmp_path):
    """ODE regression streams a trajectory teacher-forced: after `teacher_forced` the memory holds the clean
    latents, so the flow it predicts for the next chunk is the one a stream prefilled with them predicts."""
    stage = _shrunk("ode", tmp_path)
    row = stage.pairs[0]
    final, noisy = row["final"][None].float(), row["states"][1][None].float()
    text = stage.encoder.encode(row["prompts"][:1])
    t = torch.full((1, 3), stage.steps[1])
    forced = VideoStream(stage.student, text, stage.spec, stage.video, stage.sampling, max_frames=6, trainable=True)
    with torch.no_grad():
        forced.teacher_forced(noisy[:, :, :3], t, final[:, :, :3])
        flow = forced.teacher_forced(noisy[:, :, 3:], t, final[:, :, 3:])
        reference = VideoStream(stage.student, text, stage.spec, stage.video, stage.sampling, max_frames=6)
        reference.prefill(final[:, :, :3])
        reference.memory.begin_chunk(3, 3)
        expected = stage.student(noisy[:, :, 3:], t, reference.branches[0].text, memory=reference.memory)
    assert torch.allclose(flow, expected, atol=1e-5)


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
