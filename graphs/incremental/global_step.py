"""`global` graph: closing patches' byte states (padded, masked) → pooled, cross-attended, one global step
per patch, projected to the decoder's k memory slots. Patch positions index the global KV cache."""

from __future__ import annotations

from torch import nn


class GlobalGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, patch_states, patch_mask, patch_positions, past_key, past_value):
        return self.model.global_step(patch_states, patch_mask, patch_positions, past_key, past_value)
