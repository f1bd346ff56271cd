"""`decoder_step` graph: committed byte states (dynamic t) with per-row memory → logits + new K/V.

The causal sliding-window mask is built in the graph from positions (the cache is contiguous and ends
right before the first new position).
"""

from __future__ import annotations

import torch
from torch import nn

from fastblt.graphs.layers import past_positions, window_bias


class DecoderStepGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.window = model.config.decoder.window

    def forward(self, states, positions, memory, past_key, past_value):
        keys = torch.cat([past_positions(positions, past_key.shape[3]), positions], dim=1)
        bias = window_bias(positions, keys, self.window)
        return self.model.decoder_step(states, positions, memory, bias, past_key, past_value)
