"""A growable KV cache for one stack, addressed by absolute position, bounded by the attention window.

Entries are [n_layers, 1, h_kv, T, d]. The cache keeps `window - 1` entries (all a new token can see) plus
`slack` older ones so BLT-S/BLT-DV can roll back a draft without recomputing the prefix.
"""

from __future__ import annotations

import numpy as np


class KVCache:
    def __init__(self, n_layers: int, heads: int, head_dim: int, window: int | None, slack: int = 64) -> None:
        self.window = window
        self.keep = None if window is None else window - 1 + slack
        cap = 64 if self.keep is None else 2 * self.keep + 64
        self.k = np.zeros((n_layers, 1, heads, cap, head_dim), dtype=np.float32)
        self.v = np.zeros_like(self.k)
        self.start = 0  # absolute position of slot 0
        self.length = 0  # filled slots

    @property
    def end(self) -> int:
        """Absolute position right after the last cached entry."""
        return self.start + self.length

    def visible(self) -> tuple[np.ndarray, np.ndarray]:
        """The entries a token at position `end` may attend (the last window-1), as contiguous arrays."""
        n = self.length if self.window is None else min(self.length, self.window - 1)
        lo = self.length - n
        return (np.ascontiguousarray(self.k[:, :, :, lo:self.length]),
                np.ascontiguousarray(self.v[:, :, :, lo:self.length]))

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        t = k.shape[3]
        self.reserve(t)
        self.k[:, :, :, self.length:self.length + t] = k
        self.v[:, :, :, self.length:self.length + t] = v
        self.length += t

    def reserve(self, t: int) -> None:
        """Make slots length .. length+t-1 exist (dropping entries older than the window plus slack, or
        growing the buffers); a graph that writes its new entries in place calls this first."""
        if self.length + t > self.k.shape[3]:
            self._make_room(t)

    def advance(self, t: int) -> None:
        """Count t entries written in place (at slots length .. length+t-1) as cached."""
        self.length += t

    def truncate(self, position: int) -> None:
        """Drop entries at positions ≥ `position` (rollback)."""
        if position < self.start:
            raise ValueError(f"cannot roll back to position {position}: the cache only reaches back to "
                             f"{self.start} (rollback depth is bounded by the window slack)")
        self.length = min(self.length, position - self.start)

    def _make_room(self, t: int) -> None:
        if self.keep is not None and self.length > self.keep:
            drop = self.length - self.keep
            self.k[:, :, :, : self.keep] = self.k[:, :, :, drop:self.length]
            self.v[:, :, :, : self.keep] = self.v[:, :, :, drop:self.length]
            self.start += drop
            self.length = self.keep
        if self.length + t > self.k.shape[3]:
            cap = max(2 * self.k.shape[3], self.length + t)
            grow = ((0, 0), (0, 0), (0, 0), (0, cap - self.k.shape[3]), (0, 0))
            self.k, self.v = np.pad(self.k, grow), np.pad(self.v, grow)
