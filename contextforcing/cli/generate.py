"""The `generate` job: a command-line request -> a `Generation` (the Python API) -> an mp4 written as it grows,
and its JSON sidecar, published together.

Only plumbing lives here: checking a request before any weights are read, the output lock, Ctrl-C handling
and the atomic publish (`outputs`). Generating is `Pipeline.stream` (contextforcing/pipeline.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from contextforcing import parts
from contextforcing.cli.args import add_model_args, examples
from contextforcing.config import ModelConfig, SamplingConfig, VideoConfig, from_dict, get_preset
from contextforcing.errors import Interrupted, UserError, quote
from contextforcing.io.outputs import InterruptGuard, OutputLock
from contextforcing.io.video import VideoWriter, check_output, publish_video
from contextforcing.memory.policies import MemorySpec, check_recache, make_spec
from contextforcing.pipeline import Generation, Pipeline, Prompt, check_seed, read_init_clip, resolve_memory
from contextforcing.runtime.limits import check_stream
from contextforcing.sampling.switches import place_script, place_switches, read_prompt_script


@dataclass
class GenerationRequest:
    prompt: str | None
    seconds: float
    out: str
    preset: str = parts.RANDOM_DEFAULT_PRESET
    memory: str = "slow_fast"
    memory_options: dict = field(default_factory=dict)
    seed: int = 0
    random_init: bool = False
    device: str | None = None
    dtype: str | None = None
    switches: list[tuple[float, str]] = field(default_factory=list)  # (seconds of video, prompt)
    flush_on_switch: bool = False
    recache: str = "window"  # window | longlive: what a prompt switch re-encodes
    wan_dir: str | None = None  # UMT5 + VAE, and the base DiT when no checkpoint is given
    checkpoint: str | None = None  # DiT weights in any format `model.checkpoints` reads
    checkpoint_format: str | None = None
    use_ema: bool | None = None  # None: EMA, unless the LoRA was trained on the raw generator (LongLive)
    lora: str | None = None
    lora_alpha: float | None = None  # None: stored in the adapter, else alpha = rank
    num_heads: int | None = None  # None: the preset's
    prompts: str | None = None  # JSONL prompt script: {"at": SECONDS, "prompt": TEXT} per line
    init_video: str | None = None
    init_image: str | None = None


def pipeline_for(req: GenerationRequest) -> Pipeline:
    return Pipeline.from_parts(
        parts.load(
            req.preset,
            random_init=req.random_init,
            wan_dir=req.wan_dir,
            checkpoint=req.checkpoint,
            checkpoint_format=req.checkpoint_format,
            use_ema=req.use_ema,
            lora=req.lora,
            lora_alpha=req.lora_alpha,
            num_heads=req.num_heads,
            seed=req.seed,
            device=req.device,
            dtype=req.dtype,
        )
    )


def is_embedded(req: GenerationRequest) -> bool:
    """No weight flags: the embedded default model."""
    return not (req.random_init or req.wan_dir or req.checkpoint)


def plan_prompts(req: GenerationRequest, video, chunks: int) -> list[dict]:
    """Every prompt of the run with the chunk it takes effect from: --prompt, --switch or a --prompts script."""
    if req.prompts is not None:
        if req.switches:
            raise UserError("use either --prompts or --switch, not both")
        return place_script(req.prompt, read_prompt_script(req.prompts), video, chunks, req.prompts)
    if req.prompt is None:
        raise UserError("give a --prompt (or a --prompts script)")
    entries = [(None, 0.0, req.prompt)] + [(None, at, p) for at, p in sorted(req.switches)]
    return place_switches(entries, video, chunks, lambda _, at: f"--switch at {at:g} s")


# -- the run --------------------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    """What a request resolves to before any weights are read: memory, video, frames, prompts, init clip."""

    spec: MemorySpec
    video: VideoConfig
    num_frames: int
    placed: list[dict]
    init: dict | None


def plan_run(req: GenerationRequest, pipeline: Pipeline | None = None) -> RunPlan:
    """Every cheap check of a request (script, memory policy and whether it fits the device, init file)."""
    if pipeline is None and is_embedded(req):
        parts.check_embedded_preset(req.preset)
        config = parts.embedded_config()
        video = from_dict(VideoConfig, config["video"], where="embedded video")
        model_cfg = from_dict(ModelConfig, config["model"], where="embedded model")
        trained, sampling = parts.embedded_memory(config), parts.embedded_sampling(config)
    else:
        preset = pipeline.preset if pipeline else get_preset(req.preset)
        video, model_cfg = preset.video, preset.model
        trained = pipeline.memory if pipeline else make_spec(parts.FIELD_MEMORY)
        sampling = pipeline.sampling if pipeline else SamplingConfig()
    spec = resolve_memory(trained, {"policy": req.memory, **req.memory_options}, video.chunk_frames)
    check_recache(spec, req.recache, req.flush_on_switch)
    num_frames = video.latent_frames_for(req.seconds)
    placed = plan_prompts(req, video, num_frames // video.chunk_frames)
    init_pixels, init = read_init_clip(video, req.init_video, req.init_image)
    device, dtype = (pipeline.device, pipeline.model.dtype) if pipeline else parts.resolve_device(req.device, req.dtype)
    init_frames = 0 if init_pixels is None else 1 + (init_pixels.shape[2] - 1) // video.vae_stride_t
    check_stream(spec, sampling, model_cfg, video, dtype=dtype, device=device, max_frames=num_frames + init_frames)
    for p in placed:  # where each prompt starts in the written mp4
        p["pixel_frame"] = _first_pixel(p["frame"], video.vae_stride_t, primed=init is not None)
    return RunPlan(spec, video, num_frames, placed, init)


def run_generation(req: GenerationRequest, pipeline: Pipeline | None = None, progress: bool = True) -> dict:
    """Generate `req.out` (mp4) and its sidecar (.json), published together (`outputs.publish_with`).

    A second run on the same --out is refused while this one runs (`outputs.OutputLock`). Ctrl-C, SIGTERM or
    SIGHUP stops the generation at once and keeps a playable mp4 of the chunks done, with a sidecar marked
    interrupted; the write and the publish are never cut short, not even by a second signal
    (`outputs.InterruptGuard`).
    """
    out = check_output(req.out)
    check_seed(req.seed)
    plan = plan_run(req, pipeline)
    with OutputLock(out.with_name(f".{out.name}.lock"), f"output {out}", remove=True), InterruptGuard() as guard:
        try:
            with guard.interruptible():
                pipeline = pipeline or pipeline_for(req)
                generation = _start(pipeline, plan, req)
        except KeyboardInterrupt:
            raise Interrupted("nothing was written", guard.signum) from None
        writer = VideoWriter(out, fps=plan.video.fps)
        try:
            began = time.perf_counter()
            chunks, stopped = _stream_into(writer, generation, guard, progress)
            sidecar = {
                **generation.record(chunks, stopped or guard.interrupted),
                "prompts": plan.placed,
                "prompt_script": req.prompts,
                "init": _init_record(plan, generation),
                "wall_seconds": time.perf_counter() - began,
            }
            published = publish_video(writer, out, sidecar)
        except BaseException:
            writer.discard()
            raise
        if stopped or guard.interrupted:  # raised inside the guard, so that it says what was kept
            kept = (
                f"kept {out} ({writer.frames_written} frames) and its sidecar" if published else "nothing was written"
            )
            raise Interrupted(kept, guard.signum)
    return sidecar


def _start(pipeline: Pipeline, plan: RunPlan, req: GenerationRequest) -> Generation:
    switches = [Prompt(p["prompt"], p["chunk"], req.flush_on_switch) for p in plan.placed[1:]]
    return pipeline.stream(
        plan.placed[0]["prompt"],
        req.seconds,
        seed=req.seed,
        memory=plan.spec,
        switches=switches,
        flush_on_switch=req.flush_on_switch,
        recache=req.recache,
        init_video=req.init_video,
        init_image=req.init_image,
    )


def _init_record(plan: RunPlan, generation: Generation) -> dict | None:
    if plan.init is None:
        return None
    return {**plan.init, "latent_frames": generation.init_frames, "emitted": False, "decoder_primed": True}


def _stream_into(writer: VideoWriter, generation: Generation, guard: InterruptGuard, progress: bool):
    """Chunks into the mp4 until the end or the first Ctrl-C (which may stop a chunk, never a write);
    returns the chunks and whether a Ctrl-C stopped it."""
    chunks, stopped = [], False
    bar = tqdm(total=generation.chunks_total, unit="chunk", disable=not progress, desc=f"generate {writer.path.name}")
    try:
        while True:
            with guard.interruptible():
                chunk = next(generation, None)
                if chunk is None:
                    break
            writer.write(chunk.frames)
            chunks.append(chunk)
            bar.update()
    except KeyboardInterrupt:
        stopped = True  # what was written is kept
    finally:
        bar.close()
    return chunks, stopped


def _first_pixel(frame: int, stride_t: int, primed: bool) -> int:
    """First mp4 frame of latent frame `frame`: a fresh causal decoder gives latent 0 one pixel frame."""
    if primed:
        return frame * stride_t
    return 0 if frame == 0 else 1 + (frame - 1) * stride_t


def request_from_args(args) -> GenerationRequest:
    from contextforcing.config import parse_overrides

    fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["memory_options"] = parse_overrides(args.memory_opt or [])
    values["switches"] = [_parse_switch(s) for s in (args.switch or [])]
    values["preset"] = parts.default_preset(args.preset, args.wan_dir, args.checkpoint, random_init=args.random_init)
    values.setdefault("prompt", None)
    return GenerationRequest(**values)


def _parse_switch(text: str) -> tuple[float, str]:
    """`SECONDS:PROMPT`, seconds of video as --prompts scripts and the Python API's `switches=` count them."""
    at, sep, prompt = text.partition(":")
    try:
        seconds = float(at)
    except ValueError:
        seconds = math.nan
    if not sep or not prompt.strip() or not 0 < seconds < math.inf:
        raise UserError(f"--switch {quote(text)} must look like SECONDS:PROMPT with SECONDS > 0, e.g. 10:a blue cube")
    return seconds, prompt.strip()


