"""The host-side hash tables: the lookup equals the in-graph gather it replaced, files are checked by size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastblt.runtime import host
from fastblt.runtime.hash_table import (
    HashTable,
    HashTableError,
    TableLayout,
    array_chunks,
    write_table,
)


def _ids(model, n=40, seed=0):
    cfg = model.config
    ids = np.random.default_rng(seed).integers(4, 260, n)
    return host.hash_ids(ids, cfg.hash_sizes, cfg.hash_vocab, cfg.hash_functions)


def test_lookup_equals_old_in_graph_gather_bit_for_bit(tiny_model):
    """fp32: the host sum equals torch's Embedding(hash_ids).sum(-2), what the encoder graph used to compute."""
    hashes = _ids(tiny_model)
    weight = tiny_model.encoder_hash_tok_embedding.weight.detach()
    table = HashTable.from_array(weight.numpy())
    with torch.no_grad():
        old = tiny_model.encoder_hash_tok_embedding(torch.from_numpy(hashes)).sum(dim=-2).numpy()
        new = tiny_model.hash_embeds(torch.from_numpy(hashes)).numpy()
    got = table.embed(hashes)
    assert got.dtype == np.float32 and got.shape == (40, tiny_model.config.encoder.dim)
    assert np.array_equal(got, old) and np.array_equal(got, new)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int8"])
def test_table_file_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((1000, 16)).astype(np.float32)
    if dtype == "bfloat16":  # values a bf16 checkpoint holds: stored exactly
        rows = torch.from_numpy(rows).to(torch.bfloat16).float().numpy()
    data, scales = tmp_path / "t.bin", tmp_path / "s.bin"
    info = write_table(data, array_chunks(rows, 300), dtype, scales if dtype == "int8" else None)
    layout = TableLayout(1000, 16, dtype)
    assert info["data"]["bytes"] == data.stat().st_size == layout.data_bytes
    table = HashTable.open(data, layout, scales if dtype == "int8" else None)
    ids = rng.integers(0, 1000, (7, 3))
    want = rows[ids[:, 0]] + rows[ids[:, 1]] + rows[ids[:, 2]]
    got = table.embed(ids)
    if dtype in ("float32", "bfloat16"):
        assert np.array_equal(got, want)
    else:  # fp16: 2^-11 relative per row; int8: half a step (max|row|/254) per element and row
        tol = 3 * np.abs(rows).max() * (2 ** -11 if dtype == "float16" else 1 / 254) + 1e-6
        assert np.abs(got - want).max() <= tol


def test_bf16_rounds_like_torch(tmp_path):
    rows = np.random.default_rng(2).standard_normal((64, 8)).astype(np.float32)
    write_table(tmp_path / "t.bin", iter([rows]), "bfloat16")
    table = HashTable.open(tmp_path / "t.bin", TableLayout(64, 8, "bfloat16"))
    expected = torch.from_numpy(rows).to(torch.bfloat16).float().numpy()
    assert np.array_equal(table.rows_f32(np.arange(64)), expected)


def test_truncated_or_missing_file_is_refused(tmp_path):
    rows = np.ones((10, 4), dtype=np.float32)
    path = tmp_path / "t.bin"
    write_table(path, iter([rows]), "float32")
    with path.open("r+b") as fh:
        fh.truncate(100)
    with pytest.raises(HashTableError, match=r"t\.bin: 100 bytes, the manifest's table needs 160"):
        HashTable.open(path, TableLayout(10, 4, "float32"))
    with pytest.raises(HashTableError, match="missing from the bundle"):
        HashTable.open(tmp_path / "nope.bin", TableLayout(10, 4, "float32"))


def test_out_of_range_ids_are_refused():
    table = HashTable.from_array(np.zeros((5, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"hash ids must lie in \[0, 5\)"):
        table.embed(np.array([[0, 5]]))
