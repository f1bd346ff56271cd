"""The fused graph layout for ONNX Runtime on CPU: patcher, encoder, global and decoder_step with each
layer's attention as one com.microsoft GroupQueryAttention over an in-place cache buffer.

Same math and weights as the standard graphs; what changes is the interface. Instead of a stacked cache of
the visible entries in and only the new entries out (a Split, a Concat and a host-side copy of the whole
cache on every call), each layer takes its cache buffer [b, h_kv, C, d] plus `past_length`, and returns the
updated buffer, which the ORT backend binds to the same memory. Per call that removes about half the nodes
(ORT's cost here is per node, not per flop) and every cache copy. Per layer: one MatMul for q, k and v
(weights concatenated, constant-folded at export) and one GroupQueryAttention that also applies the rotary
at explicit positions (heads of 16·n; smaller heads keep two RotaryEmbedding nodes and three MatMuls), one
MatMul for the MLP's gate and up projections, and each residual add fused into the RMSNorm after it.
decoder_block keeps the standard layout: its bias is arbitrary, which GroupQueryAttention cannot express.
draft_step (encoder + decoder_step, two caches) exists only here: it saves BLT-S one call per drafted byte.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastblt.graphs.fused_ops import (
    group_query_attention,
    packed_attention,
    rope_tables,
    rotary_embedding,
    rotary_inside,
    skip_rms_norm,
)


class FusedStack(nn.Module):
    """Runs one `Stack`'s layers (shared weights) with fused rotary + attention."""

    def __init__(self, stack) -> None:
        super().__init__()
        self.stack = stack
        cos, sin = rope_tables(stack.rotary_emb.inv_freq[::2], stack.cfg.max_positions)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x, positions, past_length, caches, before_layer=None):
        seqlens = past_length + (x.shape[1] - 1)
        total = seqlens.max() + 1
        presents, pending = [], None  # pending: the MLP output not yet added to x (fused into the next norm)
        for i, layer in enumerate(self.stack.layers):
            if before_layer is not None:
                x = x if pending is None else x + pending
                x, pending = before_layer(i, x), None
            attn = layer.self_attn
            if pending is None:
                h = layer.input_layernorm(x)
            else:
                h, x = skip_rms_norm(x, pending, layer.input_layernorm)
            out, ck, cv = self._attention(attn, h, positions, caches[2 * i], caches[2 * i + 1], seqlens, total)
            h, x = skip_rms_norm(x, attn.o_proj(out), layer.post_attention_layernorm)
            mlp = layer.mlp
            gate, up = F.linear(h, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])).chunk(2, dim=-1)
            pending = mlp.down_proj(F.silu(gate) * up)
            presents += [ck, cv]
        return x + pending, presents

    def _attention(self, attn, h, positions, cache_k, cache_v, seqlens, total):
        cfg = self.stack.cfg
        if rotary_inside(cfg.head_dim):
            qkv = F.linear(h, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            return packed_attention(qkv, cache_k, cache_v, seqlens, total, self.cos, self.sin, positions,
                                    cfg.n_heads, cfg.kv_heads, cfg.window)
        q = rotary_embedding(attn.q_proj(h), positions, self.cos, self.sin, cfg.n_heads)
        k = rotary_embedding(attn.k_proj(h), positions, self.cos, self.sin, cfg.kv_heads)
        return group_query_attention(q, k, attn.v_proj(h), cache_k, cache_v, seqlens, total, cfg.n_heads,
                                     cfg.kv_heads, cfg.window)


class FusedPatcherGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.stack = model, FusedStack(model.patcher)

    def forward(self, ids, positions, past_length, *caches):
        x, presents = self.stack(self.model.patcher.embed_tokens(ids), positions, past_length, caches)
        return (self.model.patcher.entropy(x), *presents)


class FusedEncoderGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.stack = model, FusedStack(model.local_encoder)

    def forward(self, ids, hash_embeds, positions, past_length, *caches):
        x, presents = self.stack(self.model.encoder_embed(ids, hash_embeds), positions, past_length, caches)
        return (x, *presents)


class FusedGlobalGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.stack = model, FusedStack(model.global_transformer)

    def forward(self, patch_states, patch_mask, patch_positions, past_length, *caches):
        g = self.model.global_input(patch_states, patch_mask)
        g, presents = self.stack(g, patch_positions, past_length, caches)
        return (self.model.global_output(g), *presents)


class FusedDecoderStepGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.stack = model, FusedStack(model.local_decoder)

    def forward(self, states, positions, memory, past_length, *caches):
        x, presents = self.stack(states, positions, past_length, caches, self.model.decoder_cross(memory))
        return (self.model.decoder_head(x), *presents)


class FusedDraftStepGraph(nn.Module):
    """BLT-S's drafting step in one call: the encoder over the new bytes, then decoder_step over its states at
    the same positions (one ONNX Runtime call per drafted byte instead of two)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.encoder, self.decoder = FusedStack(model.local_encoder), FusedStack(model.local_decoder)
        self.n_encoder = 2 * model.config.encoder.n_layers

    def forward(self, ids, hash_embeds, positions, memory, decoder_past_length, past_length, *caches):
        states, enc = self.encoder(self.model.encoder_embed(ids, hash_embeds), positions, past_length,
                                   caches[: self.n_encoder])
        x, dec = self.decoder(states, positions, decoder_past_length, caches[self.n_encoder:],
                              self.model.decoder_cross(memory))
        return (states, self.model.decoder_head(x), *enc, *dec)


def build_fused_graphs(model) -> dict:
    """Graph name → fused module (`spec.FUSED_GRAPHS` and `spec.FUSED_OPTIONAL`), sharing `model`'s weights."""
    return {"patcher": FusedPatcherGraph(model), "encoder": FusedEncoderGraph(model),
            "global": FusedGlobalGraph(model), "decoder_step": FusedDecoderStepGraph(model),
            "draft_step": FusedDraftStepGraph(model)}
