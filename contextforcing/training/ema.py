"""Exponential moving average of the generator's weights.

The shadow holds one tensor per trainable parameter with the parameter's own layout: under FSDP2 that is
the same DTensor sharding, so each rank keeps only its shard (fp32, like the master weights) and the
checkpoint saves it sharded like the model; export reads it back whole from the checkpoint (DCP reads every
shard, `training.export`). This avoids the field's full per-rank CPU copy of 1.3B weights
(wan_and_self_forcing.md section 4).

The shadow is (re)copied from the weights at the first update at or after `start` (Self-Forcing's
`ema_start_step`), then follows shadow <- decay * shadow + (1 - decay) * weights after each update.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    def __init__(self, module: nn.Module, decay: float, start: int = 0):
        self.decay = decay
        self.start = start
        self.initialized = False  # False until the first update at step >= start: export then uses raw weights
        self._params = {name: p for name, p in module.named_parameters() if p.requires_grad}
        # Allocated now (not at `start`) so a checkpoint can be loaded into it in place.
        self.shadow = {name: p.detach().clone() for name, p in self._params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in after the generator update of `step` (ignored before `start`)."""
        if step < self.start:
            return
        if not self.initialized:
            for name, p in self._params.items():
                self.shadow[name].copy_(p.detach())
            self.initialized = True
            return
        for name, p in self._params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        """Shadow tensors (sharded like the parameters) and the flag; decay/start come from the config."""
        return {"shadow": self.shadow, "initialized": self.initialized}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, tensor in state["shadow"].items():
                if tensor is not self.shadow[name]:  # DCP loads in place; a plain dict needs the copy
                    self.shadow[name].copy_(tensor)
        self.initialized = bool(state["initialized"])
