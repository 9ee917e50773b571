"""The analytic cost model against hand arithmetic and against FLOPs counted by torch on real forwards."""

import pytest
import torch
from gather_reference import GatherMemory
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from contextforcing.config import PRESETS, SamplingConfig
from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.cross import CrossAttentionCache
from contextforcing.memory.spec import make_spec
from contextforcing.model.wan import CausalWanModel, build_model
from contextforcing.runtime import perf
from contextforcing.sampling.stream import VideoStream

WAN, TINY = PRESETS["wan2.1-t2v-1.3b"], PRESETS["tiny"]


def counted(fn) -> int:
    """Matrix-product FLOPs torch executes in fn(). The math SDPA backend runs attention as bmm, which
    the counter sees on every device (the fused CPU kernel has no FLOP formula in torch's counter)."""
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        fn()
    return counter.get_total_flops()


# -- hand arithmetic ---------------------------------------------------------------------------------------
def test_wan_1_3b_floor_by_hand():
    m, v = WAN.model, WAN.video
    assert v.tokens_per_frame(m) == 1560 and perf.tokens_per_chunk(m, v) == 4680
    assert perf.policy_capacity("slow_fast", 3) == 21
    per_token = 2 * 30 * (4 * 1536**2 + 2 * 1536**2 + 2 * 1536 * 8960)
    assert perf.linear_flops_per_token(m) == per_token == pytest.approx(2.50e9, rel=1e-3)
    cost = perf.chunk_cost(m, v, perf.attended_frames_bound("slow_fast", 3, 100))
    assert cost.keys == 21 * 1560 == 32760 and cost.passes == 5
    f = cost.forward
    assert f.linear == 4680 * per_token == pytest.approx(11.70e12, rel=1e-3)
    assert f.self_attention == 4 * 4680 * 32760 * 1536 * 30 == pytest.approx(28.26e12, rel=1e-3)
    # The "about 0.2 TFLOP" of cross-attention counts QK^T only; with AV it is 0.44 TFLOP.
    assert f.cross_attention == 4 * 4680 * 512 * 1536 * 30 == pytest.approx(0.4417e12, rel=1e-3)
    patchify_and_head = 2 * 4680 * 1536 * (16 + 16) * 4
    timestep = 2 * 3 * (256 * 1536 + 1536**2 + 6 * 1536**2)
    assert f.embed_head == patchify_and_head + timestep
    assert f.total == pytest.approx(40.41e12, rel=1e-3)
    # the commit pass runs without its flow: the last layer's o, cross q/o, FFN and attentions, and the head
    skipped = 2 * 4680 * (1536**2 + 2 * 1536**2 + 2 * 1536 * 8960) + 4 * 4680 * (32760 + 512) * 1536
    skipped += 2 * 4680 * 1536 * 16 * 4
    assert cost.commit_skipped == skipped == pytest.approx(1.2815e12, rel=1e-3)
    assert cost.total == 5 * f.total - skipped == pytest.approx(200.75e12, rel=1e-3)
    floor = perf.floor(cost, v, 790)
    assert floor["seconds"] == pytest.approx(0.2541, rel=1e-3)
    assert floor["latent_fps"] == pytest.approx(11.81, rel=1e-3)
    assert floor["pixel_fps"] == pytest.approx(47.22, rel=1e-3)
    assert perf.prompt_flops(m) == 2 * 512 * (4096 * 1536 + 1536**2) + 30 * 2 * 512 * 2 * 1536**2


def test_tiny_by_hand():
    m, v = TINY.model, TINY.video  # dim 64, ffn 128, 2 layers, text 16 x 32, 4 x 4 tokens per frame
    assert perf.tokens_per_chunk(m, v) == 48
    f = perf.forward_flops(m, v, attended_frames=7)  # 4 stored frames + the chunk's 3
    assert f.linear == 48 * 2 * 2 * (6 * 64**2 + 2 * 64 * 128)
    assert f.self_attention == 4 * 48 * (7 * 16) * 64 * 2
    assert f.cross_attention == 4 * 48 * 16 * 64 * 2
    assert f.embed_head == 2 * 48 * 64 * 32 * 4 + 2 * 3 * (32 * 64 + 64**2 + 6 * 64**2)
    skipped = 2 * 48 * (64**2 + 2 * 64**2 + 2 * 64 * 128) + 4 * 48 * (7 * 16 + 16) * 64 + 2 * 48 * 64 * 16 * 4
    assert perf.chunk_cost(m, v, 7, steps=2).total == 3 * f.total - skipped  # the commit pass without its flow
    assert perf.forward_flops(m, v, 7, batch=2).total == 2 * f.total


