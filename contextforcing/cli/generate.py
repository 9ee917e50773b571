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
from contextforcing.cli.args import add_model_args, examples, load_pipeline, model_source
from contextforcing.config import VideoConfig
from contextforcing.errors import Interrupted, UserError, quote
from contextforcing.io.outputs import InterruptGuard, OutputLock
from contextforcing.io.video import VideoWriter, check_output, publish_video, read_init_clip
from contextforcing.memory.spec import RECACHE_MODES, MemorySpec, check_recache
from contextforcing.parts import ModelSource
from contextforcing.pipeline import Generation, Pipeline, check_seed, resolve_memory
from contextforcing.runtime.limits import check_stream
from contextforcing.sampling.switches import Prompt, place_prompts, read_prompt_script, script_prompts


@dataclass
class GenerationRequest:
    prompt: str | None
    seconds: float
    out: str
    model: ModelSource = field(default_factory=ModelSource)  # which model (the embedded one by default)
    memory: str = "slow_fast"
    memory_options: dict = field(default_factory=dict)
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    switches: list[tuple[float, str]] = field(default_factory=list)  # (seconds of video, prompt)
    flush_on_switch: bool = False
    recache: str = "window"  # window | longlive: what a prompt switch re-encodes
    prompts: str | None = None  # JSONL prompt script: {"at": SECONDS, "prompt": TEXT} per line
    init_video: str | None = None
    init_image: str | None = None


def plan_prompts(req: GenerationRequest, video: VideoConfig, chunks: int) -> list[Prompt]:
    """Every prompt of the run on the chunk it takes effect from: --prompt, --switch or a --prompts script."""
    if req.prompts is not None:
        if req.switches:
            raise UserError("use either --prompts or --switch, not both")
        asked, source = script_prompts(req.prompt, read_prompt_script(req.prompts), req.prompts), req.prompts
    elif req.prompt is None:
        raise UserError("give a --prompt (or a --prompts script)")
    else:
        asked = [Prompt(req.prompt, at=0.0)] + [Prompt(p, at=at) for at, p in sorted(req.switches)]
        source = "--switch"
    placed = place_prompts(asked, video, chunks, source)
    return [dataclasses.replace(p, flush=req.flush_on_switch) for p in placed]


# -- the run --------------------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    """What a request resolves to before any weights are read: memory, video, frames, prompts, init clip."""

    spec: MemorySpec
    video: VideoConfig
    num_frames: int
    prompts: list[Prompt]
    init: dict | None

    def prompts_json(self) -> list[dict]:
        """The sidecar's `prompts`: each where it was asked for, where it landed, and its first frame in the mp4."""
        stride_t, primed = self.video.vae_stride_t, self.init is not None
        return [
            {**p.to_json(self.video), "pixel_frame": _first_pixel(p.chunk * self.video.chunk_frames, stride_t, primed)}
            for p in self.prompts
        ]


def plan_run(req: GenerationRequest) -> RunPlan:
    """Every cheap check of a request (script, memory policy and whether it fits the device, init file), before
    any weight is read."""
    trained = parts.trained_defaults(req.model)
    video = trained.preset.video
    spec = resolve_memory(trained.memory, {"policy": req.memory, **req.memory_options}, video.chunk_frames)
    check_recache(spec, req.recache, req.flush_on_switch)
    num_frames = video.latent_frames_for(req.seconds)
    prompts = plan_prompts(req, video, num_frames // video.chunk_frames)
    init_pixels, init = read_init_clip(video, req.init_video, req.init_image)
    device, dtype = parts.resolve_device(req.device, req.dtype)
    init_frames = 0 if init_pixels is None else 1 + (init_pixels.shape[2] - 1) // video.vae_stride_t
    check_stream(
        spec,
        trained.sampling,
        trained.preset.model,
        video,
        dtype=dtype,
        device=device,
        max_frames=num_frames + init_frames,
    )
    return RunPlan(spec, video, num_frames, prompts, init)


def run_generation(req: GenerationRequest, progress: bool = True) -> dict:
    """Generate `req.out` (mp4) and its sidecar (.json), published together (`outputs.publish_with`).

    A second run on the same --out is refused while this one runs (`outputs.OutputLock`). Ctrl-C, SIGTERM or
    SIGHUP stops the generation at once and keeps a playable mp4 of the chunks done, with a sidecar marked
    interrupted; the write and the publish are never cut short, not even by a second signal
    (`outputs.InterruptGuard`).
    """
    out = check_output(req.out)
    check_seed(req.seed)
    plan = plan_run(req)
    with OutputLock(out.with_name(f".{out.name}.lock"), f"output {out}", remove=True), InterruptGuard() as guard:
        try:
            with guard.interruptible():
                pipeline = load_pipeline(req.model, req.device, req.dtype, req.threads)
                generation = _start(pipeline, plan, req)
        except KeyboardInterrupt:
            raise Interrupted("nothing was written", guard.signum) from None
        writer = VideoWriter(out, fps=plan.video.fps)
        try:
            began = time.perf_counter()
            chunks, stopped = _stream_into(writer, generation, guard, progress)
            sidecar = {
                **generation.record(chunks, stopped or guard.interrupted),
                "prompts": plan.prompts_json(),
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
    return pipeline.stream(
        plan.prompts[0].text,
        req.seconds,
        seed=req.seed,
        memory=plan.spec,
        switches=plan.prompts[1:],
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
    values["model"] = model_source(args)
    values["memory_options"] = parse_overrides(args.memory_opt or [])
    values["switches"] = [_parse_switch(s) for s in (args.switch or [])]
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
        choices=RECACHE_MODES,
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
