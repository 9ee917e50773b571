"""Which attention kernels one steady-state chunk launches on a CUDA GPU (Wan-1.3B shapes, random weights),
with the slot mask (slow tier empty) and without (slow tier full): `python scripts/gpu_attention_kernels.py`."""

import torch
from torch.profiler import ProfilerActivity, profile

import contextforcing as cf

pipe = cf.Pipeline.random("wan2.1-t2v-1.3b", device="cuda", dtype="bfloat16")
for label, memory in (
    ("slow_fast default tau (slow tier empty: masked)", None),
    ("slow_fast tau=1.0 (slow tier full: no mask)", {"tau": 1.0}),
):
    gen = pipe.stream(pipe.example_prompt, seconds=30, seed=0, memory=memory)
    for i in range(14):
        chunk = next(gen)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        chunk = next(gen)
        torch.cuda.synchronize()
    print(label, "| attended latent frames", chunk.plan.attended_frames, "| slow", chunk.plan.tier("slow"))
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    for e in rows[:8]:
        print(f"  {e.device_time_total / 1000:9.1f} ms  {e.count:5d}x  {e.key[:110]}")
    gen.close()