# -- the command ----------------------------------------------------------------------------------------------
_EXAMPLE_PROMPT = "warm room, hold, lights on, black ball"  # the embedded model reads the panorama grammar

_GENERATE_DESCRIPTION = """Generate a video chunk by chunk and write it to an mp4 as the chunks finish, with a JSON
sidecar beside it (config, seed, timings, the memory's trace, version and command line). With no weight flags:
the embedded world model and the memory it was trained with. Prompt switches (--switch, --prompts) are given in
seconds of video and land on the nearest chunk boundary."""


def register(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="generate a video, streaming it to an mp4 as chunks finish",
        description=_GENERATE_DESCRIPTION,
        epilog=examples(
            f'contextforcing generate --prompt "{_EXAMPLE_PROMPT}" --seconds 20 --out video.mp4',
            f'contextforcing generate --prompt "{_EXAMPLE_PROMPT}" --seconds 20 '
            f'--switch "10:{_EXAMPLE_PROMPT.replace("hold", "pan left")}" --out switched.mp4',
            "contextforcing generate --prompts tour.jsonl --seconds 120 --memory rolling --memory-opt window=12 "
            "--out rolling.mp4",
            "contextforcing generate --preset tiny --random-init --prompt 'a red ball' --seconds 20 --out random.mp4",
            'contextforcing generate --wan-dir Wan2.1-T2V-1.3B --checkpoint model.pt --prompt "a fox in the snow" '
            "--seconds 60 --out fox.mp4",
        ),
    )
    add_model_args(gen)
    gen.add_argument("--prompt", help="starting prompt (optional when --prompts starts at 0 s)")
    gen.add_argument(
        "--prompts",
        metavar="SCRIPT.jsonl",
        help='prompt script, one {"at": SECONDS, "prompt": TEXT} per line; switches land on chunk boundaries',
    )
    gen.add_argument("--init-video", help="continue this video: its last frames are encoded and prefilled into memory")
    gen.add_argument("--init-image", help="start from this image: encoded and prefilled into memory")
    gen.add_argument("--out", required=True, help="output .mp4; a .json sidecar is written beside it")
    gen.add_argument(
        "--switch",
        action="append",
        metavar="SECONDS:PROMPT",
        help="switch to PROMPT at SECONDS of video (the nearest chunk boundary, as --prompts places them); repeatable",
    )
    gen.add_argument(
        "--flush-on-switch",
        action="store_true",
        help="drop sink and slow memory at a switch (with --recache longlive: LongLive's global_sink false)",
    )
    gen.add_argument(
        "--recache",
        choices=("window", "longlive"),
        default="window",
        help="what a switch re-encodes: the recent frames the next chunk attends (window), or exactly "
        "what LongLive 1.0 re-encodes (longlive; --memory sink)",
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_run)


def _run(args) -> int:
    sidecar = run_generation(request_from_args(args), progress=not args.quiet)
    print(f"wrote {args.out} ({sidecar['pixel_frames']} frames, {sidecar['latent_frames']} latent) and its sidecar")
    return 0
