"""ONNX Runtime's fused CPU ops (com.microsoft GroupQueryAttention, RotaryEmbedding,
SkipSimplifiedLayerNormalization) with eager twins.

Under `torch.onnx.export` each function emits one contrib node; eagerly it computes exactly what that node
computes, so the fused graphs have a torch reference to validate against. Only ONNX Runtime runs these
nodes (TensorRT keeps the standard, decomposed graphs).

GroupQueryAttention works on a per-layer cache buffer [b, h_kv, C, d] of fixed capacity C: the new keys
and values are written at slots past_length .. past_length+t-1 and every query attends slots up to its own,
within the causal window. When the caller binds the same memory as input and output (IO binding), ONNX
Runtime updates the cache in place: no per-call copy of the cache at all. Positions are explicit, so a
sliding-window cache whose slot 0 is not position 0 works unchanged. Where the head size allows it
(`rotary_inside`), q, k and v come packed in one tensor (one MatMul per layer instead of three) and the node
rotates them itself at `position_ids`; measured on ONNX Runtime 1.32 CPU, that is bit-identical to separate
RotaryEmbedding nodes followed by GroupQueryAttention on unpacked q, k, v.
"""

from __future__ import annotations

import torch

from fastblt.graphs.layers import NEG

DOMAIN = "com.microsoft"


def rope_tables(inv_freq: torch.Tensor, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_positions, d/2] computed with the eager Rope's float32 ops (bit-identical)."""
    freqs = torch.arange(max_positions).float()[:, None] * inv_freq[None]
    return freqs.cos(), freqs.sin()


def rotary_embedding(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     heads: int) -> torch.Tensor:
    """Interleaved-pair rotation of x [b, t, heads·d] at positions [b, t]."""
    if torch.onnx.is_in_onnx_export():
        return torch.onnx.ops.symbolic(f"{DOMAIN}::RotaryEmbedding", (x, positions, cos, sin),
                                       {"interleaved": 1, "num_heads": heads}, dtype=x.dtype, shape=x.shape,
                                       version=1)
    b, t, width = x.shape
    pairs = x.view(b, t, heads, width // heads // 2, 2)
    c, s = cos[positions][:, :, None], sin[positions][:, :, None]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).view(b, t, width)


def rotary_inside(head_dim: int) -> bool:
    """Whether GroupQueryAttention can apply the rotary itself: ORT's CPU kernel refuses head sizes that are
    not a multiple of 16 (measured on 1.32); smaller heads keep separate RotaryEmbedding nodes."""
    return head_dim % 16 == 0


def packed_attention(qkv, cache_k, cache_v, seqlens_k, total, cos, sin, positions, heads: int, kv_heads: int,
                     window: int | None):
    """GroupQueryAttention on packed, not yet rotated qkv [b,t,(heads+2·kv)·d]; the node rotates q and k at
    `positions` (absolute, [b,t] int64) itself → (out [b,t,heads·d], updated cache k, updated cache v)."""
    if torch.onnx.is_in_onnx_export():
        attrs = {"num_heads": heads, "kv_num_heads": kv_heads, "local_window_size": window or -1, "do_rotary": 1,
                 "rotary_interleaved": 1}
        b, t, _ = qkv.shape
        out = torch.onnx.ops.symbolic_multi_out(
            f"{DOMAIN}::GroupQueryAttention",
            (qkv, None, None, cache_k, cache_v, seqlens_k, total, cos, sin, positions), attrs,
            dtypes=(qkv.dtype, cache_k.dtype, cache_v.dtype),
            shapes=((b, t, heads * cache_k.shape[3]), cache_k.shape, cache_v.shape), version=1)
        return out[0], out[1], out[2]
    d = cache_k.shape[3]
    q, k, v = qkv.split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
    q, k = rotary_embedding(q, positions, cos, sin, heads), rotary_embedding(k, positions, cos, sin, kv_heads)
    return _eager_attention(q, k, v, cache_k, cache_v, seqlens_k, heads, kv_heads, window)


def group_query_attention(q, k, v, cache_k, cache_v, seqlens_k, total, heads: int, kv_heads: int,
                          window: int | None):
    """q [b,t,heads·d], k/v [b,t,kv·d] (rotated already), cache [b,kv,C,d], seqlens_k [b] int32 (= past + t − 1),
    total: scalar int32 (max past + t) → (out [b,t,heads·d], updated cache k, updated cache v)."""
    if torch.onnx.is_in_onnx_export():
        attrs = {"num_heads": heads, "kv_num_heads": kv_heads, "local_window_size": window or -1}
        out = torch.onnx.ops.symbolic_multi_out(
            f"{DOMAIN}::GroupQueryAttention", (q, k, v, cache_k, cache_v, seqlens_k, total), attrs,
            dtypes=(q.dtype, cache_k.dtype, cache_v.dtype), shapes=(q.shape, cache_k.shape, cache_v.shape), version=1)
        return out[0], out[1], out[2]
    return _eager_attention(q, k, v, cache_k, cache_v, seqlens_k, heads, kv_heads, window)


def _eager_attention(q, k, v, cache_k, cache_v, seqlens_k, heads, kv_heads, window):
    b, t, _ = q.shape
    d = cache_k.shape[3]
    new_k, new_v = cache_k.clone(), cache_v.clone()
    outs = []
    for i in range(b):
        start = int(seqlens_k[i]) + 1 - t
        new_k[i, :, start:start + t] = k[i].view(t, kv_heads, d).transpose(0, 1)
        new_v[i, :, start:start + t] = v[i].view(t, kv_heads, d).transpose(0, 1)
        keys = new_k[i, :, :start + t].repeat_interleave(heads // kv_heads, dim=0)
        values = new_v[i, :, :start + t].repeat_interleave(heads // kv_heads, dim=0)
        qi = q[i].view(t, heads, d).transpose(0, 1)
        scores = torch.matmul(qi * d**-0.5, keys.transpose(-1, -2))
        qpos = torch.arange(start, start + t)[:, None]
        kpos = torch.arange(start + t)[None]
        ok = kpos <= qpos
        if window is not None:
            ok = ok & (qpos - kpos < window)
        attn = torch.softmax(scores.masked_fill(~ok, NEG), dim=-1)
        outs.append(torch.matmul(attn, values).transpose(0, 1).reshape(t, heads * d))
    return torch.stack(outs), new_k, new_v


def skip_rms_norm(x: torch.Tensor, delta: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(x + delta), x + delta): a residual add and the RMSNorm after it as one node."""
    if torch.onnx.is_in_onnx_export():
        b, t, dim = x.shape
        out = torch.onnx.ops.symbolic_multi_out(
            f"{DOMAIN}::SkipSimplifiedLayerNormalization", (delta, x, norm.weight), {"epsilon": norm.eps},
            dtypes=(x.dtype,) * 4, shapes=(x.shape, (b, t, 1), (b, t, 1), x.shape), version=1)
        return out[0], out[3]
    s = x + delta
    return norm(s), s
