"""Train and evaluate the world codec (`contextforcing.codecs.world`).

    python -m contextforcing.training.world_codec train [--world panorama] [--steps 4000] [--minutes 14] [--out PATH]
    python -m contextforcing.training.world_codec eval [--world panorama] [--weights PATH] [--worlds 16]

Training clips are rendered on the fly from training prompts/scripts and seeds only (occlusion world:
`sample_training_prompt`; panorama world: `sample_training_script`; seeds below `EVAL_SEED_BASE`; the
held-out worlds are never drawn). Each world has its own weights file (`DEFAULT_PATH`, `PANORAMA_PATH`). Each step takes a batch of latent
frames (4 pixel frames each, the first of a clip as 1 frame repeated) from a pool of rendered clips that
is refreshed every `refresh` steps; latent frames with occlusion transitions or scene events inside are
drawn more often, fully hidden (uniform) ones less. Loss: pixel L1 + L2, plus a small latent L2 with
latent noise during training (a deterministic autoencoder whose latents stay O(1) and whose decoder
tolerates small latent errors, as a generator's latents will have). The latent statistics are measured
on fresh training clips after training and stored with the weights.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from contextforcing.codecs.world import (
    DEFAULT_PATH,
    PANORAMA_PATH,
    WorldCodec,
    WorldCodecModel,
    load_world_codec,
    save_world_codec,
)
from contextforcing.data.world.prompts import EVAL_SEED_BASE, sample_training_prompt
from contextforcing.data.world.render import render
from contextforcing.data.world.track import WorldSpec, simulate

STRIDE_T = 4
WORLDS = ("occlusion", "panorama")
WEIGHTS_PATH = {"occlusion": DEFAULT_PATH, "panorama": PANORAMA_PATH}


def _clip(rng: np.random.Generator, seconds: float, world: str = "occlusion"):
    """A rendered training clip and its per-frame (hidden fraction, scene state, camera position)."""
    if world == "panorama":
        from contextforcing.data.world import panorama

        script = panorama.sample_training_script(rng, seconds)
        track = panorama.simulate(panorama.PanoramaSpec(script, int(rng.integers(EVAL_SEED_BASE)), seconds))
        signals = ((~track.lit).astype(np.float32), track.frame_state, track.camera_x)
        return signals, panorama.render(track)
    spec = WorldSpec(sample_training_prompt(rng), int(rng.integers(EVAL_SEED_BASE)), seconds)
    track = simulate(spec)
    return (track.coverage, track.frame_state, np.zeros(track.n_frames, np.int32)), render(track)


def _groups(frames: np.ndarray, coverage: np.ndarray, states: np.ndarray, camera: np.ndarray):
    """uint8 [T, H, W, 3] -> latent-frame groups uint8 [F, 4, H, W, 3] and a sampling weight per group."""
    t = len(frames)
    f = 1 + (t - 1) // STRIDE_T
    idx = np.concatenate([np.zeros((1, STRIDE_T), int), 1 + np.arange((f - 1) * STRIDE_T).reshape(f - 1, STRIDE_T)])
    cov, st, cam = coverage[idx], states[idx], camera[idx]
    weight = np.ones(f)
    weight[(cov >= 1).all(1)] = 0.3  # uniform frames: easy
    weight[cam.max(1) != cam.min(1)] = 2.0  # the camera pans within the latent frame
    transition = (cov.max(1) != cov.min(1)) | ((cov > 0) & (cov < 1)).any(1)
    weight[transition] = 4.0
    weight[st.max(1) != st.min(1)] = 2.0
    return frames[idx], weight


class ClipPool:
    """Latent-frame groups of `clips` rendered training clips, redrawn on `refresh()`."""

    def __init__(self, rng: np.random.Generator, clips: int, seconds: float, world: str = "occlusion"):
        self.rng, self.clips, self.seconds, self.world = rng, clips, seconds, world
        self.refresh()

    def refresh(self) -> None:
        groups, weights = [], []
        for _ in range(self.clips):
            signals, frames = _clip(self.rng, self.seconds, self.world)
            g, w = _groups(frames, *signals)
            groups.append(g)
            weights.append(w)
        self.groups = np.concatenate(groups)
        w = np.concatenate(weights)
        self.p = w / w.sum()

    def batch(self, size: int) -> torch.Tensor:
        """[N, 12, H, W] float in [-1, 1]."""
        pick = self.rng.choice(len(self.groups), size, p=self.p)
        x = torch.from_numpy(self.groups[pick]).float().div_(127.5).sub_(1.0)  # [N, 4, H, W, 3]
        return x.permute(0, 1, 4, 2, 3).reshape(size, 3 * STRIDE_T, *x.shape[2:4])


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


@torch.no_grad()
def latent_stats(
    model: WorldCodecModel, rng: np.random.Generator, clips: int = 64, seconds: float = 10.0, world: str = "occlusion"
):
    model.eval()
    zs = []
    pool = ClipPool(rng, clips, seconds, world)
    x = torch.from_numpy(pool.groups).float().div_(127.5).sub_(1.0)
    x = x.permute(0, 1, 4, 2, 3).reshape(len(x), 3 * STRIDE_T, *x.shape[2:4])
    for i in range(0, len(x), 256):
        zs.append(model.encoder(x[i : i + 256]))
    z = torch.cat(zs).transpose(0, 1).reshape(model.config["latent_channels"], -1)
    return z.mean(1), z.std(1).clamp_min(1e-4)


@dataclass(frozen=True)
class CodecTraining:
    """How the world codec is trained (`python -m contextforcing.training.world_codec train`'s flags)."""

    steps: int = 4000
    minutes: float = 14.0  # wall-clock cap on the optimisation loop
    batch: int = 24
    lr: float = 2e-3
    clips: int = 48  # rendered clips per pool
    seconds: float = 10.0  # of each clip
    refresh: int = 100  # steps between pool refreshes
    latent_noise: float = 0.05  # added to the latents the decoder reads in training
    latent_l2: float = 1e-3
    seed: int = 0
    threads: int = 1
    log_every: int = 100
    world: str = "occlusion"

    def lr_at(self, step: int, done: float) -> float:
        """100 warm-up steps, then a cosine from lr to lr / 100 over the run (`done`: its share so far)."""
        warm = min(1.0, (step + 1) / 100)
        return self.lr * warm * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * done)))


