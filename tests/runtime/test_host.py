"""Host bookkeeping: the spec's hash test vectors, incremental = batch, torch twin = numpy, byte ids
(the patch rule: tests/graphs/test_patching.py)."""

from __future__ import annotations

import numpy as np
import torch

from fastblt.graphs.config import tiny_config
from fastblt.graphs.model import BltModel
from fastblt.runtime import host

HELLO = [1, 76, 105, 112, 112, 115]


def test_hash_test_vectors():
    g3 = host.hash_ids(HELLO, [3], 500002, fused=False)[:, 0]
    g8 = host.hash_ids(HELLO, [8], 500002, fused=False)[:, 0]
    assert g3.tolist() == [443987, 124875, 393970, 386145, 358223, 190185]
    assert g8.tolist() == [172383, 205585, 456240, 129346, 299568, 322649]


def test_hash_incremental_equals_batch_and_fused_offsets():
    """One byte at a time takes the pure-Python path, many at once the numpy one: they must agree."""
    rng = np.random.default_rng(0)
    ids = [1] + rng.integers(4, 260, 300).tolist()
    for sizes, functions in (([8, 3, 5], 2), ([1], 1)):  # any order of sizes: columns follow `sizes`
        full = host.hash_ids(ids[:40], sizes, 500002, functions)
        step = np.concatenate([host.hash_ids([x], sizes, 500002, functions, history=ids[:i])
                               for i, x in enumerate(ids[:40])])
        assert (full == step).all(), sizes
    full = host.hash_ids(ids, [3, 4, 5, 6, 7, 8], 500002, n_functions=3)
    step = np.concatenate([host.hash_ids([x], [3, 4, 5, 6, 7, 8], 500002, 3, history=ids[:i])
                           for i, x in enumerate(ids)])
    assert (full == step).all()
    cols = np.arange(full.shape[1]) * 500002
    assert ((full - cols >= 0) & (full - cols < 500002)).all()


def test_torch_hash_equals_host():
    model = BltModel(tiny_config(hash_sizes=(3, 4, 5, 6, 7, 8), hash_functions=3, hash_vocab=500002))
    rng = np.random.default_rng(1)
    ids = np.stack([[1] + rng.integers(0, 260, 199).tolist() for _ in range(2)])
    got = model.hash_ids(torch.from_numpy(ids)).numpy()
    for row in range(2):
        assert (got[row] == host.hash_ids(ids[row], (3, 4, 5, 6, 7, 8), 500002, 3)).all()


def test_encode_decode_any_bytes():
    raw = b"\x00\xff\xc3(abc"
    ids = host.encode(raw)
    assert ids[0] == host.BOS and host.decode_bytes(ids) == raw
    assert host.encode("") == [host.BOS]
