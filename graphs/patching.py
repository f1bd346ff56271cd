"""The patch-boundary rule on the host (numpy, no torch): start flags, patch ids and lengths from entropies.

One implementation for the runtime (runtime/host.py imports it) and for the patcher's θ search in training;
the PyTorch forward's `BltModel.patch_starts` applies the same rule and a test compares them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def patch_starts(
    entropies: np.ndarray | Sequence[float],
    threshold: float,
    max_patch_length: int | None = None,
) -> np.ndarray:
    """Boolean start flags for positions 0..N (N = len(entropies)); position N is the next, unseen byte.

    Position 0 (BOS) and 1 always start; t ≥ 2 starts iff H[t-1] > θ, or its patch already holds
    `max_patch_length` bytes (splitting from the patch start, so prefixes never change when bytes are appended).
    """
    h = np.asarray(entropies, dtype=np.float64).reshape(-1)
    n = h.size
    starts = np.zeros(n + 1, dtype=bool)
    starts[: min(2, n + 1)] = True
    if n >= 2:
        starts[2:] = h[1:] > threshold
    if max_patch_length is not None:
        pos = np.arange(n + 1)
        last = np.maximum.accumulate(np.where(starts, pos, 0))
        starts |= (pos - last) % max_patch_length == 0
    return starts


def next_is_start(
    entropy: float, n: int, current_patch_start: int, threshold: float, max_patch_length: int | None = None
) -> bool:
    """Incremental form of `patch_starts`: does position n start a patch, given H[n-1] and the open patch?"""
    if n <= 1:
        return True
    if entropy > threshold:
        return True
    return max_patch_length is not None and n - current_patch_start >= max_patch_length


def patch_ids(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(encoder patch id e(t), decoder patch id d(t) = e(t+1) - 1) for t < N, from start flags of 0..N."""
    starts = np.asarray(starts, dtype=bool)
    csum = np.cumsum(starts)
    e = csum[:-1] - 1
    d = csum[1:] - 2
    return e.astype(np.int64), d.astype(np.int64)


def patch_lengths(starts: np.ndarray) -> list[int]:
    """Lengths of the patches that hold at least one of positions 0..N-1."""
    n = len(starts) - 1
    pos = [int(i) for i in np.flatnonzero(starts[:n])] + [n]
    return [b - a for a, b in zip(pos, pos[1:], strict=False)]
