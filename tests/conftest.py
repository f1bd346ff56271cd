"""Session-scoped fixtures: random tiny HF BLT checkpoints (built once) and their fastblt models, and one tiny
BLT-D with its fp32 ONNX bundle (standard and fused layouts) shared by every test that needs a bundle to run."""

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


PRINTABLE = [10] + list(range(32, 127))  # newline and printable ASCII


@pytest.fixture(scope="session")
def tiny_bltd():
    """A tiny random BLT-D (block sizes 4 and 8) whose greedy text stays printable: every other byte and EOS
    score 0, the printable bytes get peaky random scores."""
    import torch

    from fastblt.graphs.config import tiny_config
    from fastblt.graphs.model import BltModel

    torch.manual_seed(5)
    m = BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8), patch_threshold=3.5,
                             window=32)).eval()
    with torch.no_grad():
        m.patcher.lm_head.weight.mul_(10.0)
        keep = torch.zeros(262, dtype=torch.bool)
        keep[[b + 4 for b in PRINTABLE]] = True
        m.lm_head.weight.mul_(3.0)
        m.lm_head.weight[~keep] = 0.0
    return m


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bltd, tmp_path_factory):
    """`tiny_bltd` exported once: fp32, standard and fused graphs (an export is the slow part of such tests)."""
    pytest.importorskip("onnxruntime")
    from fastblt.export.bundle import build_bundle
    from fastblt.graphs.training.data import windows

    text = b"def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n" * 2
    return build_bundle(tiny_bltd, tmp_path_factory.mktemp("shared") / "tiny", ("fp32",), engines="no",
                        log=lambda m: None, heldout=list(windows(text, 96))[:2])
