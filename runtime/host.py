"""Host-side integer bookkeeping (numpy, no torch): byte ids, hash n-gram ids, patch boundaries, patch ids.

This is the one torch-free implementation the runtime uses between graph calls. The patch rule itself lives in
graphs/patching.py, because the patcher's θ search (training) applies the same rule and graphs never import
the runtime. The int64 hash is computed here, not in a graph, because ONNX Runtime and TensorRT do not
reproduce int64 wrap-around (docs/architecture.md).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from fastblt.graphs.constants import BOE, BOS, BPE_DELIM, EOS, HASH_PRIMES, OFFSET
from fastblt.graphs.patching import next_is_start, patch_ids, patch_lengths, patch_starts

__all__ = [
    "BOE", "BOS", "EOS", "BPE_DELIM", "OFFSET", "HASH_PRIMES", "encode", "decode_bytes", "hash_ids",
    "patch_starts", "next_is_start", "patch_ids", "patch_lengths",
]
_MASK = 0xFFFFFFFFFFFFFFFF


def encode(data: bytes | str, bos: bool = True, eos: bool = False) -> list[int]:
    """Bytes (or UTF-8 text) to ids: value + 4, BOS first. Any byte is allowed, NUL and invalid UTF-8 included."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    ids = [b + OFFSET for b in raw]
    return ([BOS] if bos else []) + ids + ([EOS] if eos else [])


def decode_bytes(ids: Sequence[int]) -> bytes:
    """Ids to raw bytes; specials (< 4) and ids beyond the byte range are dropped."""
    return bytes(i - OFFSET for i in ids if OFFSET <= i < OFFSET + 256)


@functools.cache
def _powers(prime: int, n: int) -> tuple[int, ...]:
    """p^0..p^(n-1) in wrapping 64-bit arithmetic."""
    out, acc = [], 1
    for _ in range(n):
        out.append(acc)
        acc = (acc * prime) & _MASK
    return tuple(out)


def _prime_powers(prime: int, n: int) -> np.ndarray:
    return np.array(_powers(prime, n), dtype=np.uint64)


@functools.cache
def _power_matrix(sizes: tuple[int, ...], n_functions: int) -> np.ndarray:
    """[max(sizes), n_functions·len(sizes)]: column (f, g) holds prime_f^0..^(g-1) against the window's last g
    ids, zeros above, so one matrix product hashes every n-gram of every position."""
    gmax = max(sizes)
    mat = np.zeros((gmax, n_functions * len(sizes)), dtype=np.uint64)
    for f in range(n_functions):
        prime = HASH_PRIMES[f % len(HASH_PRIMES)]
        for j, g in enumerate(sizes):
            mat[gmax - g:, f * len(sizes) + j] = _prime_powers(prime, g)
    return mat


@functools.lru_cache(maxsize=64)
def _window_index(t: int, width: int) -> np.ndarray:
    """Gather index of every position's window of `width` ids (a fancy index beats sliding_window_view's
    per-call Python overhead at the few rows a decode call hashes)."""
    return np.arange(t)[:, None] + np.arange(width)


def _hash_one(window: list[int], sizes: Sequence[int], vocab: int, n_functions: int, fused: bool) -> list[int]:
    """Hash ids of the last position of `window` (its max(sizes) ids, zeros before the sequence), in plain
    Python ints: a decode step hashes one byte, where numpy's per-call overhead would dominate. The n-grams
    ending there nest, so one pass from the newest id back builds them all: h_g = x[-g] + p·h_(g-1)."""
    out = []
    for f in range(n_functions):
        prime, acc, hashes = HASH_PRIMES[f % len(HASH_PRIMES)], 0, []
        for x in reversed(window):
            acc = (x + prime * acc) & _MASK
            hashes.append(acc - (1 << 64) if acc >= (1 << 63) else acc)  # hashes[g - 1]: the g-gram, signed
        out += [hashes[g - 1] % vocab for g in sizes]
    if fused:
        out = [h + col * vocab for col, h in enumerate(out)]
    return out


def hash_ids(
    ids: np.ndarray | Sequence[int],
    sizes: Sequence[int],
    vocab: int,
    n_functions: int = 1,
    history: Sequence[int] = (),
    fused: bool = True,
) -> np.ndarray:
    """Hash n-gram ids of every position in `ids`, shape [t, n_functions·len(sizes)].

    The n-gram ending at position t is (x[t-g+1], …, x[t]) with the oldest id times p^0; positions before the
    sequence are 0. Sums wrap as signed int64 and are floor-reduced mod `vocab`. `history` holds the ids that
    precede `ids` (only the last max(sizes)-1 matter), so new bytes can be hashed incrementally. With `fused`
    the id of table i is offset by i·vocab (the HF fused-table layout the encoder graph expects).
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    gmax = max(sizes)
    if ids.size == 1:
        window = [int(i) for i in history[max(len(history) - gmax + 1, 0):]] if gmax > 1 else []
        window = [0] * (gmax - 1 - len(window)) + window + [int(ids[0])]
        return np.array([_hash_one(window, sizes, vocab, n_functions, fused)], dtype=np.int64)
    if ids.size == 0:
        return np.zeros((0, n_functions * len(sizes)), dtype=np.int64)
    hist = [int(i) for i in history[max(len(history) - gmax + 1, 0):]] if gmax > 1 else []
    full = np.array([0] * (gmax - 1 - len(hist)) + hist + ids.tolist(), dtype=np.uint64)
    windows = full[_window_index(ids.size, gmax)]  # [t, gmax], oldest id first
    acc = windows @ _power_matrix(tuple(sizes), n_functions)  # array integer arithmetic wraps mod 2^64
    out = acc.view(np.int64) % vocab
    if fused:
        out += _table_offsets(out.shape[1], vocab)
    return out


@functools.lru_cache(maxsize=8)
def _table_offsets(n_tables: int, vocab: int) -> np.ndarray:
    """i·vocab for table i: the fused-table layout's id offsets."""
    return np.arange(n_tables, dtype=np.int64) * vocab
