"""`decoder_block` graph: a static block of B rows over a read-only prefix cache, with an explicit bias.

The caller's `attn_bias` [b, B, T+B] decides the pattern: bidirectional within the block for diffusion
steps, causal for verification; the cached prefix stays visible (window permitting). Returns the block's
own K/V so verified rows can be committed without recomputation.
"""

from __future__ import annotations

from torch import nn


class DecoderBlockGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, states, positions, memory, attn_bias, past_key, past_value):
        return self.model.decoder_step(states, positions, memory, attn_bias[:, None], past_key, past_value)
