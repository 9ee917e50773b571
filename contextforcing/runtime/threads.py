"""How many CPU threads torch uses: one rule for every entry point (the CLI's commands, `make demo`, the Python
API's loaders, the live viewer), overridden by `--threads N` / `threads=N`.

Why a rule at all: torch starts one intra-op thread per physical core. On a small or busy machine those threads
wait on each other and on other processes; scripts/bench_threads.py measured the embedded model on the project's
2-core machine (docs/performance.md, "CPU threads"): two threads were never faster than one, and 5-30x slower
while other work ran. So:

1. `threads=N` / `--threads N` wins;
2. else a set `OMP_NUM_THREADS` (the variable torch itself reads) is kept;
3. else 1 thread on a machine with at most `SMALL_MACHINE_CORES` cores;
4. else the cores not already busy (cores minus the 1-minute load average, rounded up), at least 1 and at
   most torch's own default.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

from contextforcing.errors import UserError, option

# At or below this many usable cores a second intra-op thread measured slower than one (docs/performance.md).
SMALL_MACHINE_CORES = 2


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and why (printed by `bench`, recorded nowhere else)."""

    count: int
    reason: str


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores() -> int:
    """Cores other work keeps busy: the 1-minute load average, rounded up (0 where the OS has none)."""
    try:
        return math.ceil(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def choose_threads(requested: int | None = None, *, torch_default: int | None = None) -> ThreadChoice:
    """The thread count by the module's rule; `torch_default` caps the busy-machine case (torch's own start)."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise UserError(f"{option('threads')} must be a whole number >= 1, got {requested!r}")
        return ThreadChoice(requested, "asked for")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return ThreadChoice(int(env), "OMP_NUM_THREADS")
    cores = usable_cores()
    if cores <= SMALL_MACHINE_CORES:
        return ThreadChoice(1, f"{cores} cores: one thread measured fastest")
    free = max(1, cores - busy_cores())
    count = min(free, torch_default or cores)
    return ThreadChoice(count, f"{cores} cores, {cores - free} busy")


def use_threads(requested: int | None = None) -> ThreadChoice:
    """Choose (see the module) and set torch's intra-op thread count; returns the choice."""
    import torch

    choice = choose_threads(requested, torch_default=_torch_default())
    torch.set_num_threads(choice.count)
    return choice


@functools.lru_cache(maxsize=1)
def _torch_default() -> int:
    """torch's thread count before this module first changed it (torch starts at the physical core count)."""
    import torch

    return torch.get_num_threads()
