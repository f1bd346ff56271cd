"""`encoder` graph: byte ids + the host-gathered sum of their hash n-gram rows + positions + KV cache → byte
states + new K/V.

Also run in scratch mode over a draft or diffusion block (MASK is an ordinary id); the caller then simply
does not append the returned K/V to its cache.
"""

from __future__ import annotations

from torch import nn


class EncoderGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, hash_embeds, positions, past_key, past_value):
        return self.model.encoder_step(ids, hash_embeds, positions, past_key, past_value)
