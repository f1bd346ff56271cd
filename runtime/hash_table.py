"""The hash n-gram tables on the host (numpy, no torch): one memory-mapped file per bundle, gathered and summed.

BLT's encoder adds, to every byte's embedding, one row of each hash n-gram table (n = 3..8, ids computed by
runtime/host.py). At BLT-1B scale the tables are 3.07 B parameters (12.3 GB fp32), so they never sit inside a
graph: the bundle stores them once, row-major, in the checkpoint's dtype (or int8 with one fp32 scale per
row), the runtime memory-maps the file and the encoder-side graphs take the summed rows as the input
`hash_embeds`, the way TensorRT Edge-LLM engines take `inputs_embeds`. A decode step reads 6 rows (12 KiB in
bf16); the page cache, not the process, holds what was read.

Rows are summed left to right in float32, the order `BltModel.hash_embeds` uses, so an fp32 table gives
bit-identical sums to the torch model's gather.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_DTYPES = ("float32", "bfloat16", "float16", "int8")
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}
CHUNK_ROWS = 1 << 15  # rows converted and written at a time (64 MiB of fp32 at D = 512; 128 MiB at 1024)


class HashTableError(ValueError):
    """A hash-table file is missing, truncated or of the wrong size; the message names the file and the fix."""


@dataclass(frozen=True)
class TableLayout:
    """Shape and storage of a bundle's table file (what the manifest records next to its sha256)."""

    rows: int
    dim: int
    dtype: str

    @property
    def data_bytes(self) -> int:
        return self.rows * self.dim * _ITEMSIZE[self.dtype]

    @property
    def scale_bytes(self) -> int:
        return self.rows * 4 if self.dtype == "int8" else 0


class HashTable:
    """Row gather + sum over an in-memory array or a memory-mapped table file."""

    def __init__(self, data: np.ndarray, dtype: str, scales: np.ndarray | None = None) -> None:
        if dtype not in TABLE_DTYPES:
            raise HashTableError(f"hash-table dtype {dtype!r}; valid dtypes are {list(TABLE_DTYPES)}")
        if dtype == "int8" and scales is None:
            raise HashTableError("an int8 hash table needs its per-row scales")
        self.data, self.dtype, self.scales = data, dtype, scales
        self.rows, self.dim = data.shape

    @classmethod
    def from_array(cls, table: np.ndarray) -> HashTable:
        """An fp32 table already in memory (the torch reference backend's own weight)."""
        return cls(np.ascontiguousarray(table, dtype=np.float32), "float32")

    @classmethod
    def open(cls, data_path: Path, layout: TableLayout, scales_path: Path | None = None) -> HashTable:
        """Memory-map a table file after checking its size (a truncated file is refused here, not at a read)."""
        storage = {"float32": np.float32, "bfloat16": np.uint16, "float16": np.float16, "int8": np.int8}
        _check_size(data_path, layout.data_bytes)
        data = np.memmap(data_path, dtype=storage[layout.dtype], mode="r", shape=(layout.rows, layout.dim))
        scales = None
        if layout.dtype == "int8":
            if scales_path is None:
                raise HashTableError(f"{data_path}: an int8 hash table needs its scales file; rebuild the bundle")
            _check_size(scales_path, layout.scale_bytes)
            scales = np.memmap(scales_path, dtype=np.float32, mode="r", shape=(layout.rows,))
        return cls(data, layout.dtype, scales)

    def rows_f32(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (any shape) widened to float32: [..., D]."""
        raw = self.data[ids]
        if self.dtype == "bfloat16":  # bf16 is the top half of an fp32: widen exactly
            return (raw.astype(np.uint32) << 16).view(np.float32)
        if self.dtype == "int8":
            return raw.astype(np.float32) * self.scales[ids][..., None]
        return raw.astype(np.float32, copy=False)

    def embed(self, hash_ids: np.ndarray) -> np.ndarray:
        """Summed rows of `hash_ids` [..., G] (global row ids) → float32 [..., D], left to right."""
        hash_ids = np.asarray(hash_ids)
        if hash_ids.size and (int(hash_ids.min()) < 0 or int(hash_ids.max()) >= self.rows):
            raise ValueError(f"hash ids must lie in [0, {self.rows})")
        rows = self.rows_f32(hash_ids)
        acc = rows[..., 0, :].copy()
        for g in range(1, rows.shape[-2]):
            acc += rows[..., g, :]
        return acc


def _check_size(path: Path, expected: int) -> None:
    if not path.is_file():
        raise HashTableError(f"{path}: hash-table file missing from the bundle; rebuild the bundle")
    size = path.stat().st_size
    if size != expected:
        raise HashTableError(f"{path}: {size} bytes, the manifest's table needs {expected} (the file was truncated "
                             "or replaced); rebuild the bundle")


def write_table(path: Path, chunks: Iterator[np.ndarray], dtype: str,
                scales_path: Path | None = None) -> dict[str, dict[str, object]]:
    """Write float32 row chunks [r, D] as a table file of `dtype`, hashing while it streams (no second pass,
    no copy of the table in memory). int8 stores round(row / s) with s = max|row| / 127 per row, and the
    scales as a second file. Returns {"data": {sha256, bytes}, ["scales": {...}]}."""
    if dtype not in TABLE_DTYPES:
        raise HashTableError(f"hash-table dtype {dtype!r}; valid dtypes are {list(TABLE_DTYPES)}")
    digests = {"data": hashlib.sha256()}
    sizes = {"data": 0}
    out = {"data": path.open("wb")}
    if dtype == "int8":
        if scales_path is None:
            raise HashTableError("an int8 hash table needs a scales file path")
        digests["scales"], sizes["scales"], out["scales"] = hashlib.sha256(), 0, scales_path.open("wb")
    try:
        for chunk in chunks:
            parts = {"data": _encode(np.asarray(chunk, dtype=np.float32), dtype)}
            if dtype == "int8":
                parts = _int8(np.asarray(chunk, dtype=np.float32))
            for name, arr in parts.items():
                raw = memoryview(np.ascontiguousarray(arr)).cast("B")
                out[name].write(raw)
                digests[name].update(raw)
                sizes[name] += raw.nbytes
    finally:
        for fh in out.values():
            fh.close()
    return {name: {"sha256": digests[name].hexdigest(), "bytes": sizes[name]} for name in out}


def _encode(rows: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return rows
    if dtype == "float16":
        return rows.astype(np.float16)
    # bfloat16, round to nearest even (what torch's .to(torch.bfloat16) does); values already bf16 stay exact
    bits = rows.view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def _int8(rows: np.ndarray) -> dict[str, np.ndarray]:
    scale = np.abs(rows).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
    return {"data": q, "scales": scale}


def array_chunks(table: np.ndarray, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    for r in range(0, table.shape[0], rows):
        yield table[r:r + rows]


def source_chunks(read: Callable[[int, int], np.ndarray], n_rows: int, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """Chunks from a row reader (e.g. a checkpoint's memory-mapped table, read a slice at a time)."""
    for r in range(0, n_rows, rows):
        yield read(r, min(r + rows, n_rows))
