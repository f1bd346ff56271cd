"""Shared helpers for the benchmark scripts (not installed; run from the repository root)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from fastblt.graphs.data import corpus_documents

RESULTS = Path(__file__).resolve().parent / "results"


def heldout_text(n_bytes: int) -> bytes:
    """`n_bytes` of held-out standard-library source (never seen in training), cut at a line end."""
    out = b""
    for doc in corpus_documents(None, "heldout"):
        out += doc.read()
        if len(out) >= n_bytes:
            break
    cut = out[:n_bytes].rfind(b"\n")
    return out[: cut + 1 if cut > n_bytes // 2 else n_bytes]


def machine() -> dict:
    import os

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "processor": platform.processor()}


def write(name: str, data: dict, table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {RESULTS / name}.json and .md")
