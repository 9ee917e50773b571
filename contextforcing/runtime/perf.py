"""Analytic cost model of streaming generation, derived from the configs only.

Counts the FLOPs of matrix products (2 per multiply-add), which is what tensor cores execute and what
`torch.utils.flop_counter.FlopCounterMode` counts; element-wise work (norms, RoPE, adaLN, softmax,
GELU) is left out. For one forward of the causal DiT on a chunk of N = frames x T tokens that attends
K keys (the stored frames the memory hands over plus the chunk itself) and a text of P tokens:

    linear            2 N L (4 d^2 + 2 d^2 + 2 d f)    self-attn q,k,v,o; cross-attn q,o; FFN
    self-attention    4 N K d L                        QK^T and AV, summed over heads (H x D = d)
    cross-attention   4 N P d L                        against the cached text keys/values
    embed and head    2 N d (c_in + c_out) p + 2 F (f_t d + d^2 + 6 d^2)   patchify, head, timestep MLPs

Cross-attention keys/values of the text (and the text embedding) are computed once per prompt
(`prompt_flops`), not per pass. A chunk is `steps` denoising passes plus one commit pass, every one
attending the same keys. The bound of a memory policy is its capacity (sink + slow + window frames,
current chunk included); `full` attends every frame so far, so its keys grow with the chunk index.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from contextforcing.config import ModelConfig, Preset, SamplingConfig, VideoConfig
from contextforcing.errors import format_bytes
from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.spec import POLICY_OPTIONS, MemorySpec, make_spec, tier_params

POLICIES = tuple(POLICY_OPTIONS)


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one forward pass on one chunk, by kind."""

    linear: float
    self_attention: float
    cross_attention: float
    embed_head: float

    @property
    def total(self) -> float:
        return self.linear + self.self_attention + self.cross_attention + self.embed_head

    def scaled(self, factor: float) -> "ForwardFlops":
        return ForwardFlops(*(factor * v for v in asdict(self).values()))

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class ChunkCost:
    """Analytic cost of one chunk: `passes` forwards (denoising steps + commit) over the same keys; the commit pass
    computes `commit_skipped` less (it runs without its flow: the last layer stops at its keys and values, and
    the head is skipped)."""

    frames: int  # latent frames of the chunk
    tokens: int  # query tokens of the chunk
    keys: int  # self-attention keys per pass (attended stored frames + the chunk itself)
    attended_frames: int  # latent frames behind `keys`
    passes: int
    forward: ForwardFlops  # one pass
    commit_skipped: float = 0.0

    @property
    def total(self) -> float:
        return self.passes * self.forward.total - self.commit_skipped

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "tokens": self.tokens,
            "keys": self.keys,
            "attended_frames": self.attended_frames,
            "passes": self.passes,
            "forward": self.forward.to_dict(),
            "commit_skipped": self.commit_skipped,
            "total": self.total,
        }


# -- sizes -------------------------------------------------------------------------------------------------
def tokens_per_chunk(model: ModelConfig, video: VideoConfig, frames: int | None = None) -> int:
    return (video.chunk_frames if frames is None else frames) * video.tokens_per_frame(model)


def policy_capacity(spec: MemorySpec | str, chunk_frames: int) -> int | None:
    """Most latent frames one chunk attends (current chunk included); None for the unbounded `full`."""
    spec = make_spec(spec) if isinstance(spec, str) else spec
    return tier_params(spec, chunk_frames).capacity


def attended_frames_bound(spec: MemorySpec | str, chunk_frames: int, chunk_index: int) -> int:
    """Upper bound on the frames chunk `chunk_index` attends (itself included): every frame so far,
    capped by the policy's capacity. Bounded policies reach it once their tiers are full; for
    `slow_fast` that needs a full slow memory (promotion-dependent, around chunk 26 with the defaults
    and a promotion every second chunk), and `dedupe` can keep it a frame or so below. The benchmark
    counts the frames each chunk actually attended, from the memory's trace."""
    so_far = (chunk_index + 1) * chunk_frames
    cap = policy_capacity(spec, chunk_frames)
    return so_far if cap is None else min(so_far, cap)


# -- FLOPs -------------------------------------------------------------------------------------------------
def linear_flops_per_token(model: ModelConfig) -> float:
    """Self-attention q,k,v,o + cross-attention q,o (text K/V cached) + FFN, all layers."""
    d, f = model.dim, model.ffn_dim
    return 2.0 * model.num_layers * (4 * d * d + 2 * d * d + 2 * d * f)


