"""A growable KV cache for one stack, addressed by absolute position, bounded by the attention window.

Entries are [n_layers, 1, h_kv, T, d]. Compaction keeps the newest `window - 1 + slack` entries, and runs only
before an append: after dropping up to `slack` newest entries (a rollback, or discarded drafts) every entry a
new token can see is still there. `sees_window_at` says whether a deeper drop would still be exact.

A windowed cache is compacted (its oldest entries dropped, the rest moved to slot 0) as soon as it holds
more than `keep + COMPACT_EVERY` entries, not only when its buffer is full: ORT's GroupQueryAttention reads
every filled slot and masks the ones outside the window afterwards, so its cost follows the filled length
(measurements in docs/architecture.md).
"""

from __future__ import annotations

import numpy as np

COMPACT_EVERY = 64  # one memmove of `keep` entries per 64 appended, against attention over every filled slot


class KVCache:
    def __init__(self, n_layers: int, heads: int, head_dim: int, window: int | None, slack: int = 64,
                 dtype=np.float32) -> None:
        self.window = window
        self.keep = None if window is None else window - 1 + slack
        cap = 64 if self.keep is None else 2 * self.keep + 64
        self.k = np.zeros((n_layers, 1, heads, cap, head_dim), dtype=dtype)
        self.v = np.zeros_like(self.k)
        self.start = 0  # absolute position of slot 0
        self.length = 0  # filled slots
        self.version = 0  # bumped by every change of the cached entries (invalidates `visible`'s copy)
        self._visible: tuple = (None, None)

    @property
    def end(self) -> int:
        """Absolute position right after the last cached entry."""
        return self.start + self.length

    def visible(self, position: int | None = None, extra: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The entries before `position` (default `end`) that a token there may attend (at most the last
        window-1), and `extra` more for tokens up to `extra` positions earlier, as contiguous arrays."""
        hi = self.length if position is None else position - self.start
        if not (0 <= hi <= self.length) or not self.sees_window_at(self.start + hi - extra):
            raise ValueError(f"entries before position {position} are not all kept (cache holds "
                             f"{self.start}..{self.end - 1}); keep a larger slack")
        n = hi if self.window is None else min(hi, self.window - 1 + extra)
        key = (self.version, self.start, hi, n)
        if self._visible[0] != key:  # a diffusion block reads the same prefix at every step: copy it once
            self._visible = (key, (np.ascontiguousarray(self.k[:, :, :, hi - n:hi]),
                                   np.ascontiguousarray(self.v[:, :, :, hi - n:hi])))
        return self._visible[1]

    def sees_window_at(self, position: int) -> bool:
        """Whether a token at `position` (≤ end) would still find every entry it may attend."""
        return self.window is None or self.start <= max(position - (self.window - 1), 0)

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        t = k.shape[3]
        self.reserve(t)
        self.k[:, :, :, self.length:self.length + t] = k
        self.v[:, :, :, self.length:self.length + t] = v
        self.length += t
        self.version += 1

    def reserve(self, t: int) -> None:
        """Make slots length .. length+t-1 exist (dropping entries older than the window plus slack, or
        growing the buffers); a graph that writes its new entries in place calls this first."""
        if self.keep is not None and self.length > self.keep and self.length + t > self.keep + COMPACT_EVERY:
            self._compact()
        if self.length + t > self.k.shape[3]:
            self._grow(t)

    def advance(self, t: int) -> None:
        """Count t entries written in place (at slots length .. length+t-1) as cached."""
        self.length += t
        self.version += 1

    def truncate(self, position: int) -> None:
        """Drop entries at positions ≥ `position` (rollback)."""
        if position < self.start:
            raise ValueError(f"cannot roll back to position {position}: the cache only reaches back to "
                             f"{self.start} (rollback depth is bounded by the window slack)")
        self.length = min(self.length, position - self.start)
        self.version += 1

    def _compact(self) -> None:
        """Drop all but the newest `keep` entries, in place (the buffers stay the same arrays)."""
        drop = self.length - self.keep
        self.k[:, :, :, : self.keep] = self.k[:, :, :, drop:self.length]
        self.v[:, :, :, : self.keep] = self.v[:, :, :, drop:self.length]
        self.start += drop
        self.length = self.keep
        self.version += 1

    def _grow(self, t: int) -> None:
        cap = max(2 * self.k.shape[3], self.length + t)
        grow = ((0, 0), (0, 0), (0, 0), (0, cap - self.k.shape[3]), (0, 0))
        self.k, self.v = np.pad(self.k, grow), np.pad(self.v, grow)
        self.version += 1
