"""Everything that touches `torch.distributed` in training: process group, collectives, FSDP2 sharding.

Launch with `torchrun`: the process group comes from its env vars (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*),
with gloo on CPU and nccl on CUDA. Without those vars everything works as one process and no group is made,
so the library imports and runs on a laptop without any distributed setup.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from contextforcing.errors import UserError


def _launched() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: str = "auto") -> torch.device:
    """Join the torchrun process group if launched by torchrun (idempotent); return this rank's device.

    `device`: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu", or "cuda".
    """
    dev = _resolve_device(device)
    if _launched() and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return dev


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():  # checked here, before a run directory is made
            raise UserError("trainer.device=cuda but no CUDA device is available (use trainer.device=cpu or auto)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(device)


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (pickled; for small control values, not tensors)."""
    if not initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def main_decides(action: Callable[[], Any]) -> None:
    """Run `action()` on rank 0 only; a UserError it raises is raised on every rank (no rank is left waiting
    for one that stopped)."""
    error = None
    if is_main():
        try:
            action()
        except UserError as err:
            error = str(err)
    error = broadcast_object(error)
    if error:
        raise UserError(error)


def first_error(error: Any) -> Any:
    """The first error any rank passes (a message or a small picklable object; None where none has one), the same
    on every rank: ranks that fail alone (one rank's file write) still stop together, with the same error."""
    if not initialized():
        return error
    errors: list[str | None] = [None] * world_size()
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e), None)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on any rank (the same answer on every rank), e.g. a Ctrl-C seen by one of them."""
    if not initialized():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (a no-op on one process); returns the tensor."""
    if initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def destroy() -> None:
    if initialized():
        dist.destroy_process_group()


def device_mesh(device: torch.device):
    """A 1-D data-parallel mesh over all ranks. On CPU it must be a "cpu" mesh: a gloo mesh on a machine
    that also has GPUs would otherwise place the shards on CUDA (pytorch#132471)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size(),))


# -- sharding -------------------------------------------------------------------------------------------------
def enable_activation_checkpointing(module: nn.Module) -> int:
    """Turn on the per-block checkpointing flag of every submodule that has one (CausalWanModel's
    `gradient_checkpointing`: non-reentrant `torch.utils.checkpoint` around each block). Returns how many."""
    count = 0
    for sub in module.modules():
        if hasattr(sub, "gradient_checkpointing") and isinstance(sub.gradient_checkpointing, bool):
            sub.gradient_checkpointing = True
            count += 1
    return count


def _block_lists(module: nn.Module) -> list[nn.ModuleList]:
    """Every `blocks` ModuleList in the tree: the transformer blocks of each DiT, wrapped or not."""
    return [sub.blocks for sub in module.modules() if isinstance(getattr(sub, "blocks", None), nn.ModuleList)]


def parallelize(module: nn.Module, *, mesh, mixed_precision: bool, activation_checkpointing: bool) -> nn.Module:
    """Activation checkpointing, then FSDP2 `fully_shard` on each transformer block and on the root.

    Mixed precision computes in bf16 with fp32 gradient reduction; the sharded master weights stay fp32.
    `mesh=None` (one process, no group) applies only activation checkpointing: mixed precision is then
    the trainer's autocast. The module's parameter names are unchanged (composable FSDP, flag-based AC).
    """
    if activation_checkpointing:
        enable_activation_checkpointing(module)
    if mesh is None:
        return module
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else MixedPrecisionPolicy()
    )
    for blocks in _block_lists(module):
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return module


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (<= 0: measure only); returns the norm before clipping.

    Works on plain and sharded (DTensor) gradients; the returned norm is the same on every rank.
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=None)
    if hasattr(norm, "full_tensor"):  # per-shard norms are a partial DTensor until reduced over ranks
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=None)
    return float(norm)
