"""Shared test helpers: random tiny HF BLT checkpoints and prompts."""

from __future__ import annotations

import os
from pathlib import Path

PROMPTS = [
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Grüße aus Köln — 東京 ✓ naïve café",
    os.urandom(0) + bytes(range(256))[::7] + b"\x00\xff\xfe",
    b"\x00\x01abc\xc3(\xa0\xa1 invalid utf-8",
]


def hf_blt(path: Path, *, local=32, heads=4, glob=64, glob_heads=4, enc_layers=1, dec_layers=2,
           glob_layers=2, k=2, threshold=3.0, max_patch_length=None, window=16, kv_heads=None,
           hash_sizes=(3, 4, 5), hash_vocab=101, hash_functions=1, seed=0, patcher_dim=32,
           bytes_per_patch=None):
    """Save a random-initialised transformers.BltForCausalLM and return its directory.

    With `bytes_per_patch`, the threshold is set to the entropy quantile that gives about that many bytes
    per patch on PROMPTS[0] (a random patcher has no meaningful scale of its own).
    """
    import torch
    from transformers import BltConfig, BltForCausalLM

    cfg = BltConfig(
        vocab_size=260, patching_threshold=threshold, max_patch_length=max_patch_length,
        local_attention_window_len=window, cross_attn_k=k,
        encoder_hash_byte_group_size=list(hash_sizes), encoder_hash_byte_group_vocab=hash_vocab,
        encoder_hash_byte_group_nb_functions=hash_functions,
        patcher_config=dict(hidden_size=patcher_dim, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=2 * patcher_dim, sliding_window=window),
        encoder_config=dict(hidden_size=local, num_attention_heads=heads, num_key_value_heads=kv_heads,
                            num_hidden_layers=enc_layers, intermediate_size=2 * local, cross_attn_k=k,
                            hidden_size_global=glob),
        decoder_config=dict(hidden_size=local, num_attention_heads=heads, num_key_value_heads=kv_heads,
                            num_hidden_layers=dec_layers, intermediate_size=2 * local, cross_attn_k=k,
                            hidden_size_global=glob),
        global_config=dict(hidden_size=glob, num_attention_heads=glob_heads, num_hidden_layers=glob_layers,
                           intermediate_size=2 * glob),
    )
    torch.manual_seed(seed)
    model = BltForCausalLM(cfg).eval()
    # Random init leaves the patcher near-uniform; sharpen it so thresholds produce varied patch lengths.
    with torch.no_grad():
        model.model.patcher.lm_head.weight.mul_(8.0)
        if bytes_per_patch is not None:
            ids = torch.tensor([ids_of(PROMPTS[0])])
            ent = model.model.patcher(ids)[0][0, 1:]
            q = 1.0 - 1.0 / bytes_per_patch
            # midway between two observed entropies, so float noise (1e-6) cannot flip a boundary
            srt = torch.sort(ent).values
            i = min(int(q * len(srt)), len(srt) - 1)
            model.config.patching_threshold = float((srt[i] + srt[i - 1]) / 2) if q > 0 else -1.0
    model.save_pretrained(path)
    return path


def ids_of(prompt) -> list[int]:
    from fastblt.runtime.host import encode

    return encode(prompt)


def peaky_bltd(seed: int, threshold: float = 3.5, **kw):
    """A random tiny BLT-D model (block sizes 4, 8, 16) with peaked next-byte distributions: fewer near-ties
    in greedy comparisons, and a patcher whose entropies cross `threshold` often."""
    import torch

    from fastblt.graphs.config import tiny_config
    from fastblt.graphs.model import BltModel

    torch.manual_seed(seed)
    cfg = tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8, 16), patch_threshold=threshold,
                      **kw)
    model = BltModel(cfg).eval()
    with torch.no_grad():
        model.patcher.lm_head.weight.mul_(10.0)
        model.lm_head.weight.mul_(3.0)
    return model
