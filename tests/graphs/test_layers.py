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
