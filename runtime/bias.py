"""Additive attention biases of the decoder_block calls (0 where a row may attend a key, float32 min where not).

A diffusion block's bias depends only on the visible prefix length, the block size, the window and the
direction, so one read-only array serves every step. A fused call (BLT-D's commit rows plus the next block)
depends on where the block starts relative to the rows being committed.
"""

from __future__ import annotations

import functools

import numpy as np

NEG = np.finfo(np.float32).min


@functools.lru_cache(maxsize=64)
def block_bias(t: int, bsz: int, window: int | None, bidirectional: bool) -> np.ndarray:
    """[1, B, t + B] over t visible prefix rows and the block (row i sits t - j + i after prefix key j)."""
    rows = np.arange(t, t + bsz)[:, None]
    keys = np.arange(t + bsz)[None]
    ok = np.ones((bsz, t + bsz), dtype=bool) if window is None else rows - keys < window
    ok[:, t:] = True if bidirectional else np.tri(bsz, dtype=bool)
    bias = np.where(ok, 0.0, NEG).astype(np.float32)[None]
    bias.flags.writeable = False
    return bias


@functools.lru_cache(maxsize=256)
def fused_bias(past: int, t: int, offset: int, bsz: int, pad: int, window: int | None,
               bidirectional: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bias [1, R, past + R] and positions [R] (relative to the first committed row) of one call over
    R = t + bsz + pad rows: t rows being committed (causal over the `past` cached rows before them and each
    other; their K/V enter the cache), a block of bsz rows starting `offset` after the first committed row
    (the prefix before it only, never a committed row at or after it; the block bidirectional or causal), and
    padding rows that see only themselves (position 0). Read-only: one array per layout serves every block."""
    size = t + bsz + pad
    keys = np.concatenate([np.arange(-past, 0), np.arange(t), np.arange(offset, offset + bsz),
                           np.full(pad, -(past + (window or 0) + 1))])
    rows = keys[past:]
    idx = np.arange(size)
    clean, block = idx < t, (idx >= t) & (idx < t + bsz)
    cached = np.arange(keys.size) < past
    key_clean = np.concatenate([np.zeros(past, bool), clean])
    key_block = np.concatenate([np.zeros(past, bool), block])
    ok = np.zeros((size, keys.size), dtype=bool)
    ok[clean] = cached[None] | (key_clean[None] & (keys[None] <= rows[clean][:, None]))
    ok[block] = (cached[None] | key_clean[None]) & (keys[None] < offset)
    ok[np.ix_(block, key_block)] = np.ones((bsz, bsz), dtype=bool) if bidirectional else np.tri(bsz, dtype=bool)
    if window is not None:
        ok &= rows[:, None] - keys[None] < window
    ok[idx[t + bsz:], past + idx[t + bsz:]] = True
    bias = np.where(ok, 0.0, NEG).astype(np.float32)[None]
    positions = np.where(idx < t + bsz, rows, 0)
    bias.flags.writeable = positions.flags.writeable = False
    return bias, positions
