"""`patcher` graph: new byte ids + positions + KV cache → next-byte entropies (nats) + the new K/V."""

from __future__ import annotations

from torch import nn


class PatcherGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, positions, past_key, past_value):
        return self.model.patcher_step(ids, positions, past_key, past_value)
