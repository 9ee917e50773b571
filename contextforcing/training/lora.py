"""LoRA fine-tuning of a pretrained DiT: W -> W + (alpha / rank) * B @ A on chosen Linear layers.

Implemented as a `torch.nn.utils.parametrize` parametrization, so module names stay those of Wan2.1
(the base weight becomes `<layer>.parametrizations.weight.original`, the adapter
`<layer>.parametrizations.weight.0.lora_A/lora_B`). The base is frozen, only A and B train (and are the
only parameters the trainer's optimizer and EMA see). `merge_lora_state` folds a saved state back into
plain weights for export.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from contextforcing.errors import UserError

# The released Context Forcing teacher adapts attention projections and the feed-forward layers.
DEFAULT_TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")
_BASE = ".parametrizations.weight.original"
_ADAPTER = ".parametrizations.weight.0."


class LoRADelta(nn.Module):
    """The parametrization: adds the low-rank update to the frozen weight it receives."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))  # zero: training starts at the base model
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.register_buffer("lora_scale", torch.tensor(alpha / rank))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.lora_scale * (self.lora_B @ self.lora_A)).to(weight.dtype)


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_TARGETS) -> int:
    """Freeze `model` and attach adapters to every Linear whose name ends with one of `targets`."""
    if rank < 1:
        raise UserError(f"LoRA rank must be at least 1, got {rank}")
    model.requires_grad_(False)
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            delta = LoRADelta(module.out_features, module.in_features, rank, alpha).to(module.weight.device)
            parametrize.register_parametrization(module, "weight", delta)
            count += 1
    if not count:
        raise UserError(f"no Linear layer matches the LoRA targets {', '.join(targets)}")
    return count


def merge_lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved state with LoRA parametrizations -> plain Wan names with the adapters merged in."""
    merged = {k: v for k, v in state.items() if _BASE not in k and _ADAPTER not in k}
    for key, base in state.items():
        if not key.endswith(_BASE):
            continue
        layer = key[: -len(_BASE)]
        a, b = state[layer + _ADAPTER + "lora_A"], state[layer + _ADAPTER + "lora_B"]
        scale = state[layer + _ADAPTER + "lora_scale"]
        merged[layer + ".weight"] = (base.float() + scale.float() * (b.float() @ a.float())).to(base.dtype)
    return merged