def test_attended_frames_per_policy_and_full_grows():
    caps = {name: perf.policy_capacity(name, 3) for name in perf.POLICIES}
    assert caps == {
        "full": None,
        "rolling": 12,
        "sink": 12,
        "relative": 12,
        "ema_sink": 9,
        "slow_fast": 21,
        "retrieve": 17,
    }
    assert [perf.attended_frames_bound("full", 3, c) for c in (0, 1, 159)] == [3, 6, 480]
    assert [perf.attended_frames_bound("slow_fast", 3, c) for c in (0, 5, 6, 500)] == [3, 18, 21, 21]


MEMORY_CLASSES = {"slots": ContextMemory, "gather": GatherMemory}


def steady_memory(spec, layout, view_mode, **kwargs) -> ContextMemory:
    """A memory driven (bookkeeping only, commit passes of zeros) to a chunk that attends its full capacity,
    with every layer's view of that chunk built."""
    memory = MEMORY_CLASSES[view_mode](spec, layout, key_rotation=lambda k, p: k.flatten(1, 2), **kwargs)
    capacity = perf.policy_capacity(spec, layout.chunk_frames)
    c = layout.chunk_frames
    kv = torch.zeros(1, c * layout.tokens_per_frame, layout.num_heads, layout.head_dim).to(memory.k[0])
    for chunk in range(100):
        plan = memory.begin_chunk(chunk * c, c)
        if capacity is not None and len(plan.context) == capacity - c:
            break
        step = memory.begin_pass(commit=True)
        for layer in range(layout.num_layers):
            step.keys_values(layer, kv, kv, kv)
        memory.commit()
    for layer in range(layout.num_layers):
        memory.view(layer)
    return memory


@pytest.mark.parametrize("view_mode", ["slots", "gather"])
def test_kv_bytes_match_the_tensors_a_memory_holds(view_mode):
    """Store and views of a real tiny memory at steady state (float32), and of a meta-device Wan-1.3B one
    (bf16, shapes only): the figures docs/performance.md quotes are what the code allocates."""
    m, v = TINY.model, TINY.video
    layout = MemoryLayout.for_model(m, v)
    for name in ("rolling", "sink", "relative", "ema_sink", "slow_fast"):
        spec = make_spec(name, {"rule": "uniform"} if name == "slow_fast" else {})
        memory = steady_memory(spec, layout, view_mode)
        kv = perf.kv_bytes(spec, m, v, torch.float32)
        assert kv["allocated"] == memory.nbytes(), name
        assert kv[f"views_{view_mode}"] == memory.view_nbytes(), name
        assert kv["frame_bytes_all_layers"] == 2 * 16 * 64 * 4 * 2
    full = MEMORY_CLASSES[view_mode](
        make_spec("full"), layout, key_rotation=lambda k, p: k.flatten(1, 2), max_frames=30
    )
    assert perf.kv_bytes("full", m, v, torch.float32, max_frames=30)["allocated"] == full.nbytes()
    assert perf.kv_bytes("full", m, v, torch.float32)["allocated"] is None  # unbounded without a length

    wan_layout = MemoryLayout.for_model(WAN.model, WAN.video)
    spec = make_spec("slow_fast", {"rule": "uniform"})  # no surprisal read-back: meta tensors hold no values
    memory = steady_memory(spec, wan_layout, view_mode, device="meta", dtype=torch.bfloat16)
    wan = perf.kv_bytes("slow_fast", WAN.model, WAN.video, torch.bfloat16)
    assert wan["frame_bytes_all_layers"] == 2 * 1560 * 1536 * 2 * 30
    assert wan["attended"] == 21 * 2 * 1560 * 1536 * 2 * 30  # 6.04 GB
    assert wan["allocated"] == memory.nbytes() == 21 * wan["frame_bytes_all_layers"]
    assert wan[f"views_{view_mode}"] == memory.view_nbytes()
    assert wan["views_gather"] == 18 * wan["frame_bytes_all_layers"]  # the stored frames a chunk attends, K and V
    assert wan["views_slots"] == 21 * wan["frame_bytes_all_layers"] // 2  # rotated keys of the working slots