def train(out: str | None = None, options: CodecTraining = CodecTraining()) -> WorldCodecModel:
    """Train the codec on `options.world`'s training clips until its step count or time is up; save it to `out`
    (default: the world's shipped weights file) with its latent statistics."""
    o = options
    torch.set_num_threads(o.threads)
    torch.manual_seed(o.seed)
    model = WorldCodecModel()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"world codec ({o.world} world): {n_params} parameters ({n_params * 4 / 1e6:.2f} MB fp32); {o.steps} steps "
        f"or {o.minutes} min, batch {o.batch}, {o.threads} threads",
        flush=True,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=0.0, betas=(0.9, 0.99))
    pool = ClipPool(np.random.default_rng([o.seed, 1]), o.clips, o.seconds, o.world)
    start = time.time()
    step = _optimise(model, opt, pool, o, start)
    train_s = time.time() - start
    mean, std = latent_stats(model, np.random.default_rng([o.seed, 2]), world=o.world)
    model.latent_mean.copy_(mean)
    model.latent_std.copy_(std)
    model.eval()
    print(
        f"trained {step} steps in {train_s:.0f} s; latent std per channel {[round(float(s), 3) for s in std]}",
        flush=True,
    )
    path = out or WEIGHTS_PATH[o.world]
    save_world_codec(model, path, extra=_training_record(o, step, train_s))
    print(f"saved {path}", flush=True)
    return model