def forward_flops(
    model: ModelConfig, video: VideoConfig, attended_frames: int, *, frames: int | None = None, batch: int = 1
) -> ForwardFlops:
    """One forward on a chunk of `frames` latent frames attending `attended_frames` frames (itself included)."""
    frames = video.chunk_frames if frames is None else frames
    t = video.tokens_per_frame(model)
    n, keys = frames * t, attended_frames * t
    d, layers = model.dim, model.num_layers
    patch = math.prod(model.patch_size)
    linear = n * linear_flops_per_token(model)
    self_attn = 4.0 * n * keys * d * layers
    cross_attn = 4.0 * n * model.text_len * d * layers
    embed_head = 2.0 * n * d * (model.in_dim + model.out_dim) * patch
    embed_head += 2.0 * frames * (model.freq_dim * d + d * d + 6 * d * d)  # per-frame timestep MLP + adaLN projection
    return ForwardFlops(linear, self_attn, cross_attn, embed_head).scaled(batch)


def commit_skipped_flops(
    model: ModelConfig, video: VideoConfig, attended_frames: int, *, frames: int | None = None, batch: int = 1
) -> float:
    """What a commit pass without its flow does not compute: the last layer after its q, k, v (its output
    projection, self-attention, cross-attention's q and o and attention, the feed-forward) and the head."""
    frames = video.chunk_frames if frames is None else frames
    t = video.tokens_per_frame(model)
    n, keys, d = frames * t, attended_frames * t, model.dim
    last_layer = 2.0 * n * (d * d + 2 * d * d + 2 * d * model.ffn_dim) + 4.0 * n * (keys + model.text_len) * d
    head = 2.0 * n * d * model.out_dim * math.prod(model.patch_size)
    return batch * (last_layer + head)


def prompt_flops(model: ModelConfig, batch: int = 1) -> float:
    """Once per prompt: the text embedding MLP and every layer's cross-attention keys and values."""
    d, p = model.dim, model.text_len
    return batch * (2.0 * p * (model.text_dim * d + d * d) + model.num_layers * 2.0 * p * 2 * d * d)


def chunk_cost(
    model: ModelConfig,
    video: VideoConfig,
    attended_frames: int,
    *,
    steps: int | None = None,
    frames: int | None = None,
    batch: int = 1,
) -> ChunkCost:
    """`steps` denoising passes (default: SamplingConfig's 4) plus one commit pass, same keys each."""
    frames = video.chunk_frames if frames is None else frames
    steps = len(SamplingConfig().denoising_steps) if steps is None else steps
    t = video.tokens_per_frame(model)
    fwd = forward_flops(model, video, attended_frames, frames=frames, batch=batch)
    skipped = commit_skipped_flops(model, video, attended_frames, frames=frames, batch=batch)
    return ChunkCost(frames, frames * t, attended_frames * t, attended_frames, steps + 1, fwd, skipped)


# -- memory ------------------------------------------------------------------------------------------------
def kv_bytes(
    spec: MemorySpec | str, model: ModelConfig, video: VideoConfig, dtype: torch.dtype, max_frames: int | None = None
) -> dict:
    """Bytes of the context memory of one stream (batch 1).

    `attended`: the capacity the policy attends (itself included) x frame bytes x layers.
    `allocated`: the K/V store `ContextMemory` preallocates (capacity, plus a sink's worth of slots for EMA
    folding, plus one staging slot only for a tiered surprisal promotion decided on noisy passes);
    `full` needs `max_frames`. What reading the store costs on top, per view mode:
    `views_gather`: the gathered, rotated K and the gathered V of the stored frames a chunk attends, which the
    gather reference (tests/memory/gather_reference.py) keeps per layer for the whole chunk;
    `views_slots`: the slots view's rotated-key buffers, one per layer over the slots the policy can use (the default).
    `resident_*`: the store plus that mode's views, what is held while a chunk runs (weights and
    activations aside). tests/runtime/test_perf.py checks every figure against the tensors a `ContextMemory` holds.
    """
    spec = make_spec(spec) if isinstance(spec, str) else spec
    layout = MemoryLayout.for_model(model, video)
    per_frame = layout.frame_bytes(dtype) * layout.num_layers  # K and V
    params = tier_params(spec, video.chunk_frames)
    cap = params.capacity if params.capacity is not None else max_frames
    out = {"frame_bytes_all_layers": per_frame, "capacity_frames": params.capacity}
    if cap is None:
        return {
            **out,
            **dict.fromkeys(
                ("attended", "allocated", "views_gather", "views_slots", "resident_gather", "resident_slots")
            ),
        }
    slots = ContextMemory.slot_count(spec, video.chunk_frames, max_frames)
    allocated = slots * per_frame
    gather, rotated = (cap - video.chunk_frames) * per_frame, slots * per_frame // 2
    return {
        **out,
        "attended": cap * per_frame,
        "allocated": allocated,
        "views_gather": gather,
        "views_slots": rotated,
        "resident_gather": allocated + gather,
        "resident_slots": allocated + rotated,
    }


# -- the floor ---------------------------------------------------------------------------------------------
def floor(cost: ChunkCost, video: VideoConfig, peak_tflops: float) -> dict:
    """Time the chunk's FLOPs take at `peak_tflops`, and the frame rates that time allows."""
    seconds = cost.total / (peak_tflops * 1e12)
    return {
        "seconds": seconds,
        "latent_fps": cost.frames / seconds,
        "pixel_fps": cost.frames * video.vae_stride_t / seconds,
    }


