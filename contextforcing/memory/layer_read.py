"""What one layer's self-attention reads and writes in a pass: `LayerView`, the handle the model's layer gets from
`ContextMemory.layer(i)`, and `ContextRead`, the attended keys and values it gets back (copies, or views of the
store's attended prefix with the chunk's own token slots right after it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class LayerView:
    """What one layer's self-attention reads and writes in the current pass (a handle on the memory)."""

    __slots__ = ("memory", "layer", "_context")

    def __init__(self, memory, layer: int):  # memory: the `ContextMemory` that hands the view out
        self.memory, self.layer = memory, layer
        self._context: ContextRead | None = None

    def keys_values(self, k: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor):
        """Hand over this pass's keys (pre-RoPE `k` and rotated `k_rot`) and values [B, frames*T, H, D]; get the
        keys, values [B, Lk, H, D] and key mask [Lk] (None: attend every key) to attend. The memory takes the keys
        once per pass: a block that gradient checkpointing runs again reads what the first run read and changes
        nothing twice."""
        if self._context is None:
            self._context = self.memory.exchange(self.layer, k, v, copy=k_rot.requires_grad or v.requires_grad)
        return self._context.with_chunk(k_rot, v)


@dataclass
class ContextRead:
    """What a layer attends besides the chunk's own keys and values: copies of the attended frames (`tokens` None:
    the chunk is appended), or views of the store's attended prefix with the chunk's token slots right after it
    (`tokens`: the chunk is written there in place)."""

    keys: torch.Tensor | None
    values: torch.Tensor | None
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # fixed shapes only: [Lk], False past what the chunk attends

    def with_chunk(self, k_rot: torch.Tensor, v: torch.Tensor):
        if self.tokens is None:
            if self.keys is None:
                return k_rot, v, None
            return torch.cat([self.keys, k_rot], 1), torch.cat([self.values, v], 1), None
        self.keys.index_copy_(1, self.tokens, k_rot)  # the store holds the model's dtype, as attention needs
        self.values.index_copy_(1, self.tokens, v)
        return self.keys, self.values, self.mask
