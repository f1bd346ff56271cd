"""The export-lean layer forms equal the textbook ones: RoPE as x·cos + (x·P)·sin is bit-identical to
rotating interleaved pairs (fp32 and bf16), and the divide-form RMSNorm matches the rsqrt form."""

from __future__ import annotations

import pytest
import torch

from fastblt.graphs.layers import RMSNorm, Rope, apply_rope


def pairwise_rope(x, positions, head_dim, theta):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = positions.float()[..., None] * inv
    c, s = freqs.cos()[:, None].to(x.dtype), freqs.sin()[:, None].to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_is_bit_identical_to_pair_rotation(dtype):
    torch.manual_seed(0)
    head_dim, theta = 32, 500000.0
    x = (torch.randn(2, 4, 9, head_dim) * 3).to(dtype)
    positions = torch.tensor([[0, 1, 2, 3, 4, 100, 511, 4095, 20000], [7] * 9])
    got = apply_rope(x, *Rope(head_dim, theta)(positions))
    assert torch.equal(got, pairwise_rope(x, positions, head_dim, theta))


def test_rmsnorm_matches_rsqrt_form():
    torch.manual_seed(1)
    norm = RMSNorm(64, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 64) * 10
    ref = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    torch.testing.assert_close(norm(x), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("kv_heads", "head_dim"), [(4, 8), (2, 8), (2, 16)])
def test_fused_stack_equals_the_standard_stack(kv_heads, head_dim):
    """The fused layout's eager twin (what its ONNX graphs are validated against) computes the standard
    stack: same outputs and the same new cache entries, with a cache whose slot 0 is position 37 (a shifted
    window), several new rows, and garbage in the buffer past the filled slots; head_dim 16 takes the packed
    path (rotary inside GroupQueryAttention), 8 the separate-rotary one."""
    from fastblt.graphs.config import TransformerConfig
    from fastblt.graphs.incremental.fused import FusedStack
    from fastblt.graphs.layers import Stack, past_positions, window_bias

    torch.manual_seed(0)
    cfg = TransformerConfig(dim=4 * head_dim, n_layers=2, n_heads=4, n_kv_heads=kv_heads, ffn_dim=64, window=8,
                            max_positions=256)
    stack = Stack(cfg).eval()
    past, new, start = 11, 5, 37
    positions = torch.arange(start + past, start + past + new)[None]
    x = torch.randn(1, new, 4 * head_dim)
    past_k, past_v = (torch.randn(2, 1, kv_heads, past, head_dim) for _ in range(2))
    keys = torch.cat([past_positions(positions, past), positions], dim=1)
    with torch.no_grad():
        want, want_k, want_v = stack.run(x, positions, window_bias(positions, keys, cfg.window), past_k, past_v)
        caches = []
        for i in range(2):
            for src in (past_k, past_v):
                buf = torch.randn(1, kv_heads, past + new + 4, head_dim)
                buf[:, :, :past] = src[i]
                caches.append(buf)
        got, presents = FusedStack(stack)(x, positions, torch.tensor([past], dtype=torch.int32), caches)
    assert torch.allclose(got, want, atol=1e-5)
    for i in range(2):
        assert torch.allclose(presents[2 * i][:, :, past:past + new], want_k[i], atol=1e-5)
        assert torch.allclose(presents[2 * i + 1][:, :, past:past + new], want_v[i], atol=1e-5)
        assert torch.equal(presents[2 * i][:, :, :past], past_k[i])
