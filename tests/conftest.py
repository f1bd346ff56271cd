"""Session-scoped fixtures: random tiny HF BLT checkpoints (built once) and their fastblt models."""

from __future__ import annotations

import pytest

# Three HF configs covering widths, layers, heads, cross_attn_k 1/2/3, GQA, max_patch_length set and unset,
# and thresholds giving ~1 and ~4 bytes per patch.
HF_CONFIGS = {
    "k2-4bpp": dict(k=2, bytes_per_patch=4.0, window=16),
    "k3-maxlen": dict(k=3, local=48, heads=6, glob=96, glob_heads=6, dec_layers=3, max_patch_length=4,
                      bytes_per_patch=4.0, window=8, hash_sizes=(3, 4, 5, 6, 7, 8), hash_functions=2),
    "k1-1bpp-gqa": dict(k=1, glob=32, kv_heads=2, bytes_per_patch=1.0, enc_layers=2, glob_layers=1, window=32),
}


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    from blt_helpers import hf_blt

    root = tmp_path_factory.mktemp("hf")
    return {name: hf_blt(root / name, seed=i, **kw) for i, (name, kw) in enumerate(HF_CONFIGS.items())}


@pytest.fixture(scope="session")
def tiny_model():
    import torch

    from fastblt.graphs.config import tiny_config
    from fastblt.graphs.model import BltModel

    torch.manual_seed(0)
    return BltModel(tiny_config()).eval()
