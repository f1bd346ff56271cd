"""Building blocks shared by the full forward and the incremental graphs.

Every attention takes its keys/values cache as explicit tensors and an additive bias, so the same code runs
the full-sequence forward (empty cache) and each exported graph (cache in, new K/V out). Parameter names
follow the HF BLT checkpoint keys so weights load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastblt.graphs.config import TransformerConfig

NEG = torch.finfo(torch.float32).min  # finite "minus infinity": fully masked rows stay finite (no NaN)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)  # this form fuses into one ORT op
        return self.weight * x.to(dtype)


class Rope(nn.Module):
    """Interleaved-pair rotary embedding (dims 2i, 2i+1 rotated by pos·θ^(-2i/d)), as in BLT.

    Written as x·cos + (x·P)·sin with cos/sin repeated per pair (sin signed) and P the constant pair swap
    (x0, x1) → (x1, x0): bit-identical to rotating the pairs, but four ops per tensor once exported instead
    of a dozen reshapes/splits/stacks (decoding is bound by per-op overhead and weight traffic, not flops).
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv.repeat_interleave(2), persistent=False)
        self.register_buffer("sign", torch.tensor([-1.0, 1.0]).repeat(head_dim // 2), persistent=False)
        swap = torch.zeros(head_dim, head_dim)
        idx = torch.arange(head_dim)
        swap[idx ^ 1, idx] = 1.0
        self.register_buffer("swap", swap, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """positions [b, t] → (cos, signed sin, swap): cos/sin [b, 1, t, d], what `apply_rope` takes."""
        freqs = positions.float()[:, None, :, None] * self.inv_freq
        return freqs.cos(), freqs.sin() * self.sign, self.swap


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """x [b, h, t, d]: out[2i] = x[2i]·c − x[2i+1]·s, out[2i+1] = x[2i+1]·c + x[2i]·s."""
    return x * cos.to(x.dtype) + torch.matmul(x, swap.to(x.dtype)) * sin.to(x.dtype)


def window_bias(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Additive bias [b, 1, t, T]: key visible iff k ≤ q and q - k < window."""
    q = q_pos[:, :, None]
    k = k_pos[:, None, :]
    ok = k <= q
    if window is not None:
        ok = ok & (q - k < window)
    return torch.where(ok, 0.0, NEG)[:, None]


def past_positions(positions: torch.Tensor, past_len: int | torch.Tensor) -> torch.Tensor:
    """Positions of a contiguous cache that ends right before `positions[:, 0]`."""
    steps = torch.arange(past_len, device=positions.device, dtype=positions.dtype)
    return positions[:, :1] - past_len + steps[None]


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, rope, bias, past_k, past_v, inner=None):
        """x [b,t,D]; rope from `Rope`; past_k/v [b,h_kv,T,d]; bias [b,1,t,T+t] (fp32, finite)
        → (out, new k, new v) with k already rotated.

        With `inner` ([B,B] additive, training only): the t rows are t/B independent blocks; `bias` then
        covers the T past keys only and each block attends to itself through `inner`, never to the others
        (the same result as a full [t, T+t] bias, without the quadratic cost in t).
        """
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if inner is not None:
            return self.o_proj(self._blockwise(q, k, v, bias, past_k, past_v, inner)), k, v
        keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        keys, values = self._expand(keys), self._expand(values)
        # written out rather than F.scaled_dot_product_attention: its ONNX decomposition costs ~16 ops, this 5;
        # scores are fp32 (fp32 bias), so the finite NEG masks even under bf16 autocast
        scores = torch.matmul(q * self.head_dim**-0.5, keys.transpose(-1, -2)) + bias.float()
        out = torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), k, v

    def _expand(self, x: torch.Tensor) -> torch.Tensor:
        rep = self.n_heads // self.n_kv
        return x if rep == 1 else x.repeat_interleave(rep, dim=1)

    def _blockwise(self, q, k, v, bias, past_k, past_v, inner):
        b, h, t, d = q.shape
        bsz = inner.shape[0]
        nb = t // bsz
        pk, pv = self._expand(past_k), self._expand(past_v)
        scale = d**-0.5
        s_past = torch.matmul(q, pk.transpose(-1, -2)).float() * scale + bias.float()  # [b,h,t,T]
        qb = q.view(b, h, nb, bsz, d)
        kb, vb = self._expand(k).view(b, h, nb, bsz, d), self._expand(v).view(b, h, nb, bsz, d)
        s_in = torch.matmul(qb, kb.transpose(-1, -2)).float() * scale + inner.float()  # [b,h,nb,B,B]
        p = torch.softmax(torch.cat([s_past.view(b, h, nb, bsz, -1), s_in], dim=-1), dim=-1).to(q.dtype)
        t_past = pk.shape[2]
        out = torch.matmul(p[..., :t_past].reshape(b, h, t, t_past), pv)
        out = out + torch.matmul(p[..., t_past:], vb).view(b, h, t, d)
        return out.transpose(1, 2).reshape(b, t, -1)


class TransformerLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.mlp = MLP(cfg.dim, cfg.hidden)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, rope, bias, past_k, past_v, inner=None):
        h, k, v = self.self_attn(self.input_layernorm(x), rope, bias, past_k, past_v, inner)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Stack(nn.Module):
    """n layers over one token stream with a stacked cache [n_layers, b, h_kv, T, d]."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.n_layers))
        self.rotary_emb = Rope(cfg.head_dim, cfg.rope_theta)

    def empty_cache(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.cfg.n_layers, batch, self.cfg.kv_heads, 0, self.cfg.head_dim)
        return like.new_zeros(shape), like.new_zeros(shape)

    def run(self, x, positions, bias, past_k, past_v, before_layer=None, inner=None):
        rope = self.rotary_emb(positions)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            if before_layer is not None:
                x = before_layer(i, x)
            x, k, v = layer(x, rope, bias, past_k[i], past_v[i], inner)
            ks.append(k)
            vs.append(v)
        return x, torch.stack(ks), torch.stack(vs)


class CrossAttention(nn.Module):
    """Grouped cross-attention without RoPE: queries [b,G,q,D] attend keys [b,G,m,D] of their own group.

    Decoder: one group per byte (q=1) over the k memory slots of its patch. Encoder pooling: one group per
    patch (q=k slots) over that patch's bytes. Returns q + attention, as BLT's module does; callers add the
    query once more (BLT's double residual).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, g, nq, _ = x.shape
        nm = mem.shape[2]
        q = self.q_proj(self.q_norm(x)).view(b, g, nq, self.n_heads, self.head_dim).transpose(2, 3)
        m = self.k_norm(mem)
        k = self.k_proj(m).view(b, g, nm, self.n_kv, self.head_dim).transpose(2, 3)
        v = self.v_proj(m).view(b, g, nm, self.n_kv, self.head_dim).transpose(2, 3)
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * self.head_dim**-0.5  # [b,g,h,q,m]
        if key_bias is not None:  # fp32, finite: a fully masked row averages instead of producing NaN
            scores = scores + key_bias.float()[:, :, None, None, :]
        attn = torch.softmax(scores, dim=-1).to(q.dtype)
        out = torch.matmul(attn, v).transpose(2, 3).reshape(b, g, nq, -1)
        return self.o_proj(out) + x