def _optimise(model: WorldCodecModel, opt, pool: ClipPool, o: CodecTraining, start: float) -> int:
    """The optimisation loop; returns the steps taken (fewer than `o.steps` when the time ran out)."""
    step, run_loss, run_psnr = 0, 0.0, 0.0
    model.train()
    while step < o.steps:
        done = max(step / o.steps, (time.time() - start) / (60 * o.minutes))
        if done >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = o.lr_at(step, done)
        if step and step % o.refresh == 0:
            pool.refresh()
        x = pool.batch(o.batch)
        z = model.encoder(x)
        y = model.decoder(z + o.latent_noise * torch.randn_like(z))
        mse = torch.mean((y - x) ** 2)
        loss = torch.mean(torch.abs(y - x)) + mse + o.latent_l2 * torch.mean(z**2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss += float(loss.detach())
        run_psnr += 10 * math.log10(4.0 / max(float(torch.mean((y.detach().clamp(-1, 1) - x) ** 2)), 1e-10))
        if step % o.log_every == 0:
            print(
                f"step {step:5d}  {time.time() - start:6.0f} s  loss {run_loss / o.log_every:.4f}  "
                f"batch PSNR {run_psnr / o.log_every:.2f} dB  |z| {float(z.detach().pow(2).mean().sqrt()):.2f}  "
                f"lr {opt.param_groups[0]['lr']:.2e}",
                flush=True,
            )
            run_loss = run_psnr = 0.0
    return step


def _training_record(o: CodecTraining, step: int, train_s: float) -> dict:
    """What the weights file records about its training."""
    return {
        "world": o.world,
        "steps": step,
        "train_seconds": round(train_s, 1),
        "batch": o.batch,
        "lr": o.lr,
        "latent_noise": o.latent_noise,
        "latent_l2": o.latent_l2,
        "seed": o.seed,
        "clips_per_pool": o.clips,
        "clip_seconds": o.seconds,
        "data": f"{o.world} world clips from training prompts/scripts and seeds only (seeds < EVAL_SEED_BASE)",
    }


def _round_trip(codec: WorldCodec, truth: np.ndarray) -> tuple[np.ndarray, dict]:
    from contextforcing.io.video import to_uint8_frames

    video = torch.from_numpy(truth).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    t0 = time.perf_counter()
    z = codec.encode(video)
    t1 = time.perf_counter()
    dec = codec.stream_decoder().decode(z)
    t2 = time.perf_counter()
    frames = to_uint8_frames(dec[0])
    return frames, {
        "frames": len(truth),
        "psnr": psnr_uint8(frames, truth),
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
        "latent_mean": float(z.mean()),
        "latent_std": float(z.std()),
    }


def _occlusion_row(codec: WorldCodec, spec, metrics: bool) -> dict:
    from contextforcing.eval.world_metrics import world_metrics

    track = simulate(spec)
    frames, row = _round_trip(codec, render(track))
    row = {"prompt": spec.prompt, "seed": spec.seed, **row}
    if metrics:
        m = world_metrics(frames, track)
        row.update({f"restoration_{b}": v["restoration_error"] for b, v in m["restoration"]["buckets"].items()})
        row.update({f"permanence_{b}": v["permanence"] for b, v in m["restoration"]["buckets"].items()})
        row.update(
            {
                "drift": m["drift"]["mean"],
                "moving": m["dynamics"]["moving_fraction"],
                "palette": m["fidelity"]["palette"],
                "shape_validity": m["fidelity"]["shape_validity"],
            }
        )
    return row


def _panorama_row(codec: WorldCodec, spec, metrics: bool) -> dict:
    from contextforcing.data.world.panorama.render import render as panorama_render
    from contextforcing.data.world.panorama.simulate import simulate as panorama_simulate
    from contextforcing.eval.panorama_metrics import panorama_scores

    track = panorama_simulate(spec)
    truth = panorama_render(track)
    frames, row = _round_trip(codec, truth)
    panning = np.diff(track.camera_x, prepend=track.camera_x[0]) != 0
    row = {
        "seed": spec.seed,
        **row,
        "psnr_panning": psnr_uint8(frames[panning], truth[panning]),
        "psnr_still": psnr_uint8(frames[~panning & track.lit], truth[~panning & track.lit]),
    }
    if metrics:
        row.update(panorama_scores(frames, track).headline())
    return row


def evaluate(codec: WorldCodec | None = None, worlds: int = 8, metrics: bool = True, world: str = "occlusion") -> dict:
    """Encode -> decode the first `worlds` held-out worlds: PSNR, world metrics, speed."""
    if world == "panorama":
        from contextforcing.data.world.panorama.heldout import heldout_worlds

        specs, make_row = heldout_worlds(worlds), _panorama_row
    else:
        from contextforcing.data.world.heldout import eval_worlds

        specs, make_row = eval_worlds()[:worlds], _occlusion_row
    codec = codec or load_world_codec(WEIGHTS_PATH[world])
    rows = []
    for spec in specs:
        row = make_row(codec, spec, metrics)
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    keys = [k for k in rows[0] if k not in ("prompt", "seed")]
    summary = {}
    for k in keys:
        vals = [r[k] for r in rows if r[k] is not None]
        summary[k] = (
            {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals))} if vals else None
        )
    return {"worlds": rows, "summary": summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contextforcing.training.world_codec")
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the world codec on rendered training clips and save it")
    t.add_argument("--world", choices=WORLDS, default="occlusion", help="which world's clips to train on")
    t.add_argument(
        "--out",
        default=None,
        help=f"weights file (default: the shipped {DEFAULT_PATH.name} for the "
        f"occlusion world, {PANORAMA_PATH.name} for the panorama world)",
    )
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("--minutes", type=float, default=14.0, help="wall-clock cap on the optimisation loop")
    t.add_argument("--batch", type=int, default=24)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="1 measured best on the shared 2-core machine")
    e = sub.add_parser("eval", help="encode/decode held-out worlds: PSNR, world metrics, speed")
    e.add_argument("--world", choices=WORLDS, default="occlusion", help="which world's held-out set")
    e.add_argument("--weights", default=None, help="default: the world's shipped codec")
    e.add_argument("--worlds", type=int, default=8)
    e.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cmd == "train":
        options = CodecTraining(
            steps=args.steps,
            minutes=args.minutes,
            batch=args.batch,
            lr=args.lr,
            seed=args.seed,
            threads=args.threads,
            world=args.world,
        )
        train(args.out, options)
        return 0
    result = evaluate(load_world_codec(args.weights or WEIGHTS_PATH[args.world]), args.worlds, world=args.world)
    print("summary (mean / min / max over worlds):")
    for k, v in result["summary"].items():
        print(f"  {k}: " + ("n/a" if v is None else f"{v['mean']:.4f} / {v['min']:.4f} / {v['max']:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
