#!/usr/bin/env bash
# Does a teacher whose recycled errors drift every context frame (sink and slow too, not the fast frames only)
# keep more from its own past? 800 fine-tuning steps from the recipe's teacher (runs/toy/exports/teacher), with
# `error_recycling.context_tiers` = all (the probe) or fast (the same fine-tuning, the released teacher's
# tiers), each exported and scored by scripts/exposure_check.py on 8 held-out worlds (about 15 min of fine-tuning
# and 10 of scoring per arm on one core).
#     scripts/probe_teacher_tiers.sh all      # or: fast
set -euo pipefail
cd "$(dirname "$0")/.."
tiers=${1:?usage: scripts/probe_teacher_tiers.sh all|fast}
run=runs/probe/teacher_$tiers
export OMP_NUM_THREADS=1
python -m contextforcing.cli train teacher --config configs/toy/teacher.yaml \
    trainer.run_dir=$run trainer.max_steps=800 trainer.lr_warmup=50 trainer.lr_decay_steps=750 trainer.ema_start=0 \
    trainer.checkpoint_every=200 stage.init=runs/toy/exports/teacher.safetensors stage.optimizer.lr=1.0e-4 \
    stage.error_recycling.start_step=0 stage.error_recycling.context_tiers="$tiers" \
    stage.data.cache_dir=runs/toy/panorama_cache
python -m contextforcing.cli export $run runs/probe/teacher_$tiers.safetensors
python scripts/exposure_check.py --worlds 8 --teacher-only --teacher runs/probe/teacher_$tiers.safetensors \
    --out runs/probe/exposure_$tiers.json