# -- the model against torch's own count -------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy, chunks, checked_chunks, fixed",
    [("slow_fast", 14, (0, 1, 10, 13), False), ("slow_fast", 14, (0, 1, 10, 13), True), ("full", 8, (0, 1, 7), False)],
)
def test_counted_flops_of_streamed_chunks_equal_the_model(policy, chunks, checked_chunks, fixed):
    """Whole chunks (4 denoising passes + commit through ContextMemory), counted on a few chunks: the
    first (fills the text cache), a growing one, and late ones (slow tier in use / full's long context).
    A chunk computes attention over exactly what it attends (`key_frames`); read at fixed shapes, a bounded
    policy computes it over all its working slots, masked ones included."""
    cfg, video = TINY.model, TINY.video
    model = build_model(cfg, seed=0)
    text = torch.randn(1, cfg.text_len, cfg.text_dim)
    stream = VideoStream(model, text, make_spec(policy), video, SamplingConfig(), max_frames=42, fixed_shapes=fixed)
    checked = []
    for chunk in range(chunks):
        step = lambda: stream.step(stream.noise(3, None))  # noqa: E731
        if chunk not in checked_chunks:
            with torch.no_grad():
                step()
            continue
        flops = counted(step)
        trace = stream.last_plan.to_json()
        attended = len(trace["sink"]) + len(trace["slow"]) + len(trace["fast"])
        computed = stream.memory.key_frames()
        expected = perf.chunk_cost(cfg, video, computed, steps=len(stream.steps)).total
        expected += perf.prompt_flops(cfg) if chunk == 0 else 0  # the text K/V cache fills on the first pass
        assert flops == pytest.approx(expected, rel=1e-6), (policy, chunk)
        checked.append((attended, len(trace["slow"]), computed))
    if policy == "slow_fast":
        assert checked[0][:2] == (3, 0) and checked[-1][1] > 0  # the slow tier was in use
        if fixed:
            assert {c for _, _, c in checked} == {perf.policy_capacity(policy, 3)}  # the same shapes every chunk
        else:
            assert [a for a, _, _ in checked] == [c for _, _, c in checked]  # what it attends, nothing more
    else:
        assert [a for a, _, _ in checked] == [c for _, _, c in checked] == [3, 6, 24]


def test_counted_flops_of_one_cached_forward_on_wan_1_3b_shapes():
    """The headline numbers, counted by torch on a meta-device Wan-1.3B (shapes only, no compute):
    one denoising pass of a chunk attending the full 21-frame slow_fast memory."""
    cfg, video = WAN.model, WAN.video
    with torch.device("meta"):
        model = CausalWanModel(cfg).to(torch.bfloat16).eval()
    spec = make_spec("slow_fast", {"rule": "uniform"})  # no surprisal read-back: meta tensors hold no values
    memory = ContextMemory(
        spec,
        MemoryLayout.for_model(cfg, video),
        key_rotation=model.key_rotation(60, 104),
        device="meta",
        dtype=torch.bfloat16,
    )
    start = 0
    while True:  # bookkeeping only: run the policy until a chunk attends its full capacity
        plan = memory.begin_chunk(start, 3)
        if len(plan.context) == 18:
            break
        memory.commit()
        start += 3
    text = CrossAttentionCache(torch.zeros(1, cfg.text_len, cfg.text_dim, device="meta", dtype=torch.bfloat16))
    x = torch.zeros(1, 16, 3, 60, 104, device="meta")
    t = torch.full((1, 3), 500.0, device="meta")
    assert (
        counted(lambda: model(x, t, text, memory=memory))
        == perf.prompt_flops(cfg) + perf.forward_flops(cfg, video, 21).total
    )
    assert (
        counted(lambda: model(x, t, text, memory=memory)) == perf.forward_flops(cfg, video, 21).total
    )  # text K/V cached


def test_measured_peak_is_positive_and_says_what_it_is():
    tflops, source = perf.measure_peak_tflops("cpu", torch.float32, budget_s=0.05)
    assert tflops > 0 and source.startswith("measured:") and "float32" in source


def test_report_prints_the_arithmetic():
    text = perf.report(WAN, "slow_fast", peak_tflops=790)
    assert "32760" in text and "200.8 TFLOP" in text and "441.7 GFLOP" in text and "47.22 pixel" in text
    assert "full grows" in perf.report(WAN, "full", chunk_index=159) and "748800" in perf.report(
        WAN, "full", chunk_index=159
    )