def measure_peak_tflops(device: torch.device | str, dtype: torch.dtype, budget_s: float = 1.0) -> tuple[float, str]:
    """Best achieved TFLOP/s of a square matrix product on `device` in `dtype` (a measured peak, not a
    datasheet one). Grows the size until one product takes >= 20 ms, then keeps the best of repeats."""
    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    n, best = 512, 0.0
    limit = 16384 if device.type == "cuda" else 4096
    deadline = time.perf_counter() + budget_s
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up
        sync()
        began = time.perf_counter()
        a @ b
        sync()
        took = time.perf_counter() - began
        if took >= 0.02 or n >= limit:
            break
        n *= 2
    repeats = 0
    while repeats < 3 or (time.perf_counter() < deadline and repeats < 50):
        began = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2.0 * n**3 / (time.perf_counter() - began) / 1e12)
        repeats += 1
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    return best, f"measured: best of {repeats} {n}x{n} {str(dtype).replace('torch.', '')} matmuls on {device}{threads}"


def report(
    preset: Preset,
    spec: MemorySpec | str = "slow_fast",
    *,
    peak_tflops: float | None = None,
    steps: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    chunk_index: int | None = None,
) -> str:
    """The floor arithmetic as text (the benchmark prints it; docs/performance.md quotes it)."""
    spec = make_spec(spec) if isinstance(spec, str) else spec
    model, video = preset.model, preset.video
    cap = policy_capacity(spec, video.chunk_frames)
    if chunk_index is None:
        chunk_index = 10**6 if cap is not None else 0
    frames = attended_frames_bound(spec, video.chunk_frames, chunk_index)
    cost = chunk_cost(model, video, frames, steps=steps)
    f = cost.forward
    d, ff, layers = model.dim, model.ffn_dim, model.num_layers
    t = video.tokens_per_frame(model)
    kv = kv_bytes(spec, model, video, dtype, max_frames=(chunk_index + 1) * video.chunk_frames)
    where = "steady state (capacity)" if cap is not None else f"chunk {chunk_index} (full grows with the video)"
    lines = [
        f"policy {spec.name}: {where}, {frames} latent frames attended (current chunk included)",
        f"tokens per frame        {video.latent_height}/{model.patch_size[1]} x {video.latent_width}/{model.patch_size[2]} = {t}",
        f"tokens per chunk  N     {video.chunk_frames} x {t} = {cost.tokens}",
        f"keys per pass     K     {frames} x {t} = {cost.keys}",
        f"linear per token        2 x {layers} x (4 x {d}^2 + 2 x {d}^2 + 2 x {d} x {ff}) = "
        f"{linear_flops_per_token(model) / 1e9:.4g} GFLOP",
        f"linear per forward      N x that = {_si(f.linear)}",
        f"self-attn per forward   4 x N x K x {d} x {layers} = {_si(f.self_attention)}",
        f"cross-attn per forward  4 x N x {model.text_len} x {d} x {layers} = {_si(f.cross_attention)}",
        f"embed/head per forward  {_si(f.embed_head)}",
        f"per forward             {_si(f.total)}",
        f"per chunk               {cost.passes} passes ({cost.passes - 1} denoising + 1 commit, less the commit's "
        f"last layer and head: {_si(cost.commit_skipped)}) = {_si(cost.total)}"
        f" for {video.chunk_frames * video.vae_stride_t} pixel frames",
        f"once per prompt         {_si(prompt_flops(model))} (text embedding + cross-attn K/V)",
    ]
    if kv["attended"] is not None:
        lines.append(
            f"KV cache ({str(dtype).replace('torch.', '')})       {kv['capacity_frames'] or frames} frames x "
            f"{_bytes(kv['frame_bytes_all_layers'])} = {_bytes(kv['attended'])}; allocated "
            f"{_bytes(kv['allocated'])}"
        )
        lines.append(
            f"reading it               slots view: rotated-key buffers {_bytes(kv['views_slots'])}, store + "
            f"buffers {_bytes(kv['resident_slots'])} (gather reference: copies per chunk "
            f"{_bytes(kv['views_gather'])}, store + copies {_bytes(kv['resident_gather'])})"
        )
    if peak_tflops:
        fl = floor(cost, video, peak_tflops)
        lines.append(
            f"floor at {peak_tflops:g} TFLOP/s   {fl['seconds'] * 1e3:.4g} ms per chunk = "
            f"{fl['latent_fps']:.4g} latent / {fl['pixel_fps']:.4g} pixel frames per second (transformer only)"
        )
    return "\n".join(lines)


def _si(flops: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.4g} {unit}"
    return f"{flops:.4g} FLOP"


_bytes = format_bytes
